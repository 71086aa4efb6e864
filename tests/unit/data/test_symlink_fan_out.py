"""Folder links that fan out are listed once per real folder (issue 33, item 9).

A chain of folders, each holding two links to the next, reaches the last folder by 2^depth paths:
listing every path made packing explode (depth 12: 16,382 paths for 2 real files).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from toolkit.data.image_folder import read_folder_listing

DEPTH = 12


def fan_out(root: Path) -> None:
    """root/cat/f0 -> a and b both link to f1, f1 -> a and b both link to f2, ... f{DEPTH} holds 2 images."""
    chain = root / "chain"
    for level in range(DEPTH + 1):
        (chain / f"f{level}").mkdir(parents=True)
    for level in range(DEPTH):
        for name in ("a", "b"):
            (chain / f"f{level}" / name).symlink_to(chain / f"f{level + 1}", target_is_directory=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (i * 90, 0, 0)).save(chain / f"f{DEPTH}" / f"img{i}.jpg")
    (root / "pets" / "cat").mkdir(parents=True)
    (root / "pets" / "cat" / "f0").symlink_to(chain / "f0", target_is_directory=True)
    (root / "pets" / "dog").mkdir()
    Image.new("RGB", (16, 16)).save(root / "pets" / "dog" / "img.jpg")


def test_a_fan_out_of_folder_links_lists_each_real_file_once(tmp_path):
    fan_out(tmp_path)
    listing = read_folder_listing(tmp_path / "pets")
    items = [item for pool in listing.pools.values() for item in pool]
    cats = [item.source for item in items if item.label == listing.classes.index("cat")]
    assert cats == ["cat/f0/a/a/a/a/a/a/a/a/a/a/a/a/img0.jpg", "cat/f0/a/a/a/a/a/a/a/a/a/a/a/a/img1.jpg"], cats[:5]
    assert not any(item.problem for item in items)
    reached_twice = [w for w in listing.warnings if "reached twice through links): listed once" in w]
    assert len(reached_twice) == DEPTH and "cat/f0/b is the same folder as cat/f0/a" in reached_twice[-1]
