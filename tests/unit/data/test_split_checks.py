"""Splits that would be empty or unusable are refused when packing, in one line, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import error_line, run_in_process, write_images
from toolkit.make_shards import main as make_shards_main


@pytest.mark.parametrize("empty", ["test", "val"])
def test_an_empty_split_folder_is_refused_when_packing(tmp_path: Path, capsys, empty: str):
    """train/cat, train/dog and an empty test/ (or val/): one line before anything is written, exit 2."""
    from toolkit.make_shards import main as make_shards_main

    source = tmp_path / "pets"
    write_images(source / "train" / "cat", 6)
    write_images(source / "train" / "dog", 6, seed=1)
    (source / empty).mkdir()
    (source / empty / "notes.txt").write_text("no class folders here\n")
    code = run_in_process(
        make_shards_main, ["--source", str(source), "--out", str(tmp_path / "shards"), "--workers", "1"]
    )
    line = error_line(capsys.readouterr().err)
    assert code == 2 and f"the {empty} split would be empty" in line and f"--{empty}-fraction" in line, line
    assert not (tmp_path / "shards").exists()


def test_a_val_fraction_of_zero_is_refused_when_packing(synthetic_source, tmp_path, capsys):
    code = run_in_process(
        make_shards_main,
        ["--source", str(synthetic_source), "--out", str(tmp_path / "s"), "--val-fraction", "0", "--workers", "1"],
    )
    assert code == 2 and "val needs images of both classes" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()
