"""Resuming checks on real runs: a checkpoint of another process count is refused before anything is written,
resume=auto never adopts a finished run, and an older checkpoint sets the abandoned future aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import (
    error_line,
    file_hashes,
    save_tiny_model,
    train_args,
    train_cli,
)
from toolkit.formats import RunDir
from toolkit.training.checkpoint import latest_checkpoint, list_checkpoints


@pytest.fixture(scope="module")
def stopped_run(tiny_shards, tmp_path_factory) -> Path:
    """A run stopped by train.max_steps=3 (checkpoint step-3); copy before changing."""
    out = tmp_path_factory.mktemp("stopped")
    assert train_cli(train_args(tiny_shards, out, "run", "train.epochs=2", "train.max_steps=3")) == 0
    return out / "run"


@pytest.fixture(scope="module")
def two_epoch_run(tiny_shards, tmp_path_factory) -> Path:
    """A finished 2-epoch run, checkpoints step-8 and step-16; copy before changing."""
    out = tmp_path_factory.mktemp("two-epochs")
    assert train_cli(train_args(tiny_shards, out, "run", "eval.test_split=null")) == 0
    return out / "run"


def as_written_before_the_sample_order(state_file: Path, num_processes: int) -> None:
    """A checkpoint's trainer_state.json as toolkits before train.global_batch_size wrote it: no ``order``
    record (its position counted each rank's batches, so only its own process count could continue it)."""
    saved = json.loads(state_file.read_text())
    assert saved["num_processes"] == 1 and "order" in saved  # what this toolkit records
    del saved["order"]
    state_file.write_text(json.dumps(saved | {"num_processes": num_processes}))


def test_a_checkpoint_without_a_sample_order_of_another_process_count_is_refused_before_anything_is_written(
    stopped_run, tiny_shards, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    as_written_before_the_sample_order(run / "checkpoints" / "step-00000003" / "trainer_state.json", 2)
    before = file_hashes(run)
    assert train_cli(train_args(tiny_shards, tmp_path, "run", "train.epochs=2", "train.resume=auto")) == 2
    line = error_line(capsys.readouterr().err)
    assert "saved by 2 process(es) but this run has 1" in line and "records no sample order" in line
    assert file_hashes(run) == before and not (run / ".lock").exists()


def test_a_checkpoint_without_a_sample_order_still_resumes_on_its_own_process_count(stopped_run, tiny_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    as_written_before_the_sample_order(run / "checkpoints" / "step-00000003" / "trainer_state.json", 1)
    args = train_args(tiny_shards, tmp_path, "run", "train.epochs=2", "train.resume=auto", "eval.test_split=null")
    assert train_cli(args) == 0
    assert [row["step"] for row in RunDir(run).read_history()] == [8, 16]


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("seed", 7, "train.seed is 0"),
        ("global_batch_size", 16, "train.global_batch_size is 8"),
        ("streams", 3, "train.streams is 1"),
        ("shards", "0123456789abcdef", "training shards (fingerprint)"),
    ],
)
def test_a_checkpoint_of_another_sample_order_is_refused_in_one_line_naming_the_key(
    stopped_run, tiny_shards, tmp_path, capsys, key, value, named
):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    state = run / "checkpoints" / "step-00000003" / "trainer_state.json"
    saved = json.loads(state.read_text())
    saved["order"][key] = value
    state.write_text(json.dumps(saved))
    before = file_hashes(run)
    assert train_cli(train_args(tiny_shards, tmp_path, "run", "train.epochs=2", "train.resume=auto")) == 2
    line = error_line(capsys.readouterr().err)
    assert named in line and "sample order must stay the same" in line
    assert file_hashes(run) == before and not (run / ".lock").exists()


def test_resume_auto_does_not_adopt_a_finished_run(tiny_shards, tmp_path, capsys):
    common = ("eval.test_split=null", "train.epochs=1", "train.resume=auto", "output.run_name=null")
    assert train_cli(train_args(tiny_shards, tmp_path, "x", *common)) == 0  # finishes
    (finished,) = tmp_path.iterdir()
    before = file_hashes(finished)
    capsys.readouterr()
    assert train_cli(train_args(tiny_shards, tmp_path, "x", *common, "train.max_steps=1")) == 0
    out = capsys.readouterr().out
    assert f"{finished} has this config but finished" in out and "resuming" not in out
    assert file_hashes(finished) == before  # eval/, report and final.json untouched
    assert len(list(tmp_path.iterdir())) == 2  # a new run beside it


def test_the_best_model_is_rolled_back_with_the_checkpoint(two_epoch_run, tiny_shards, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(two_epoch_run, run.root)
    shutil.rmtree(run.checkpoints / "step-00000016")  # killed after writing epoch 2's model, before its checkpoint
    at_checkpoint = (run.checkpoints / "step-00000008" / "best_model.safetensors").read_bytes()
    save_tiny_model(run.model, f"data.shards={tiny_shards}", meta={"epoch": 2}, seed=5)  # the killed future's model
    (run.root / "final.json").unlink()
    assert (
        train_cli(
            train_args(tiny_shards, tmp_path, "run", "eval.test_split=null", "train.max_steps=9", "train.resume=auto")
        )
        == 0
    )
    assert run.model.read_bytes() == at_checkpoint


def test_resuming_an_older_checkpoint_sets_the_abandoned_future_aside(two_epoch_run, tiny_shards, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    shutil.copytree(two_epoch_run, run.root)
    older = run.checkpoints / "step-00000008"
    assert (
        train_cli(
            train_args(
                tiny_shards,
                tmp_path,
                "run",
                "eval.test_split=null",
                "train.max_steps=10",
                "train.keep_checkpoints=1",
                f"train.resume={older}",
            )
        )
        == 0
    )
    assert "abandoned future" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(run.checkpoints)] == ["step-00000010"]  # the new line's, kept
    assert latest_checkpoint(run.checkpoints).name == "step-00000010"
    assert (run.checkpoints / "abandoned-step-00000016").is_dir()
