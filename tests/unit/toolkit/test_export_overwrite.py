"""``export --overwrite`` replaces an earlier export only (issue 33, item 11): never the README.md of
a shard folder or of the repository a user happens to point ``--out`` at."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import error_line, run_in_process, save_tiny_model
from toolkit.export import CARD_FILE, EXPORT_MARKER, main

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export-overwrite") / "tiny.safetensors"
    save_tiny_model(path, "model.base_width=64")  # timm has ResNets of base width 64 only
    return path


def export(model: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    code = run_in_process(main, ["--model", str(model), "--out", str(out), *extra])
    return code, capsys.readouterr().err


def test_overwrite_refuses_a_folder_that_holds_other_things_and_changes_nothing(model, tmp_path, capsys):
    shards = tmp_path / "shards_copy"
    shards.mkdir()
    (shards / "README.md").write_text("the shards' own card\n")
    (shards / "info.json").write_text("{}\n")
    code, err = export(model, shards, capsys, "--overwrite")
    assert code == 2, err
    line = error_line(err)
    assert "not an earlier export (e.g. info.json)" in line and "--overwrite replaces only" in line
    assert sorted(p.name for p in shards.iterdir()) == ["README.md", "info.json"]
    assert (shards / "README.md").read_text() == "the shards' own card\n"


def test_overwrite_replaces_an_earlier_export(model, tmp_path, capsys):
    out = tmp_path / "exported"
    assert export(model, out, capsys)[0] == 0
    assert (out / EXPORT_MARKER).exists()
    (out / CARD_FILE).write_text("stale\n")
    code, err = export(model, out, capsys, "--overwrite")
    assert code == 0, err
    assert (out / CARD_FILE).read_text() != "stale\n"


def test_overwrite_replaces_an_export_written_before_the_marker(model, tmp_path, capsys):
    out = tmp_path / "old-export"
    assert export(model, out, capsys)[0] == 0
    (out / EXPORT_MARKER).unlink()
    code, err = export(model, out, capsys, "--overwrite")
    assert code == 0, err
