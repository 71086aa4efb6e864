"""Batch prediction: an image-folder tree with a planted unreadable file (skipped, named, counted; labels from
the class folders, metrics), a glob, and shards predicted by 1 and 2 processes into byte-identical CSVs."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ENV, LAUNCH_2, ROOT, rewrite_shard, run_in_process, save_tiny_model, shard_keys, wait_for
from toolkit import predict

pytestmark = pytest.mark.slow


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """photos/cat/*.png, photos/dog/*.jpg (5 each), a planted unreadable dog/broken.jpg and a notes.txt."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name, suffix in (("cat", ".png"), ("dog", ".jpg")):
        (root / name).mkdir(parents=True)
        for i in range(5):
            size = (30 + 7 * i, 50 - 3 * i)
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                root / name / f"{i}{suffix}"
            )
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_tiny_model(path, class_names=["cat", "dog"], seed=2)
    return path


def test_folder_with_a_planted_unreadable_file(tree: Path, model_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "predictions.csv"
    code = run_in_process(predict.main, ["--model", str(model_file), str(tree), "--out", str(out), "--batch-size", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err  # a CSV run names and counts what it skipped, as evaluate does
    assert "Traceback" not in captured.err
    broken = str(tree / "dog" / "broken.jpg")
    named = [line for line in captured.err.splitlines() if broken in line]
    assert len(named) == 1 and named[0].startswith(f"skipped {broken}: undecodable"), captured.err
    assert "1 of 11 images could not be read and were skipped" in captured.err
    assert "1 file(s) without an image extension left out" in captured.err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["key"] for row in rows] == sorted(str(p) for p in tree.rglob("*") if p.stem.isdigit())
    assert {row["label"] for row in rows[:5]} == {"cat"} and {row["label"] for row in rows[5:]} == {"dog"}
    assert list(rows[0]) == ["key", "label", "pred", "top1", "prob1", "top2", "prob2"]
    for row in rows:
        assert row["pred"] == row["top1"] and float(row["prob1"]) + float(row["prob2"]) == pytest.approx(1, abs=2e-6)
    metrics = json.loads((tmp_path / "predictions.metrics.json").read_text())
    assert metrics["num_samples"] == 10 and metrics["skipped_samples"] == 1
    assert metrics["accuracy"] == pytest.approx(np.mean([row["pred"] == row["label"] for row in rows]))
    assert "images: n=10 " in captured.out


def test_json_lines_of_a_glob_keep_the_order_and_name_the_unreadable_file(tree: Path, model_file: Path, capsys):
    pattern = str(tree / "dog" / "*.jpg")
    code = run_in_process(predict.main, ["--model", str(model_file), pattern])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1 and [Path(line["file"]).name for line in lines] == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "3.jpg",
        "4.jpg",
        "broken.jpg",
    ]
    assert "error" in lines[-1] and all("prob" in line for line in lines[:-1])
    assert captured.err.splitlines()[-1] == "1 of 6 images could not be read (see their error lines)"


def test_shards_with_one_and_two_processes_give_identical_csv(synthetic_shards, model_file: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    corrupt = shard_keys(shards / "test-000001.tar")[1]
    rewrite_shard(
        shards / "test-000001.tar", lambda name, data: [(name, b"not a jpeg")] if name == f"{corrupt}.jpg" else None
    )
    common = ["-m", "toolkit.predict", "--model", str(model_file), "--shards", str(shards), "--split", "test"]
    env = {**ENV, "PYTHONPATH": str(ROOT)}
    one = subprocess.Popen(
        [sys.executable, *common, "--out", str(tmp_path / "one.csv"), "--num-workers", "0", "--batch-size", "8"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    two = subprocess.Popen(
        [
            *LAUNCH_2,
            "--main_process_port",
            "29631",
            *common,
            "--out",
            str(tmp_path / "two.csv"),
            "--num-workers",
            "2",
            "--batch-size",
            "3",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for proc in (one, two):
        out, err = wait_for(proc)
        assert proc.returncode == 0, err[-3000:]  # the corrupt sample: skipped, named by the loader, counted
        assert "1 sample(s) of test could not be decoded and were skipped" in err and "Traceback" not in err
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    info = json.loads((shards / "info.json").read_text())
    rows = list(csv.DictReader(io.StringIO((tmp_path / "two.csv").read_text())))
    assert len(rows) == len({row["key"] for row in rows}) == info["splits"]["test"]["num_samples"] - 1
    assert corrupt not in {row["key"] for row in rows}
    one_metrics, two_metrics = (json.loads((tmp_path / f"{n}.metrics.json").read_text()) for n in ("one", "two"))
    assert one_metrics["accuracy"] == two_metrics["accuracy"] and two_metrics["skipped_samples"] == 1
