"""Oxford packed by breed from the real sample images (../shared/data/oxford-pets-mini): 37 classes, labels
checked against the official metadata."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import rewrite_shard
from shard_reader import read_all_samples
from toolkit.data.shards import SPLITS
from toolkit.data.verify import verify_shards
from toolkit.formats import read_manifest


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


def official_breeds(root: Path) -> dict[int, str]:
    """class id -> breed, from list.txt with nothing but str.split."""
    out = {}
    for line in (root / "annotations" / "list.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, class_id = line.split()[:2]
            out[int(class_id)] = name.rpartition("_")[0]
    return out
