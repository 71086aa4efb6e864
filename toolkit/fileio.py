"""Crash-safe file writing, and reading the JSON lines and YAML files it writes.

Everything the toolkit writes that a later step trusts (shards, manifests, model files,
metrics) goes through here: write to a temporary name in the same folder, fsync, rename, so a
file either exists complete or not at all. YAML (configs, a run's config.yaml) is read back as
one mapping, with a one-line error for a missing or malformed file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

import yaml

from toolkit.errors import UsageError

PathLike = Union[str, os.PathLike]

TMP_PREFIX = ".tmp-"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; finished files get the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: PathLike) -> None:
    """Make a rename durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: PathLike, obj: Any) -> None:
    """Append one JSON object as one line, flushed and fsynced, so a crash never leaves half a line."""
    line = json.dumps(obj, sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: PathLike) -> list:
    """Read a JSON-lines file, ignoring a torn last line left by a crash."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def dump_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def read_yaml_mapping(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"config file {str(path)!r} not found; pass an existing YAML file, e.g. --config configs/smoke.yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        detail = " ".join(str(getattr(err, "problem", None) or err).split())  # PyYAML's messages span lines
        raise UsageError(f"config file {str(path)!r} is not valid YAML{at}: {detail}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(
            f"config file {str(path)!r} must hold a mapping of sections (data:, model:, ...), got {type(raw).__name__}"
        )
    return raw
