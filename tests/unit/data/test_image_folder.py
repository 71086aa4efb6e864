"""Beyond cats vs dogs, the data side: Oxford by breed, and any class-per-folder dataset.

Packing by breed and packing an image folder keep every guarantee of the species shards:
labels checked against their metadata, odd files converted or skipped and recorded, byte-identical
reruns, train-only statistics, and one-line errors for layouts that cannot be a dataset.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ENV, ROOT, error_line, file_hashes, rewrite_shard
from shard_reader import read_all_samples
from toolkit.data.shards import SPLITS, pack_dataset
from toolkit.data.verify import verify_shards
from toolkit.errors import UsageError
from toolkit.formats import read_manifest


def official_breeds(root: Path) -> dict[int, str]:
    """class id -> breed, from list.txt with nothing but str.split."""
    out = {}
    for line in (root / "annotations" / "list.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, class_id = line.split()[:2]
            out[int(class_id)] = name.rpartition("_")[0]
    return out


def test_breed_shards_of_the_real_images(mini_pets, mini_breed_shards):
    info = read_manifest(mini_breed_shards)
    breeds = official_breeds(mini_pets)
    assert info["classes"] == [breeds[i] for i in sorted(breeds)] and len(info["classes"]) == 37
    assert info["label_field"] == "breed" and info["options"]["labels"] == "breed"
    assert verify_shards(mini_breed_shards) == []
    samples = read_all_samples(mini_breed_shards)
    for split in SPLITS:
        got = samples[split]
        assert len(got) == info["splits"][split]["num_samples"]
        for key, label, meta in got:
            assert meta["breed"] == info["classes"][label] == key.rpartition("_")[0]
        counts = {name: sum(info["classes"][label] == name for _, label, _ in got) for name in info["classes"]}
        assert counts == info["splits"][split]["class_counts"]
    # the official test list is the test split, whatever the labels
    test_names = {
        line.split()[0]
        for line in (mini_pets / "annotations" / "test.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert {key for key, _, _ in samples["test"]} == test_names
    # stratified by breed: every breed with enough trainval images is in train and val
    assert all(info["splits"]["train"]["class_counts"][name] > 0 for name in info["classes"])


def test_verify_catches_a_breed_label_that_disagrees(mini_breed_shards, tmp_path):
    folder = tmp_path / "breeds"
    shutil.copytree(mini_breed_shards, folder)
    info = read_manifest(folder)
    shard = folder / info["splits"]["val"]["shards"][0]["name"]
    first = []

    def relabel(name: str, data: bytes):
        if name.endswith(".cls") and not first:
            first.append(name)
            return [(name, str((int(data) + 1) % 37).encode())]
        return None

    rewrite_shard(shard, relabel)
    problems = verify_shards(folder)
    assert any(first[0].split(".")[0] in p and "disagrees with breed" in p for p in problems), problems
    assert any(p.startswith("val: class counts") for p in problems)


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------


def picture(seed: int, size: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size + 8, 3), dtype=np.uint8))


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"img {i}.jpg").write_bytes(jpeg(seed + 100 * c + i))
    return root


@pytest.mark.slow
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


def test_fixed_split_folders_are_kept_and_val_is_held_out_of_train(tmp_path):
    root = tmp_path / "fixed"
    make_folder(root / "train", {"ant": 12, "bee": 12})
    make_folder(root / "test", {"ant": 3, "bee": 4}, seed=500)
    info = pack_dataset(root, tmp_path / "shards", val_fraction=0.25, workers=1, show_progress=False)
    assert info["options"]["test_fraction"] is None  # the test/ folder is the test split
    samples = read_all_samples(tmp_path / "shards")
    assert sorted(meta["source"] for _, _, meta in samples["test"]) == sorted(
        f"test/{c}/img {i}.jpg" for c, n in (("ant", 3), ("bee", 4)) for i in range(n)
    )
    assert info["splits"]["val"]["class_counts"] == {"ant": 3, "bee": 3}
    assert all(meta["source"].startswith("train/") for split in ("train", "val") for _, _, meta in samples[split])


@pytest.mark.slow
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


def test_a_test_fraction_is_refused_where_the_source_has_a_test_split(synthetic_source, tmp_path):
    with pytest.raises(UsageError, match="has its official test list"):
        pack_dataset(synthetic_source, tmp_path / "out", test_fraction=0.3, workers=1, show_progress=False)
    make_folder(tmp_path / "fixed" / "train", {"a": 6, "b": 6})
    make_folder(tmp_path / "fixed" / "test", {"a": 2, "b": 2}, seed=50)
    with pytest.raises(UsageError, match="has a test/ folder"):
        pack_dataset(tmp_path / "fixed", tmp_path / "out", test_fraction=0.3, workers=1, show_progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
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
