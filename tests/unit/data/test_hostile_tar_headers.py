"""Tar headers cannot bypass the caps (issue 33, item 8).

tarfile reads a pax header or a GNU long name whole, before any member cap applies: a 150 MB pax
comment raised memory by 430 MiB and its sample was accepted. Such headers are now capped at
``MAX_HEADER_BYTES`` before tarfile reads them; the shard is unreadable from there (counted as lost).
"""

from __future__ import annotations

import io
import tarfile

import pytest

from toolkit.data.reading import MAX_HEADER_BYTES, OversizedHeader, Skips, read_shards, tar_samples


def shard(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def member(name: str, pax: dict | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.pax_headers = pax or {}
    return info


def keys(data: bytes) -> list[str]:
    return [sample["__key__"] for sample in tar_samples(io.BytesIO(data))]


def test_a_huge_pax_comment_is_refused_before_it_is_read():
    data = shard((member("a.jpg", {"comment": "x" * (1 << 20)}), b"jpg"), (member("a.cls"), b"0"))
    with pytest.raises(OversizedHeader, match=f"pax header of .* over the {MAX_HEADER_BYTES:,}-byte cap"):
        keys(data)


def test_a_digit_only_pax_value_is_refused_before_the_quadratic_parse():
    data = shard((member("a.jpg", {"comment": "1" * (64 << 10)}), b"jpg"))
    with pytest.raises(OversizedHeader):
        keys(data)


def test_a_huge_gnu_long_name_is_refused_before_it_is_read():
    data = shard((member("d" * (1 << 20) + "/a.jpg"), b"jpg"), fmt=tarfile.GNU_FORMAT)
    with pytest.raises(OversizedHeader, match="GNU long-name header"):
        keys(data)


def test_ordinary_long_names_still_read():
    long = "n" * 300
    data = shard((member(f"{long}.jpg", {"comment": "made by make_shards"}), b"jpg"), (member(f"{long}.cls"), b"0"))
    assert keys(data) == [long]
    assert keys(shard((member(f"{long}.jpg"), b"jpg"), fmt=tarfile.GNU_FORMAT)) == [long]


def test_a_shard_with_an_oversized_header_counts_its_samples_as_lost(tmp_path):
    path = tmp_path / "hostile.tar"
    path.write_bytes(
        shard(
            (member("a.jpg"), b"jpg"),
            (member("a.cls"), b"0"),
            (member("b.jpg", {"comment": "x" * (1 << 20)}), b"jpg"),
            (member("b.cls"), b"0"),
        )
    )
    skips = Skips(strict=False)
    got = [sample["__key__"] for sample in read_shards([(str(path), 2)], skips)]
    assert got == []  # "a" is held until the next key's header, which ends the shard
    assert skips.count == 2, vars(skips)  # both samples info.json promised, counted, none silently lost
