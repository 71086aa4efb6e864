"""Where the shards are: a folder with info.json, or a URL pattern with info.json beside it.

``data.shards`` may name a local folder, a brace pattern of tar files (``.../{split}-{000000..000011}.tar``),
an object-store prefix (``s3://``, ``gs://``, ``hf://``), an http(s) URL or a ``pipe:`` command; any other
``scheme://`` is refused (``stores.scheme_of``). These helpers turn it into each split's shard list with the
sizes the manifest promises, so the loaders can plan equal work for every rank before reading a byte.

info.json is read through the same store as the shards. For ``pipe:`` it is read through the same
command: the command's word that names the shards (the one with ``.tar`` or ``{``) is replaced by the
info.json beside them, e.g. ``pipe:aws s3 cp s3://b/pets/{split}-{000000..000003}.tar -`` reads
``aws s3 cp s3://b/pets/info.json -``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Optional, Sequence

from braceexpand import braceexpand

from toolkit.data.stores import URL_TIMEOUT_S, read_bytes, scheme_of
from toolkit.errors import UsageError
from toolkit.formats import MANIFEST_NAME, PACK_HINT, parse_manifest, split_info, split_size
from toolkit.redaction import check_no_credentials, redact_text

Shard = tuple[str, Optional[int]]  # (url, number of samples from info.json if known)


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def is_remote(url: str) -> bool:
    """http(s) or an object store (s3, gs, hf): read by ``stores.RetryingReader``."""
    return scheme_of(url) not in ("local", "pipe")


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
    return f"{base.rstrip('/')}/{name}" if is_remote(base) or is_pipe(base) else os.path.join(base, name)


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


def check_location(shards: str, what: str = "data.shards") -> None:
    """A location this toolkit reads (any other ``scheme://`` is refused), carrying no credentials.

    A ``pipe:`` command is the user's own program and reaches whatever it reaches (its inline
    credentials are masked wherever it is written, see ``toolkit.redaction``)."""
    if not is_pipe(shards):
        scheme_of(shards)
        check_no_credentials(shards, what)


def pipe_manifest_command(shards: str) -> str:
    """The ``pipe:`` command with its shard word replaced by the info.json beside the shards (the rest of the
    command, comments and quoting included, stays as written)."""
    command, word = shards[len("pipe:") :], _location_part(shards)
    at = command.rfind(word)
    quoted = at > 0 and command[at - 1] in "'\""  # already inside the command's own quotes
    where = manifest_location(shards) if quoted else shlex.quote(manifest_location(shards))
    return command[:at] + where + command[at + len(word) :]


def _run_pipe(shards: str) -> str:
    command = pipe_manifest_command(shards)
    try:
        done = subprocess.run(command, shell=True, capture_output=True, timeout=URL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"the pipe: command for {MANIFEST_NAME} ran over {URL_TIMEOUT_S} s: {redact_text(command)}"
        ) from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise UsageError(
            f"the pipe: command for {MANIFEST_NAME} ({redact_text(command)}) exited {done.returncode}: "
            f"{redact_text(said[0])}; {PACK_HINT}"
        )
    return done.stdout.decode("utf-8")


def load_info(shards: str) -> dict:
    """Read and check the shards' manifest through the shards' own store (file, object store, URL or command)."""
    check_location(shards)
    where = manifest_location(shards)
    try:
        if is_pipe(shards):
            text = _run_pipe(shards)
        elif is_remote(where):
            text = read_bytes(where).decode("utf-8")
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
