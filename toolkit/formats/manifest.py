"""The shard manifest (``info.json`` beside the tar shards): what training trusts blindly.

Sample counts give every rank the same number of steps, class names size the model's head,
normalization comes from the train split. ``make_shards`` writes it; the loader, evaluation,
``--verify`` and the tools read it, all through the functions here. Described for users in
``shards/README.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Union

from toolkit.errors import UsageError
from toolkit.fileio import atomic_write_json

MANIFEST_NAME = "info.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar$")
PACK_HINT = "create them with `python -m toolkit.make_shards --source <Oxford-IIIT Pet folder> --out <shard folder>`"
MANIFEST_KEYS = (
    "format_version",
    "dataset",
    "synthetic",
    "classes",
    "splits",
    "normalization",
    "skipped",
    "unlisted",
    "options",
)
_SHARD_FIELDS = {"name": str, "num_samples": int, "bytes": int, "sha256": str}


def is_plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def manifest_problem(info: Any, *, complete: bool = False) -> Optional[str]:
    """What is wrong with a manifest, or None.

    Readers of the data need only the version and each split's shard list (``complete=False``);
    the packer and ``--verify`` insist on every key and the per-shard sha256 and byte counts.
    """
    if not isinstance(info, dict):
        return "not a JSON object"
    if complete:
        missing = [key for key in MANIFEST_KEYS if key not in info]
        if missing:
            return f"lacks {', '.join(missing)}"
    if info.get("format_version") != MANIFEST_VERSION:
        return f"format_version is {info.get('format_version')!r}, this toolkit reads {MANIFEST_VERSION}"
    splits = info.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "no 'splits'"
    if complete and sorted(splits) != sorted(SPLITS):
        return f"must describe the splits {', '.join(SPLITS)}"
    if complete:
        classes = info.get("classes")
        if (
            not isinstance(classes, list)
            or len(classes) < 2
            or len(set(map(str, classes))) != len(classes)
            or not all(isinstance(c, str) and c for c in classes)
        ):
            return "'classes' must list at least two distinct class names"
    for name, split in splits.items():
        if complete and not _complete_split(split):
            return (
                f"split {name!r} lacks num_samples, class_counts or a shard list with name, num_samples, "
                "bytes and sha256"
            )
        if complete and list(split["class_counts"]) != info["classes"]:
            return f"split {name!r} counts classes {list(split['class_counts'])}, not the manifest's classes"
        try:
            int(split["num_samples"])
            for shard in split["shards"]:
                str(shard["name"]), int(shard["num_samples"])
        except (KeyError, TypeError, ValueError):
            return f"split {name!r} lacks num_samples or a shard list with name and num_samples"
        strays = [shard["name"] for shard in split["shards"] if not is_plain_file_name(str(shard["name"]))]
        if strays:  # names are joined to the shard folder: one with a path in it would point elsewhere
            return f"split {name!r} names a shard {strays[0]!r} that is not a plain file name"
    return None


def _complete_split(meta: object) -> bool:
    return (
        isinstance(meta, dict)
        and isinstance(meta.get("num_samples"), int)
        and isinstance(meta.get("class_counts"), dict)
        and isinstance(meta.get("shards"), list)
        and all(
            isinstance(shard, dict) and all(isinstance(shard.get(k), t) for k, t in _SHARD_FIELDS.items())
            for shard in meta["shards"]
        )
    )


def parse_manifest(text: str, where: str, *, complete: bool = False, hint: str = PACK_HINT) -> dict:
    """A manifest from its JSON text; ``where`` and ``hint`` go into the one-line error."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where} is not valid JSON ({err}); re-create the shards: {hint}") from None
    problem = manifest_problem(info, complete=complete)
    if problem:
        raise UsageError(f"{where}: {problem}; re-create the shards: {hint}")
    return info


def read_manifest(folder: Union[str, Path]) -> dict:
    """The complete manifest of a local shard folder (for ``--verify`` and the packer's own checks)."""
    path = Path(folder) / MANIFEST_NAME
    hint = f"make shards with: python -m toolkit.make_shards --source DIR --out {folder}"
    if not path.is_file():
        raise UsageError(f"no {MANIFEST_NAME} in {folder}: not a shard folder, or an unfinished run; {hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is unreadable ({err}); {hint}") from None
    return parse_manifest(text, str(path), complete=True, hint=hint)


def write_manifest(folder: Path, info: dict) -> None:
    problem = manifest_problem(info, complete=True)
    if problem:  # a bug in the packer, never user input
        raise ValueError(f"refusing to write an incomplete manifest: {problem}")
    atomic_write_json(Path(folder) / MANIFEST_NAME, info)


def split_info(info: dict, split: str) -> dict:
    if split not in info["splits"]:
        raise UsageError(f"split {split!r} is not in the shards (they have: {', '.join(info['splits'])})")
    return info["splits"][split]


def split_size(info: dict, split: str) -> int:
    return int(split_info(info, split)["num_samples"])


def selection_problem(info: dict) -> Optional[str]:
    """Why the val split cannot choose the best epoch (no images, or one class: ROC-AUC undefined), or None."""
    meta = info["splits"].get("val") or {}
    counts = {name: int(n) for name, n in (meta.get("class_counts") or {}).items()}
    present = [name for name, n in counts.items() if n > 0]
    if int(meta.get("num_samples", 0)) == 0 or (counts and len(present) < 2):
        shown = ", ".join(f"{name} {n}" for name, n in counts.items()) or "no images"
        return (
            f"the val split ({shown}) needs images of at least two classes: training keeps the best epoch by val "
            "ROC-AUC, which is undefined otherwise; re-pack with a larger --val-fraction (stratified, the default, "
            "keeps every class in val)"
        )
    return None


# Manifests written before 'classes' existed held Oxford-IIIT Pet by species, in this order.
LEGACY_CLASSES = ("cat", "dog")


def class_names(info: dict) -> list[str]:
    return list(info.get("classes") or LEGACY_CLASSES)


def label_field(info: dict) -> str:
    """The sample json field that names each sample's class (manifests from before it existed: species)."""
    return str(info.get("label_field") or "species")


def dataset_summary(info: dict, shards: str) -> dict:
    """What a run records about its data (``RUN/dataset.json``, the report, W&B)."""
    return {
        "shards": shards,
        "dataset": info.get("dataset"),
        "synthetic": bool(info.get("synthetic")),
        "classes": info.get("classes"),
        "splits": {
            name: {
                "num_samples": s.get("num_samples"),
                "class_counts": s.get("class_counts"),
                "num_shards": len(s.get("shards", [])),
            }
            for name, s in info.get("splits", {}).items()
        },
        "normalization": info.get("normalization"),
        "skipped": info.get("skipped", []),
        "unlisted": info.get("unlisted"),
    }
