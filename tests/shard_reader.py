"""Reads shards back with nothing but tarfile and json, independently of the code under test."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from toolkit.formats import SPLITS


def read_all_samples(folder: Path) -> dict[str, list[tuple[str, int, dict]]]:
    """split -> [(key, cls, json)] in shard order."""
    info = json.loads((folder / "info.json").read_text())
    out: dict[str, list] = {}
    for split in SPLITS:
        rows = []
        for shard in info["splits"][split]["shards"]:
            members: dict[str, dict[str, bytes]] = {}
            with tarfile.open(folder / shard["name"]) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            rows += [(key, int(m["cls"]), json.loads(m["json"])) for key, m in members.items()]
        out[split] = rows
    return out
