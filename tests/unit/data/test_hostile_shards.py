"""Hostile shards are capped: bytes per member and per sample, compressed tars refused unread,
--verify in bounded memory, and a shard name in info.json that cannot point outside its folder.
Each test fails when its protection is removed (checked by hand when written).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import write_images
from toolkit.data.shards import pack_dataset
from toolkit.errors import UsageError

# ---------------------------------------------------------------------------------------------
# Caps per member, per sample (all members of a key), compressed tars, --verify


def make_tar(members: list[tuple[str, bytes]]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_all(shard: Path, expected: int, limits=None, strict: bool = False) -> tuple[list[dict], int]:
    from toolkit.data import reading

    skips = reading.Skips(strict=strict)
    kept = list(
        reading.usable(reading.read_shards([(str(shard), expected)], skips, limits=limits), skips, num_classes=2)
    )
    return kept, skips.count


def test_the_bytes_of_one_key_are_capped_not_only_each_member(tmp_path: Path):
    """Members each under the member cap but together over the sample cap, and a key repeating one member:
    skipped and counted; members a sample is not made of are never read."""
    from toolkit.data.reading import Limits

    limits = Limits(member_bytes=1000, sample_bytes=1500)
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(
        make_tar(
            [
                ("ok.cls", b"1"),
                ("ok.jpg", b"x" * 900),
                *((f"ok.extra{i}", b"e" * 900) for i in range(50)),
                ("wide.cls", b"0"),
                ("wide.jpg", b"x" * 900),
                ("wide.json", b"{" * 900),  # 1801 bytes of one key
                *(("again.jpg", b"y" * 900) for _ in range(5)),
                ("again.cls", b"0"),  # one member, five times
                ("last.cls", b"0"),
                ("last.jpg", b"z" * 10),
            ]
        )
    )
    kept, skipped = read_all(shard, 4, limits)
    assert [s["__key__"] for s in kept] == ["ok", "last"] and skipped == 2
    assert set(kept[0]) == {"__key__", "__url__", "__label__", "cls", "jpg"}  # the 50 extras were not read


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_compressed_shards_are_refused_unread_and_counted(tmp_path: Path, caplog, kind: str):
    """mode "r|*" would decompress any of these; a small download could then expand to gigabytes per worker."""
    import bz2
    import gzip
    import lzma

    from toolkit.errors import DataError

    plain = make_tar([(f"s{i}.{ext}", data) for i in range(3) for ext, data in (("cls", b"1"), ("jpg", b"x" * 10))])
    compress = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind]
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(compress(plain))
    kept, skipped = read_all(shard, 3)
    assert kept == [] and skipped == 3
    assert "compressed tar, refused unread" in caplog.text
    with pytest.raises(DataError, match="compressed tar, refused unread"):  # data.strict: one line naming it
        read_all(shard, 3, strict=True)
    shard.write_bytes(plain)  # the same samples, plain: read
    kept, skipped = read_all(shard, 3)
    assert len(kept) == 3 and skipped == 0


def test_verify_reads_a_shard_in_bounded_memory_and_names_what_is_over_the_caps(tmp_path: Path):
    """--verify used to read each whole shard, and every sample of it, into memory."""
    import tracemalloc

    from helpers import rewrite_shard
    from toolkit.data.reading import Limits
    from toolkit.data.verify import verify_shards

    source = tmp_path / "pets"
    write_images(source / "cat", 8, size=32)
    write_images(source / "dog", 8, size=32, seed=1)
    shards = tmp_path / "shards"
    pack_dataset(source, shards, resize_shorter=32, workers=1, show_progress=False)
    assert verify_shards(shards) == []
    train = sorted(shards.glob("train-*.tar"))[0]
    first = {}

    def bloat(name: str, data: bytes):
        key = name.split(".")[0]
        first.setdefault("key", key)
        if key == first["key"] and name.endswith(".jpg"):
            return [(name, bytes(8 << 20))]  # 8 MiB in one member
        return None

    rewrite_shard(train, bloat)
    tracemalloc.start()
    problems = verify_shards(shards, limits=Limits(member_bytes=1 << 20, sample_bytes=1 << 20))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert any(
        f"{train.name}/{first['key']}: {first['key']}.jpg is 8,388,608 bytes" in p and "not read" in p for p in problems
    ), problems
    assert any("sha256 differs" in p for p in problems)
    assert peak < 4 << 20, f"peak {peak:,} bytes while verifying an 8 MiB shard"


# ---------------------------------------------------------------------------------------------
# Shard names in info.json


def test_a_shard_name_in_info_json_cannot_point_outside_the_folder(synthetic_shards, tmp_path):
    import shutil

    from toolkit.data import load_info

    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    info = json.loads((shards / "info.json").read_text())
    info["splits"]["train"]["shards"][0]["name"] = "../../etc/passwd"
    (shards / "info.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="not a plain file name"):
        load_info(str(shards))
