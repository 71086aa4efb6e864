"""Any class-per-folder dataset packs like the Oxford shards: fixed split folders kept, val held out
of train, linked sub-folders packed once, loops not followed, files over the size cap skipped unread."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_folder, write_images
from shard_reader import read_all_samples
from toolkit.data.shards import pack_dataset
from toolkit.errors import UsageError

# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------


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


def test_a_test_fraction_is_refused_where_the_source_has_a_test_split(synthetic_source, tmp_path):
    with pytest.raises(UsageError, match="has its official test list"):
        pack_dataset(synthetic_source, tmp_path / "out", test_fraction=0.3, workers=1, show_progress=False)
    make_folder(tmp_path / "fixed" / "train", {"a": 6, "b": 6})
    make_folder(tmp_path / "fixed" / "test", {"a": 2, "b": 2}, seed=50)
    with pytest.raises(UsageError, match="has a test/ folder"):
        pack_dataset(tmp_path / "fixed", tmp_path / "out", test_fraction=0.3, workers=1, show_progress=False)
    assert not (tmp_path / "out").exists()


def pack_folder(source: Path, out: Path) -> dict:
    from toolkit.data.shards import pack_dataset

    return pack_dataset(source, out, resize_shorter=32, workers=1, show_progress=False)


def test_linked_sub_folders_are_packed_each_file_once_and_loops_are_not_followed(tmp_path: Path, capsys):
    """A linked sub-folder used to be dropped without a word; now it is packed, a loop is named, a file
    reached twice is packed once (not in train and test both) and its second path is a counted skip."""
    source, elsewhere = tmp_path / "pets", tmp_path / "more-cats"
    write_images(source / "cat", 6)
    write_images(source / "dog", 6, seed=1)
    write_images(elsewhere, 4, seed=2)
    (source / "cat" / "more").symlink_to(elsewhere, target_is_directory=True)  # a linked sub-folder
    (source / "cat" / "loop").symlink_to(source / "cat", target_is_directory=True)  # back to its own class folder
    (source / "dog" / "same.jpg").symlink_to(source / "cat" / "img0.jpg")  # one file in two classes
    info = pack_folder(source, tmp_path / "shards")
    packed = {
        name: sum(info["splits"][split]["class_counts"][name] for split in info["splits"]) for name in ("cat", "dog")
    }
    assert packed == {"cat": 10, "dog": 6}
    skipped = info["skipped"]
    assert len(skipped) == 1 and "the same file as cat/img0.jpg" in skipped[0]["reason"], skipped
    assert "cat/loop links back to a folder above it: not followed" in capsys.readouterr().err


def test_a_file_over_the_size_cap_is_skipped_unread(tmp_path: Path):
    from toolkit.data.listing import Item
    from toolkit.data.shards import Job, process_image

    big = tmp_path / "big.jpg"
    write_images(tmp_path, 1, size=64)
    (tmp_path / "img0.jpg").rename(big)
    item = Item(key="big", path=big, label=0, fields=(), source="big.jpg")
    assert not isinstance(process_image(Job("train", item, 32, 90, False, max_file_bytes=1 << 20)), str)
    reason = process_image(Job("train", item, 32, 90, False, max_file_bytes=100))
    assert isinstance(reason, str) and reason.startswith("too large:") and "100-byte cap" in reason
