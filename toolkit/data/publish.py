"""``make_shards --out s3://bucket/prefix``: pack locally, then publish to an object store in a safe order.

The shards are packed into a temporary folder exactly as for a local ``--out`` (so they are byte-identical
to a local run's), then the store's old info.json is removed first, each shard uploaded, stale shards of
an earlier run removed, and the dataset card and info.json written last: a reader either finds no
manifest (and says so) or a manifest whose shards are all there, never a half-written dataset.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from toolkit.cli import is_main_process, progress
from toolkit.data import stores
from toolkit.data.dataset_card import CARD_NAME
from toolkit.data.shards import SHARD_NAME, is_ours, pack_dataset
from toolkit.errors import UsageError
from toolkit.formats import MANIFEST_NAME
from toolkit.redaction import check_no_credentials


def check_store_prefix(url: str) -> list[str]:
    """The names already under ``url``; refuses a prefix holding files make_shards did not write."""
    names = stores.list_names(url)
    foreign = [name for name in names if not is_ours(name)]
    if foreign:
        raise UsageError(
            f"--out {url} holds files make_shards did not write (e.g. {foreign[0]!r}); choose an empty prefix"
        )
    return names


def publish(folder: Path, url: str, info: dict, before: list[str], show_progress: bool = True) -> None:
    """Upload a packed folder to ``url``: old manifest away, shards, stale shards away, card, manifest last."""
    base = url.rstrip("/")
    if MANIFEST_NAME in before:
        stores.remove(f"{base}/{MANIFEST_NAME}")
    new = sorted(shard["name"] for split in info["splits"].values() for shard in split["shards"])
    for name in progress(
        new, total=len(new), desc="uploading", unit="shard", enabled=show_progress and is_main_process()
    ):
        stores.upload(str(folder / name), f"{base}/{name}")
    for stale in before:
        if SHARD_NAME.match(stale) and stale not in new:
            stores.remove(f"{base}/{stale}")
    if (folder / CARD_NAME).is_file():
        stores.upload(str(folder / CARD_NAME), f"{base}/{CARD_NAME}")
    stores.upload(str(folder / MANIFEST_NAME), f"{base}/{MANIFEST_NAME}")


def pack_to_store(source: Path, url: str, **options) -> dict:
    """``pack_dataset`` into a temporary folder, then ``publish`` it to ``url``; the info.json written."""
    check_no_credentials(url, "--out")
    before = check_store_prefix(url)  # before packing: a wrong credential or bucket fails in seconds
    with tempfile.TemporaryDirectory(prefix="make_shards-") as tmp:
        folder = Path(tmp) / "shards"
        info = pack_dataset(source, folder, **options)
        publish(folder, url, info, before, show_progress=options.get("show_progress", True))
    return info
