"""Reliability: runs survive kills and signals, bad data is counted, bad input is one line.

Each promise in docs/reliability.md names its test here or in test_distributed.py / test_security.py.

Kills are real signals. SIGKILL comes from outside when a checkpoint appears; where the window is
too short to hit from outside (an evaluation pass, a file write), a small driver script wraps one
function and signals its own process at that moment. The toolkit itself has no fault-injection hook.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Sequence

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import (
    ENV,
    ROOT,
    SMOKE,
    error_line,
    file_hashes,
    pack_tiny,
    rewrite_shard,
    run_in_process,
    save_tiny_model,
    shard_keys,
    train_args,
    train_cli,
    wait_for,
)
from toolkit.cli import run_cli
from toolkit.config import Config, load_config, to_dict, validate_config
from toolkit.fileio import TMP_PREFIX
from toolkit.formats.model_file import read_model_file
from toolkit.training.checkpoint import list_checkpoints


def assert_nothing_half_written(run: Path, torn_metrics_tail: bool = False) -> None:
    """Every file that looks finished is complete; ``metrics.jsonl`` holds one JSON object per line."""
    from accelerate.utils import load as accelerate_load  # torch.load(weights_only=True) + numpy's RNG state

    for ckpt in list_checkpoints(run / "checkpoints"):
        assert load_file(ckpt / "model.safetensors"), ckpt
        assert accelerate_load(ckpt / "optimizer.bin")["state"] is not None, ckpt
        assert "torch_manual_seed" in accelerate_load(ckpt / "random_states_0.pkl"), ckpt
        assert json.loads((ckpt / "trainer_state.json").read_text())["trainer"]["global_step"] >= 0, ckpt
    for name in ("model.safetensors", "last.safetensors"):
        if (run / name).exists():
            read_model_file(run / name)
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        lines = metrics.read_text().splitlines()
        if torn_metrics_tail:
            with pytest.raises(json.JSONDecodeError):
                json.loads(lines.pop())
        assert all(isinstance(json.loads(line), dict) for line in lines), lines


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("tiny"))


# ---------------------------------------------------------------------------------------------
# Kills and signals during training


# Runs toolkit.train and, at the Nth time the chosen point is reached in this process, sends the
# chosen signal to itself: the same as a kill from outside at exactly that moment.
DRIVER = r"""
import io, json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
point, sig, nth = sys.argv[1], getattr(signal, "SIG" + sys.argv[2]), int(sys.argv[3])
import torch
import toolkit.formats
import toolkit.training.loop
from toolkit.cli import run_cli

seen = 0
def due():
    global seen
    seen += 1
    return seen == nth

def fire():
    os.kill(os.getpid(), sig)

if point in ("train-step", "eval"):  # a forward pass in training / evaluation mode
    build = toolkit.training.loop.build_model
    def build_model(cfg):
        model = build(cfg)
        def hook(module, args):
            if module.training == (point == "train-step") and due():
                fire()
        model.register_forward_pre_hook(hook)
        return model
    toolkit.training.loop.build_model = build_model
