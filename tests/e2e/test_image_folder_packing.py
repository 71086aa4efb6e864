"""Image folders packed end to end by make_shards: every file with its class, layouts that are no dataset
refused in one line, special files skipped unopened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, ROOT, error_line, file_hashes, jpeg, make_folder, picture, wait_for, write_images
from shard_reader import read_all_samples
from toolkit.data.shards import SPLITS, pack_dataset
from toolkit.data.verify import verify_shards


@pytest.mark.timeout(120)
def test_a_fifo_and_a_dev_zero_link_named_jpg_are_skipped_unopened(tmp_path: Path):
    """Packing used to wait forever on the FIFO and read /dev/zero until memory ran out. In a child with
    4 GiB of address space and a deadline, so that a regression fails here instead of taking the machine."""
    import os
    import resource

    source = tmp_path / "pets"
    write_images(source / "cat", 6)
    write_images(source / "dog", 6, seed=1)
    os.mkfifo(source / "cat" / "pipe.jpg")
    (source / "dog" / "zero.jpg").symlink_to("/dev/zero")
    out = tmp_path / "shards"

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit.make_shards",
            "--source",
            str(source),
            "--out",
            str(out),
            "--workers",
            "1",
            "--resize-shorter",
            "32",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_memory,
    )
    stdout, stderr = wait_for(proc, timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "is a FIFO, never read" in stdout and "zero.jpg is a device, never read" in stdout
    info = json.loads((out / "info.json").read_text())
    assert len(info["skipped"]) == 2 and sum(s["num_samples"] for s in info["splits"].values()) == 12


def test_image_folder_packs_every_file_with_its_class(tmp_path):
    root = make_folder(tmp_path / "flowers", {"tulip": 20, "rose": 20, "daisy": 20})
    picture(7).save(root / "rose" / "as_png.jpg", "PNG")  # a PNG named .jpg: converted
    (root / "daisy" / "broken.jpg").write_bytes(b"<html>404</html>")  # undecodable: skipped and recorded
    (root / "tulip" / "nested").mkdir()
    (root / "tulip" / "nested" / "img 0.jpeg").write_bytes(jpeg(999))  # a sub-folder; its key must not clash
    (root / "tulip" / "notes.txt").write_text("not an image")
    (root / "tulip" / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("# flowers")

    info = pack_dataset(root, tmp_path / "shards", workers=1, show_progress=False)
    assert info["classes"] == ["daisy", "rose", "tulip"] and info["label_field"] == "class"
    assert info["dataset"] == "flowers" and info["options"]["test_fraction"] == 0.2
    assert info["unlisted"]["names"] == ["README.md", "tulip/notes.txt"]
    assert [(s["name"], s["reason"].split(":")[0]) for s in info["skipped"]] == [("daisy_broken", "undecodable")]
    packed = sum(info["splits"][s]["num_samples"] for s in SPLITS)
    assert packed + len(info["skipped"]) == 63  # 60 + the PNG + the nested one + the broken one
    assert verify_shards(tmp_path / "shards") == []
    samples = read_all_samples(tmp_path / "shards")
    keys = [key for split in SPLITS for key, _, _ in samples[split]]
    assert len(keys) == len(set(keys)) == packed
    for split in SPLITS:
        for _key, label, meta in samples[split]:
            assert meta["class"] == info["classes"][label] == meta["source"].split("/")[0]
        assert all(n > 0 for n in info["splits"][split]["class_counts"].values()), split  # stratified
    assert info["normalization"]["num_images"] == info["splits"]["train"]["num_samples"]

    again = pack_dataset(root, tmp_path / "again", workers=2, show_progress=False)
    assert file_hashes(tmp_path / "again") == {
        **file_hashes(tmp_path / "shards"),
        "info.json": file_hashes(tmp_path / "again")["info.json"],
    }
    assert {**again, "options": None} == {**info, "options": None}


@pytest.mark.parametrize(
    "arrange, expected",
    [
        (lambda r: make_folder(r, {"only": 5}), "one class folder (only)"),
        (lambda r: (make_folder(r, {"a": 5, "b": 5}), (r / "empty").mkdir()), "holds no images"),
        (
            lambda r: (make_folder(r / "train", {"a": 5, "b": 5}), make_folder(r / "test", {"a": 2, "c": 2})),
            "class folder c/ that train/ lacks",
        ),
        (
            lambda r: (make_folder(r / "train", {"a": 5, "b": 5}), make_folder(r / "extra", {"a": 2})),
            "mixes split folders",
        ),
        (lambda r: make_folder(r / "val", {"a": 5, "b": 5}), "no train/ folder"),
        (lambda r: r.mkdir(parents=True), "no class folders"),
    ],
)
def test_layouts_that_are_no_dataset_are_one_line_errors(tmp_path, arrange, expected):
    root = tmp_path / "data"
    arrange(root)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.make_shards",
            "--source",
            str(root),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and expected in error_line(done.stderr)


def test_oxford_only_options_are_refused_for_a_folder(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 5, "b": 5})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.make_shards",
            "--source",
            str(root),
            "--labels",
            "breed",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "applies to the Oxford-IIIT Pet layout only" in error_line(done.stderr)
