"""Where the shards are: a folder with info.json, or a URL pattern with info.json beside it.

``data.shards`` may name a local folder, a brace pattern of tar files (``.../{split}-{000000..000011}.tar``),
an http(s) URL or a ``pipe:`` command. These helpers turn it into each split's shard list with the
sizes the manifest promises, so the loaders can plan equal work for every rank before reading a byte.
"""

from __future__ import annotations

import os
import shlex
import urllib.request
from typing import Optional, Sequence

from braceexpand import braceexpand

from toolkit.errors import UsageError
from toolkit.formats import MANIFEST_NAME, PACK_HINT, parse_manifest, split_info, split_size

URL_TIMEOUT_S = 60

Shard = tuple[str, Optional[int]]  # (url, number of samples from info.json if known)


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def is_local(url: str) -> bool:
    return not (is_pipe(url) or is_remote(url))


def is_pattern(shards: str) -> bool:
    """A pattern names tar files (``.../train-{000000..000011}.tar``); anything else is a folder."""
    return is_pipe(shards) or "{" in shards or shards.rstrip("/").endswith(".tar")


def _location_part(shards: str) -> str:
    """The word of a ``pipe:`` command that names the shards (e.g. the URL given to curl)."""
    if not is_pipe(shards):
        return shards
    words = [w for w in shlex.split(shards[len("pipe:") :]) if ".tar" in w or "{" in w]
    if not words:
        raise UsageError(f"cannot tell where the shards of {shards!r} are: the pipe: command names no .tar file")
    return words[-1]


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if is_remote(base) else os.path.join(base, name)


def _base_of(shards: str) -> str:
    """The folder (or URL prefix) holding info.json."""
    if not is_pattern(shards):
        return shards
    where = _location_part(shards)
    head, sep, _ = where.rpartition("/")
    return head if sep else "."


def _shard_name(url: str) -> str:
    return _location_part(url).rstrip("/").rpartition("/")[2]


def manifest_location(shards: str) -> str:
    """Where the shards' info.json is: a local path or a URL."""
    return _join(_base_of(shards), MANIFEST_NAME)


def load_info(shards: str) -> dict:
    """Read and check the shards' manifest (local file, or fetched over http(s))."""
    where = manifest_location(shards)
    try:
        if is_remote(where):
            with urllib.request.urlopen(where, timeout=URL_TIMEOUT_S) as response:
                text = response.read().decode("utf-8")
        else:
            with open(where, encoding="utf-8") as handle:
                text = handle.read()
    except FileNotFoundError:
        raise UsageError(
            f"no {MANIFEST_NAME} at {where}: data.shards={shards!r} is not a packed shard folder; {PACK_HINT}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {where} ({err}); check data.shards or {PACK_HINT}") from None
    return parse_manifest(text, where)


def split_shards(shards: str, split: str, info: dict) -> list[Shard]:
    """The split's shard URLs in their packed order, with their sizes from info.json.

    A folder lists info.json's shards. A pattern is brace-expanded (``{split}`` stands for the
    split's name) and keeps the tars named ``<split>-*``; a pattern naming none of them (say, a
    train pattern asked for ``val``) falls back to info.json's shards in the pattern's folder.
    """
    entries = split_info(info, split)["shards"]
    if not is_pattern(shards):
        return [(_join(shards, e["name"]), int(e["num_samples"])) for e in entries]
    sizes = {e["name"]: int(e["num_samples"]) for e in entries}
    urls = [u for u in braceexpand(shards.replace("{split}", split)) if _shard_name(u).startswith(f"{split}-")]
    if urls:
        return [(u, sizes.get(_shard_name(u))) for u in urls]
    if is_pipe(shards):
        raise UsageError(
            f"data.shards={shards!r} names no {split}-*.tar shard; put {{split}} in the pattern, "
            f"e.g. 'pipe:curl -s https://host/pets/{{split}}-{{000000..000003}}.tar'"
        )
    return [(_join(_base_of(shards), e["name"]), int(e["num_samples"])) for e in entries]


def split_urls(shards: str, split: str, info: dict) -> list[str]:
    return [url for url, _ in split_shards(shards, split, info)]


def num_samples_of(shard_list: Sequence[Shard], info: dict, split: str) -> int:
    """Samples in the chosen shards: a pattern may pick a subset of the split."""
    if all(n is not None for _, n in shard_list):
        return sum(n for _, n in shard_list)
    return split_size(info, split)


def check_shards_exist(shards: str, info: dict, splits: Sequence[str]) -> None:
    """Fail before training starts, not hours in, when local shard files are missing."""
    missing = [
        url for split in splits for url in split_urls(shards, split, info) if is_local(url) and not os.path.isfile(url)
    ]
    if missing:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(
            f"{len(missing)} shard file(s) listed in {MANIFEST_NAME} are missing: {listed}; "
            f"point data.shards at a complete shard folder or {PACK_HINT}"
        )


def check_split_has_samples(shards: str, info: dict, split: str, option: str, skip: str = "") -> None:
    """Refuse, before any work, a split to evaluate that holds no samples: its metrics are undefined, and
    finding that out when training ends costs the run its report (``option`` is the setting that named it)."""
    if split_size(info, split) == 0:
        raise UsageError(
            f"the {split} split of {shards} has no samples, so {option}={split} cannot be evaluated; "
            f"re-pack the shards with images in {split}, or set {option} to another split{skip}"
        )