elif point == "checkpoint-write":  # half of a checkpoint's torch.save file is on disk
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if due():
            buffer = io.BytesIO()
            real_save(obj, buffer)
            Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            fire()
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
elif point == "model-write":  # last.safetensors half written under its temporary name
    real_replace = os.replace
    def replace(src, dst):
        if Path(dst).name == "last.safetensors" and due():
            os.truncate(src, os.path.getsize(src) // 2)
            fire()
        return real_replace(src, dst)
    os.replace = replace
elif point == "metrics-append":  # half a line of metrics.jsonl on disk
    real_append = toolkit.formats.run_dir.append_jsonl
    def append_jsonl(path, obj):
        if due():
            line = json.dumps(obj) + "\n"
            with open(path, "a") as handle:
                handle.write(line[: len(line) // 2])
            fire()
        return real_append(path, obj)
    toolkit.formats.run_dir.append_jsonl = append_jsonl

import toolkit.train
run_cli(toolkit.train.main, sys.argv[4:])
"""

# (what happens, driver point, signal, nth time the point is reached, expected exit code);
# each stage restarts with train.resume=auto from whatever the previous one left behind.
STAGES = [
    ("SIGTERM during a training step", "train-step", "TERM", 3, 128 + signal.SIGTERM),
    ("SIGKILL during evaluation", "eval", "KILL", 1, -signal.SIGKILL),
    ("Ctrl-C (SIGINT) during a training step", "train-step", "INT", 2, 128 + signal.SIGINT),
    ("SIGKILL in the middle of a checkpoint write", "checkpoint-write", "KILL", 1, -signal.SIGKILL),
    ("SIGKILL while last.safetensors is half written", "model-write", "KILL", 1, -signal.SIGKILL),
    ("SIGKILL in the middle of a metrics.jsonl line", "metrics-append", "KILL", 1, -signal.SIGKILL),
    ("the final uninterrupted restart", "none", "KILL", 0, 0),
]
STOP_MESSAGE = re.compile(
    r"stopped by a stop signal at epoch (\d+), step (\d+); checkpoint (\S+)\. "
    r"Resume with the same command plus train\.resume=auto output\.run_name=killed"
)


def _launch(driver: Path, point: str, signame: str, nth: int, argv: Sequence[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(driver), point, signame, str(nth), *argv],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_and_signalled_run_resumes_to_the_uninterrupted_weights(tiny_shards, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    # 3 epochs of 8 steps: room for every stage below even if the first kill lands a few steps late
    common = ["train.epochs=3", "train.checkpoint_every_steps=3", "train.log_every_steps=2", "eval.test_split=null"]
    straight = _launch(driver, "none", "KILL", 0, train_args(tiny_shards, tmp_path, "straight", *common))
    try:
        argv = train_args(tiny_shards, tmp_path, "killed", *common, "train.resume=auto")
        _kill_and_resume_again_and_again(driver, argv, tmp_path / "killed")
        out, err = wait_for(straight)
    finally:
        straight.kill()
    assert straight.returncode == 0, err[-3000:]

    run = tmp_path / "killed"
    reference, resumed = load_file(tmp_path / "straight" / "last.safetensors"), load_file(run / "last.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
    rows_a = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows_a] == [(1, 8), (2, 16), (3, 24)]
    assert [(r["epoch"], r["step"]) for r in rows_b] == [(r["epoch"], r["step"]) for r in rows_a]
    for a, b in zip(rows_a, rows_b):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    leftovers = [str(p) for p in run.rglob(f"{TMP_PREFIX}*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def _kill_and_resume_again_and_again(driver: Path, argv: list[str], run: Path) -> None:
    # SIGKILL from outside, a moment after the first checkpoint appears (typically in step 4)
    proc = _launch(driver, "none", "KILL", 0, argv)
    deadline = time.monotonic() + 240
    try:
        while not list_checkpoints(run / "checkpoints"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
    finally:
        proc.kill()
    wait_for(proc)
    assert proc.returncode == -signal.SIGKILL
    assert_nothing_half_written(run)

    for what, point, signame, nth, expected in STAGES:
        proc = _launch(driver, point, signame, nth, argv)
        out, err = wait_for(proc)
        assert "resumed from" in out, f"{what}: did not resume\n{out[-2000:]}"
        assert proc.returncode == expected, f"{what}: exit code {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
        assert_nothing_half_written(run, torn_metrics_tail=point == "metrics-append")
        if signame in ("TERM", "INT"):  # a checkpoint, then a clean exit that says how to resume
            stopped = STOP_MESSAGE.search(out)
            assert stopped, f"{what}: no resume instructions in\n{out[-2000:]}"
            step, path = int(stopped.group(2)), Path(stopped.group(3))
            assert path.name == f"step-{step:08d}" and path in list_checkpoints(run / "checkpoints")
        if point == "checkpoint-write":  # the half-written checkpoint is under a name resuming never reads
            assert list((run / "checkpoints").glob(f"{TMP_PREFIX}step-*"))
        if point == "model-write":
            assert list(run.glob(f"{TMP_PREFIX}last.safetensors*"))


# ---------------------------------------------------------------------------------------------
# Unwritable output, full disk, non-finite loss: the last good checkpoint is never touched


@pytest.fixture(scope="module")
def one_epoch_run(tiny_shards, tmp_path_factory) -> Path:
    """A finished 1-epoch run (checkpoint step-00000008, model and last.safetensors); copy before changing."""
    out = tmp_path_factory.mktemp("one-epoch")
    assert train_cli(train_args(tiny_shards, out, "run", "train.epochs=1", "eval.test_split=null")) == 0
    return out / "run"


def _continue(run: Path, tiny_shards: Path, tmp_path: Path, *overrides: str) -> tuple[Path, list[str]]:
    """A copy of ``run`` and the command line that resumes it for a second epoch."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, train_args(tiny_shards, tmp_path, "run", "train.resume=auto", "eval.test_split=null", *overrides)


def _finished_files(run: Path) -> dict[str, str]:
    """Hashes of what a resume relies on: checkpoints, model.safetensors and last.safetensors."""
    kept = ("checkpoints/", "model.safetensors", "last.safetensors")
    return {name: digest for name, digest in file_hashes(run).items() if name.startswith(kept)}


@pytest.mark.slow
def test_unwritable_output_folder_fails_before_training(tiny_shards, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    assert train_cli(train_args(tiny_shards, blocker / "runs", "run")) == 2
    captured = capsys.readouterr()
    assert "not writable" in error_line(captured.err) and "output.dir" in captured.err
    assert "epoch 1/" not in captured.out + captured.err  # refused before the first batch


@pytest.mark.slow
@pytest.mark.parametrize(
    "target, checkpoints",
    [
        ("checkpoints/.tmp-step-", ["step-00000008"]),  # the first checkpoint of epoch 2 (step 12) fails
        ("/.tmp-last.safetensors", ["step-00000008", "step-00000012"]),  # step 12 is saved, the end of epoch 2 fails
    ],
)
def test_full_disk_keeps_the_last_good_checkpoint_and_resumes_after(
    one_epoch_run, tiny_shards, tmp_path, capsys, monkeypatch, target, checkpoints
):
    run, argv = _continue(one_epoch_run, tiny_shards, tmp_path, "train.checkpoint_every_steps=4")
    before = _finished_files(run)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the disk fills up while this file is being written
        if target in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert train_cli(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "train.resume=auto" in line
    after = _finished_files(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing finished was overwritten
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == checkpoints
    assert_nothing_half_written(run)

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the same command resumes and finishes
    assert train_cli(argv) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def _poison_training_forward(monkeypatch, nth: int) -> None:
    """The nth training-mode forward pass of the next run returns NaN logits."""
    import toolkit.training.loop

    build, seen = toolkit.training.loop.build_model, [0]

    def build_model(cfg):
        model = build(cfg)

        def hook(module, args, output):
            if module.training:
                seen[0] += 1
                if seen[0] == nth:
                    return output * float("nan")
            return None

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(toolkit.training.loop, "build_model", build_model)


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(
    one_epoch_run, tiny_shards, tmp_path, capsys, monkeypatch
):
    run, argv = _continue(one_epoch_run, tiny_shards, tmp_path, "train.checkpoint_every_steps=4")
    before = _finished_files(run)
    _poison_training_forward(monkeypatch, nth=3)  # resumed at step 8: the 3rd step is step 11
    assert train_cli(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: loss became nan at step 11;") and "train.skip_nonfinite=true" in line
    # step 12's checkpoint (after the NaN update) was refused; everything finished before is as it was
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000008"]
    assert _finished_files(run) == before
    assert all(torch.isfinite(t).all() for t in load_file(run / "checkpoints/step-00000008/model.safetensors").values())


@pytest.mark.slow
def test_skip_nonfinite_skips_the_step_and_finishes(one_epoch_run, tiny_shards, tmp_path, capsys, monkeypatch):
    run, argv = _continue(one_epoch_run, tiny_shards, tmp_path, "train.skip_nonfinite=true")
    _poison_training_forward(monkeypatch, nth=3)
    assert train_cli(argv) == 0
    out = capsys.readouterr().out
    assert "warning: non-finite loss at step 11; skipping this batch (train.skip_nonfinite=true)" in out
    final = json.loads((run / "final.json").read_text())
    assert final["global_step"] == 15  # 16 batches, one skipped
    assert all(torch.isfinite(t).all() for t in load_file(run / "last.safetensors").values())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(math.isfinite(r["train_loss"]) for r in rows)


# ---------------------------------------------------------------------------------------------
# Bad data: counted and reported by default, named by strict mode, refused before training


TRAIN_NO_CLS = 3  # index in train-000001.tar of a sample whose label went missing
VAL_CORRUPT, VAL_CUT = 2, 10  # val-000000.tar: a corrupt JPEG, and the file cut inside this sample
FOREIGN_SHARD = "test-000002.tar"  # replaced by a shard of another dataset (no cls)


@pytest.fixture(scope="module")
def bad_shards(tiny_shards, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny shards with one of each kind of damage; returns (folder, damaged keys)."""
    folder = tmp_path_factory.mktemp("bad") / "shards"
    shutil.copytree(tiny_shards, folder)
    no_cls = shard_keys(folder / "train-000001.tar")[TRAIN_NO_CLS]
    rewrite_shard(folder / "train-000001.tar", lambda name, data: [] if name == f"{no_cls}.cls" else None)
    val = folder / "val-000000.tar"
    corrupt = shard_keys(val)[VAL_CORRUPT]
    rewrite_shard(val, lambda name, data: [(name, b"\xff\xd8\xff not a JPEG")] if name == f"{corrupt}.jpg" else None)
    cut_key = shard_keys(val)[VAL_CUT]
    with tarfile.open(val) as tar:
        member = tar.getmember(f"{cut_key}.jpg")
    with open(val, "r+b") as handle:
        handle.truncate(member.offset_data + member.size // 2)
    foreign = folder / FOREIGN_SHARD
    rewrite_shard(foreign, lambda name, data: [(name[:-4] + ".txt", b"a caption")] if name.endswith(".cls") else None)
    return folder, {"no_cls": no_cls, "corrupt": corrupt, "cut": cut_key}


@pytest.mark.slow
def test_bad_samples_are_skipped_counted_and_reported(bad_shards, tmp_path, capsys, caplog, monkeypatch):
    import toolkit.data.reading

    monkeypatch.setattr(toolkit.data.reading, "_warnings_given", 0)  # the cap is per process; earlier tests used it up
    folder, damaged = bad_shards
    # batch 7: 9 batches = 63 samples, exactly the usable ones, so every epoch reads all 64 and skips 1
    assert train_cli(train_args(folder, tmp_path, "run", "train.batch_size=7")) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lost_in_cut = 16 - VAL_CUT
    assert [r["skipped_samples"] for r in rows] == [1, 1]
    assert [r["val_skipped_samples"] for r in rows] == [1 + lost_in_cut] * 2
    val = json.loads((run / "eval/val/metrics.json").read_text())
    test = json.loads((run / "eval/test/metrics.json").read_text())
    assert (val["num_samples"], val["skipped_samples"]) == (17 - 1 - lost_in_cut, 1 + lost_in_cut)
    assert (test["num_samples"], test["skipped_samples"]) == (36 - 4, 4)
    # the console and the report say so too
    assert out.count("| skipped 1") == 2
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"train-000001.tar: sample {damaged['no_cls']}: no cls" in warnings
    assert f"val-000000.tar: sample {damaged['corrupt']}: cannot decode jpg" in warnings
    assert "val-000000.tar" in warnings and f"{lost_in_cut} of its samples lost" in warnings
    assert f"{FOREIGN_SHARD}: sample" in warnings
    report = (run / "report.html").read_text()
    assert re.search(r"train samples skipped \(all epochs\)</td><td[^>]*>2<", report)
    assert re.search(rf"val samples skipped per evaluation \(max\)</td><td[^>]*>{1 + lost_in_cut}<", report)


@pytest.mark.slow
def test_strict_mode_stops_at_the_first_bad_sample_naming_shard_and_key(bad_shards, tmp_path, capsys):
    folder, damaged = bad_shards
    assert train_cli(train_args(folder, tmp_path, "run", "train.batch_size=7", "data.strict=true")) == 1
    line = error_line(capsys.readouterr().err)
    assert f"train-000001.tar: sample {damaged['no_cls']}: no cls" in line and "data.strict=true" in line


@pytest.mark.slow
def test_missing_shard_and_unreadable_info_json_are_refused_before_training(tiny_shards, tmp_path, capsys):
    from toolkit.evaluation.evaluate import main as evaluate_main

    folder = tmp_path / "shards"
    shutil.copytree(tiny_shards, folder)
    (folder / "val-000001.tar").unlink()
    assert train_cli(train_args(folder, tmp_path, "run")) == 2
    captured = capsys.readouterr()
    assert "val-000001.tar" in error_line(captured.err) and "missing" in captured.err
    assert "epoch 1/" not in captured.out + captured.err and not (tmp_path / "run" / "checkpoints").exists()
    model = tmp_path / "model.safetensors"
    save_tiny_model(model)
    assert run_in_process(evaluate_main, ["--model", str(model), "--shards", str(folder), "--split", "test"]) == 2
    assert "val-000001.tar" in error_line(capsys.readouterr().err)

    (folder / "info.json").write_bytes(b"\x00\x01 not json")
    assert train_cli(train_args(folder, tmp_path, "run")) == 2
    assert "info.json" in error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------
# Model files that do not fit: one line naming the mismatch, from evaluate and predict


def _bad_model(kind: str, path: Path) -> str:
    """Write a broken model file of ``kind``; returns a pattern the error line must contain."""
    if kind == "not-safetensors":
        path.write_bytes(b"PK\x03\x04 this is a zip archive")
        return "is not a safetensors file"
    if kind == "pickle":
        torch.save({"fc.weight": torch.zeros(2, 64)}, path)
        return "is not a safetensors file"
    if kind == "foreign-safetensors":
        save_file({"weight": torch.zeros(2, 2)}, str(path))
        return "not a pets-toolkit model"
    if kind == "wrong-architecture":
        save_tiny_model(path, "model.blocks_per_stage=[2,1,1,1]", meta={"blocks_per_stage": [1, 1, 1, 1]})
        return r"weights do not fit the model architecture: \d+ unexpected \(e\.g\. layer1\.1\."
    if kind == "wrong-width":
        save_tiny_model(path, "model.base_width=16", meta={"base_width": 8})
        return r"weight \S+ has shape \(\d+[^)]*\) but the model expects \(\d+[^)]*\)"
    if kind == "wrong-class-count":
        save_tiny_model(path, "model.num_classes=3", meta={"num_classes": 2, "class_names": ["cat", "dog"]})
        return (
            r"weight fc\.(weight|bias) has shape \(3,( 64)?\) but the model expects \(2,( 64)?\) "
            r"\(different number of classes\)"
        )
    raise ValueError(kind)


MODEL_PROBLEMS = [
    "not-safetensors",
    "pickle",
    "foreign-safetensors",
    "wrong-architecture",
    "wrong-width",
    "wrong-class-count",
]


@pytest.mark.parametrize("tool", ["evaluate", "predict"])
@pytest.mark.parametrize("kind", MODEL_PROBLEMS)
def test_model_file_that_does_not_fit_is_one_line_naming_the_mismatch(tiny_shards, tmp_path, capsys, tool, kind):
    from toolkit.evaluation.evaluate import main as evaluate_main
    from toolkit.predict import main as predict_main

    model = tmp_path / "model.safetensors"
    expected = _bad_model(kind, model)
    if tool == "evaluate":
        code = run_in_process(evaluate_main, ["--model", str(model), "--shards", str(tiny_shards), "--split", "val"])
    else:
        image = tmp_path / "cat.jpg"
        from PIL import Image

        Image.new("RGB", (40, 32), (120, 80, 40)).save(image)
        code = run_in_process(predict_main, ["--model", str(model), str(image)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    line = error_line(captured.err)
    assert re.search(expected, line) and str(model) in line, line


def test_model_with_other_classes_than_the_shards_is_refused_by_evaluate(tiny_shards, tmp_path, capsys):
    from toolkit.evaluation.evaluate import main as evaluate_main

    model = tmp_path / "model.safetensors"
    save_tiny_model(model, "model.num_classes=3")
    assert run_in_process(evaluate_main, ["--model", str(model), "--shards", str(tiny_shards)]) == 2
    line = error_line(capsys.readouterr().err)
    assert "3 classes" in line and "cat, dog" in line


# ---------------------------------------------------------------------------------------------
# Command lines and config files: valid, or one line and exit code 2


KEYS = [f"{section}.{key}" for section, fields in to_dict(Config()).items() for key in fields]
ODD_KEYS = ["data", "data.shards.deeper", "train.epochz", "nosuch.key", "Data.shards", ".lr", "a..b", "train.", "1x.y"]
ODD_VALUES = [
    "",
    "0",
    "-1",
    "7",
    "1e-3",
    "3.0e-3",
    "1e400",
    ".nan",
    "-.inf",
    "true",
    "null",
    "~",
    "abc",
    "adam",
    "[1, 1, 1, 1]",
    "[1,",
    "[]",
    "{a: 1}",
    "{",
    "[0.5, 0.5]",
    "'quoted'",
    "a: b: c",
    "- item",
    "x" * 300,
    "!!python/object/apply:os.system ['echo pwned']",
    "&anchor 1",
    "*alias",
    "%TAG",
    "\t",
    "é",
    "=",
    "a=b",
]
ODD_FLAGS = ["--bogus", "-x", "--config", "--print-config=yes", "--", "-"]


def _random_command_line(rng: random.Random) -> list[str]:
    argv = ["--config", str(SMOKE), "--print-config"]
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(KEYS if rng.random() < 0.8 else ODD_KEYS)
        argv.append(f"{key}={rng.choice(ODD_VALUES)}")
    if rng.random() < 0.1:
        argv.insert(rng.randrange(len(argv) + 1), rng.choice(ODD_FLAGS))
    if rng.random() < 0.05:
        argv = [a for a in argv if a != "--config"]
    return argv


def test_fuzzed_train_command_lines_print_a_config_or_one_error_line(tmp_path, capsys):
    from toolkit.train import main

    rng, printed = random.Random(1234), tmp_path / "printed.yaml"
    codes = []
    for _ in range(300):
        argv = _random_command_line(rng)
        try:
            run_cli(main, argv)
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        codes.append(code)
        if code == 0:  # the printed config is a complete config file that loads back
            printed.write_text(captured.out)
            validate_config(load_config(printed))
        else:
            assert code == 2, (argv, captured.err)
            assert "Traceback" not in captured.err, (argv, captured.err)
            errors = [line for line in captured.err.splitlines() if "error:" in line]
            assert len(errors) == 1, (argv, captured.err)
    assert 0 in codes and 2 in codes  # the fuzzing reached both outcomes


def test_fuzzed_config_files_load_or_give_one_error_line(tmp_path, capsys):
    from toolkit.train import main

    rng = random.Random(99)
    fragments = [
        "data:",
        "  shards: x",
        "model: [1, 2]",
        "train:",
        "  epochs: 0",
        "  epochs: 3",
        "optimizer: {lr: -1}",
        "optimizer:\n  lr: abc",
        ": :",
        "- a\n- b",
        "{{",
        "'",
        "\x00",
        "!!binary AAAA",
        "tracking: {wandb: maybe}",
        "eval:\n  threshold: 2",
        "output: null",
        "scheduler:\n\tname: cosine",
        "data:\n  crop_scale: [1, 0.5]",
    ]
    path = tmp_path / "config.yaml"
    for _ in range(120):
        text = "\n".join(rng.choice(fragments) for _ in range(rng.randint(0, 5)))
        junk = bytes(rng.randrange(256) for _ in range(40))
        path.write_bytes(text.encode("utf-8") if rng.random() < 0.9 else junk)
        try:
            run_cli(main, ["--config", str(path), "--print-config"])
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        assert code in (0, 2), (text, captured.err)
        if code == 2:
            assert "Traceback" not in captured.err and captured.err.count("\n") == 1, (text, captured.err)
