"""The dataset card make_shards writes beside the shards: class names in label order, kept user READMEs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from toolkit.data.dataset_card import CARD_NAME, card_header
from toolkit.data.shards import pack_dataset


def header_of(folder: Path) -> dict:
    text = (folder / CARD_NAME).read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_card_names_the_classes_in_label_order(synthetic_shards):
    info = json.loads((synthetic_shards / "info.json").read_text())
    header = header_of(synthetic_shards)
    label = next(f for f in header["dataset_info"]["features"] if f["name"] == "cls")
    assert label["dtype"]["class_label"]["names"] == {str(i): name for i, name in enumerate(info["classes"])}
    files = header["configs"][0]["data_files"]
    assert {f["split"]: f["path"] for f in files} == {"train": "train-*.tar", "val": "val-*.tar", "test": "test-*.tar"}
    assert "synthetic" in header["tags"]
    assert header == card_header(info)


def test_a_breed_card_has_the_37_style_names(synthetic_source, tmp_path):
    info = pack_dataset(synthetic_source, tmp_path / "breeds", labels="breed", workers=1, show_progress=False)
    names = next(f for f in header_of(tmp_path / "breeds")["dataset_info"]["features"] if f["name"] == "cls")
    assert list(names["dtype"]["class_label"]["names"].values()) == info["classes"] and len(info["classes"]) > 2


def test_a_readme_that_is_not_a_card_is_kept(synthetic_source, tmp_path, capsys):
    out = tmp_path / "shards"
    out.mkdir()
    (out / CARD_NAME).write_text("# my notes\n")
    pack_dataset(synthetic_source, out, workers=1, show_progress=False)
    assert (out / CARD_NAME).read_text() == "# my notes\n"
    assert "not a dataset card written by make_shards" in capsys.readouterr().out
    pack_dataset(synthetic_source, tmp_path / "fresh", workers=1, show_progress=False)
    pack_dataset(synthetic_source, tmp_path / "fresh", workers=1, show_progress=False)  # our own card is refreshed
    assert header_of(tmp_path / "fresh")["task_categories"] == ["image-classification"]
