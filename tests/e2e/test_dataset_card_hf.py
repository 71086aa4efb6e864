"""Hugging Face datasets reads the packed shards with the dataset card's named labels."""

from __future__ import annotations

import json

import pytest


def test_hugging_face_datasets_gives_named_labels(synthetic_shards, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (optional)")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = json.loads((synthetic_shards / "info.json").read_text())
    loaded = datasets.load_dataset(str(synthetic_shards))
    assert set(loaded) == {"train", "val", "test"}
    for split in loaded:
        assert loaded[split].num_rows == info["splits"][split]["num_samples"]
    train = loaded["train"]
    assert train.features["cls"].names == info["classes"]
    first = train[0]
    assert train.features["cls"].int2str(first["cls"]) in info["classes"]
    assert first["jpg"].mode == "RGB" and first["__key__"]
