"""Names that are not UTF-8 (class folders, image files, shard members): one line before packing, or a counted
skip; never a crash when writing predictions.csv."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import error_line, run_in_process, write_images
from toolkit.make_shards import main as make_shards_main


def test_a_class_folder_name_that_is_not_utf8_is_one_line_before_packing(tmp_path: Path, capsys):
    """It used to pack and train, then crash writing predictions.csv."""
    import os

    source = tmp_path / "pets"
    write_images(source / "cat", 6)
    bad = os.path.join(os.fsencode(source), b"d\xf6g")  # Latin-1 "dög"
    os.mkdir(bad)
    write_images(Path(os.fsdecode(bad)), 6, seed=1)
    code = run_in_process(
        make_shards_main, ["--source", str(source), "--out", str(tmp_path / "shards"), "--workers", "1"]
    )
    line = error_line(capsys.readouterr().err)
    assert code == 2 and "'d\\udcf6g'" in line and "not valid UTF-8; rename it" in line, line
    assert not (tmp_path / "shards").exists()


def test_an_image_file_name_that_is_not_utf8_is_a_counted_skip(tmp_path: Path, capsys):
    import os

    source = tmp_path / "pets"
    write_images(source / "cat", 6)
    write_images(source / "dog", 6, seed=1)
    os.rename(source / "dog" / "img5.jpg", os.path.join(os.fsencode(source / "dog"), b"h\xfcnd.jpg"))
    os.rename(source / "dog" / "img4.jpg", os.path.join(os.fsencode(source / "dog"), b"notes\xfc.txt"))
    code = run_in_process(
        make_shards_main,
        ["--source", str(source), "--out", str(tmp_path / "shards"), "--workers", "1", "--resize-shorter", "32"],
    )
    out = capsys.readouterr().out
    assert code == 0 and "is not valid UTF-8: rename it" in out and "notes\ufffd.txt" in out
    info = json.loads((tmp_path / "shards" / "info.json").read_text())
    assert len(info["skipped"]) == 1 and sum(s["num_samples"] for s in info["splits"].values()) == 10


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_oversized_members_and_non_utf8_names_are_skipped_and_counted(tmp_path, monkeypatch):
    from toolkit.data import reading

    monkeypatch.setattr(reading, "MAX_MEMBER_BYTES", 1000)
    monkeypatch.setattr(reading, "_warnings_given", 0)
    good = [("ok.cls", b"1"), ("ok.jpg", b"x" * 10)]
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(
        _tar(
            [("big.cls", b"0"), ("big.jpg", b"x" * 5000), *good, ("bad\udcff.cls", b"0"), ("bad\udcff.jpg", b"y" * 10)]
        )
    )
    skips = reading.Skips(strict=False)
    kept = list(reading.usable(reading.read_shards([(str(shard), 3)], skips), skips, num_classes=2))
    assert [sample["__key__"] for sample in kept] == ["ok"] and skips.count == 2
    for sample in kept:  # what is kept can be written anywhere (predictions.csv) as UTF-8
        sample["__key__"].encode("utf-8")
