"""Inputs that validate but would crash or mislead later are refused up front, in one line (issue: trust)."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers import error_line, run_in_process, save_tiny_model, train_args, train_cli
from toolkit.cli import UsageError
from toolkit.config import load_config, validate
from toolkit.data.shards import pack_dataset
from toolkit.make_shards import main as make_shards_main


def test_a_val_fraction_of_zero_is_refused_when_packing(synthetic_source, tmp_path, capsys):
    code = run_in_process(make_shards_main, ["--source", str(synthetic_source), "--out", str(tmp_path / "s"),
                                             "--val-fraction", "0", "--workers", "1"])
    assert code == 2 and "val needs images of both classes" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_training_refuses_a_val_split_that_cannot_choose_the_best_epoch(synthetic_source, tmp_path, capsys):
    shards = tmp_path / "one-class-val"  # the seed's plain random split of a tiny set: one val image, one class
    info = pack_dataset(synthetic_source, shards, val_fraction=0.02, split_mode="seed", resize_shorter=48,
                        workers=1, show_progress=False)
    assert sum(n > 0 for n in info["splits"]["val"]["class_counts"].values()) == 1
    assert train_cli(train_args(shards, tmp_path / "runs", "x", "train.epochs=1")) == 2
    line = error_line(capsys.readouterr().err)
    assert "needs images of at least two classes" in line and "--val-fraction" in line
    assert not (tmp_path / "runs").exists()  # refused before any folder is made


@pytest.mark.parametrize("override, words", [
    ("train.seed=18446744073709551616", "train.seed"),  # 2**64: torch.manual_seed would raise later
    ("train.seed=-1", "train.seed"),
    ("data.image_size=100000", "data.image_size"),
    ("data.resize_size=100000", "data.resize_size"),
])
def test_config_values_that_would_crash_later_are_refused(override, words):
    with pytest.raises(UsageError, match=words):
        validate(load_config(None, [override]))


@pytest.mark.parametrize("claim", [{"num_classes": 10**9}, {"base_width": 10**6}, {"blocks_per_stage": [10**5, 1, 1, 1]}])
def test_model_file_metadata_cannot_ask_for_a_huge_allocation(tmp_path, capsys, monkeypatch, claim):
    import toolkit.training.checkpoint as checkpoint
    from toolkit.predict import main as predict_main

    model = tmp_path / "model.safetensors"
    save_tiny_model(model, meta=claim)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(image)
    built = []
    monkeypatch.setattr(checkpoint, "create_model", lambda *a, **k: built.append(k) or pytest.fail(f"built {k}"))
    code = run_in_process(predict_main, ["--model", str(model), str(image)])
    assert code == 2 and "metadata claims" in error_line(capsys.readouterr().err)
    assert built == []  # refused before any model of the claimed size was built
