"""Bad data in a training run: counted and reported by default, named by strict mode, refused before training
when a shard or info.json is missing."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from helpers import (
    error_line,
    rewrite_shard,
    run_in_process,
    save_tiny_model,
    shard_keys,
    train_args,
    train_cli,
)

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


def test_strict_mode_stops_at_the_first_bad_sample_naming_shard_and_key(bad_shards, tmp_path, capsys):
    folder, damaged = bad_shards
    assert train_cli(train_args(folder, tmp_path, "run", "train.batch_size=7", "data.strict=true")) == 1
    line = error_line(capsys.readouterr().err)
    assert f"train-000001.tar: sample {damaged['no_cls']}: no cls" in line and "data.strict=true" in line


def test_missing_shard_and_unreadable_info_json_are_refused_before_training(tiny_shards, tmp_path, capsys):
    from toolkit.evaluate import main as evaluate_main

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
