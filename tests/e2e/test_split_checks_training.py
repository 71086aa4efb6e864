"""Shards whose test or val split cannot serve are refused before training and evaluating, in one line, before
any run folder is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import TINY, error_line, run_in_process, save_tiny_model, train_args, train_cli, write_images
from toolkit.compare_recipes import main as compare_main
from toolkit.data.shards import pack_dataset
from toolkit.errors import UsageError


def test_an_empty_test_split_is_refused_before_training_and_evaluating(tmp_path: Path, capsys):
    """Shards whose test split is empty (packed by an older version, or edited): one line, no run folder."""
    from helpers import train_args, train_cli
    from toolkit.data.shards import pack_dataset
    from toolkit.evaluate import main as evaluate_main

    source = tmp_path / "pets"
    for split, count in (("train", 12), ("val", 4), ("test", 3)):
        for label, name in enumerate(("cat", "dog")):
            write_images(source / split / name, count, size=32, seed=10 * label + len(split))
    shards = tmp_path / "shards"
    pack_dataset(source, shards, resize_shorter=32, workers=1, show_progress=False)
    info = json.loads((shards / "info.json").read_text())
    for shard in info["splits"]["test"]["shards"]:
        (shards / shard["name"]).unlink()
    info["splits"]["test"] = {"num_samples": 0, "class_counts": {"cat": 0, "dog": 0}, "shards": []}
    (shards / "info.json").write_text(json.dumps(info))

    assert train_cli(train_args(shards, tmp_path / "runs", "x", "train.epochs=1")) == 2
    line = error_line(capsys.readouterr().err)
    assert "the test split" in line and "has no samples" in line and "eval.test_split" in line, line
    assert not (tmp_path / "runs").exists()  # refused before any folder is made
    model = tmp_path / "model.safetensors"
    save_tiny_model(model)
    code = run_in_process(
        evaluate_main,
        ["--model", str(model), "--shards", str(shards), "--num-workers", "0", "--out", str(tmp_path / "eval")],
    )
    assert code == 2 and "has no samples" in error_line(capsys.readouterr().err)
    with pytest.raises(UsageError, match="the test split .* has no samples, so --split=test"):
        compare_main(["--shards", str(shards), "--epochs", "1", "--seeds", "0", "--out", str(tmp_path / "c"), *TINY])
    assert not (tmp_path / "c").exists()


def test_training_refuses_a_val_split_that_cannot_choose_the_best_epoch(synthetic_source, tmp_path, capsys):
    shards = tmp_path / "one-class-val"  # the seed's plain random split of a tiny set: one val image, one class
    info = pack_dataset(
        synthetic_source,
        shards,
        val_fraction=0.02,
        split_mode="seed",
        resize_shorter=48,
        workers=1,
        show_progress=False,
    )
    assert sum(n > 0 for n in info["splits"]["val"]["class_counts"].values()) == 1
    assert train_cli(train_args(shards, tmp_path / "runs", "x", "train.epochs=1")) == 2
    line = error_line(capsys.readouterr().err)
    assert "needs images of at least two classes" in line and "--val-fraction" in line
    assert not (tmp_path / "runs").exists()  # refused before any folder is made
