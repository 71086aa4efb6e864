"""``make_shards --verify``: re-read every shard against its manifest.

Training trusts the manifest's counts blindly, so this checks what a reader would otherwise
discover hours in: sizes and sha256, tar structure, every sample's members, each label against
the class its metadata names (species, breed or class folder, as the manifest's ``label_field``
says), and that every JPEG decodes to the size its metadata says.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from toolkit.cli import is_main_process, progress
from toolkit.data.shards import SIZE_FIELDS, decode_error, map_ordered, strict_decoding
from toolkit.data.transforms import open_image
from toolkit.formats import SPLITS, class_names, label_field, read_manifest


@dataclass(frozen=True)
class ShardCheck:
    path: str
    shard: dict
    classes: tuple[str, ...]
    label_field: str  # the sample json field that must name classes[cls]


def check_shard(task: ShardCheck) -> tuple[list[str], list[str], dict[str, int]]:
    """Problems found in one shard, its keys in order, and its class counts."""
    name, shard = Path(task.path).name, task.shard
    try:
        data = Path(task.path).read_bytes()
    except OSError as err:
        return [f"{name}: cannot read ({err.strerror or err})"], [], {}
    problems = []
    if len(data) != shard["bytes"]:
        problems.append(f"{name}: {len(data)} bytes, info.json says {shard['bytes']}")
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        problems.append(f"{name}: sha256 differs from info.json (file changed or damaged)")
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if not member.isfile() or not key or not ext:
                    problems.append(f"{name}: unexpected member {member.name!r}")
                    continue
                if key in samples and (ext in samples[key] or key != next(reversed(samples))):
                    problems.append(f"{name}: {member.name} repeated or not next to the rest of its sample")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        return problems + [f"{name}: not a readable tar ({err})"], list(samples), {}
    counts = {class_name: 0 for class_name in task.classes}
    for key, members in samples.items():
        problem = check_sample(members, task.classes, task.label_field)
        if problem:
            problems.append(f"{name}/{key}: {problem}")
        else:
            counts[task.classes[int(members["cls"])]] += 1
    if len(samples) != shard["num_samples"]:
        problems.append(f"{name}: {len(samples)} samples, info.json says {shard['num_samples']}")
    return problems, list(samples), counts


def check_sample(members: dict[str, bytes], classes: tuple[str, ...], field: str) -> Optional[str]:
    if sorted(members) != ["cls", "jpg", "json"]:
        return f"has {', '.join(sorted(members))}, expected cls, jpg, json"
    allowed = [str(i).encode("ascii") for i in range(len(classes))]
    if members["cls"] not in allowed:
        return f"cls is {members['cls'][:20]!r}, expected b'0' to {allowed[-1]!r}"
    try:
        meta = json.loads(members["json"])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "json is not valid JSON"
    wanted = (field, *SIZE_FIELDS)
    if not isinstance(meta, dict) or any(f not in meta for f in wanted):
        return f"json lacks some of {', '.join(wanted)}"
    if meta[field] != classes[int(members["cls"])]:
        return f"cls {members['cls'].decode()} ({classes[int(members['cls'])]}) disagrees with {field} {meta[field]!r}"
    with strict_decoding():
        try:
            with open_image(members["jpg"]) as image:
                image.load()
                if image.format != "JPEG" or image.mode != "RGB":
                    return f"jpg is {image.format} {image.mode}, expected an RGB JPEG"
                if image.size != (meta["width"], meta["height"]):
                    return f"jpg is {image.size[0]}x{image.size[1]}, json says {meta['width']}x{meta['height']}"
        except Exception as err:
            return f"jpg does not decode ({decode_error(err)})"
    return None


def verify_shards(folder: Path, workers: int = 1, show_progress: bool = False) -> list[str]:
    """Re-read every shard against info.json; the problems found (empty = OK)."""
    folder = Path(folder)
    info = read_manifest(folder)
    problems = []
    classes, field = tuple(class_names(info)), label_field(info)
    tasks = [ShardCheck(str(folder / shard["name"]), shard, classes, field)
             for split in SPLITS for shard in info["splits"][split]["shards"]]
    listed = {Path(t.path).name for t in tasks}
    problems += [f"{p.name}: not listed in info.json (left over from another run?)"
                 for p in sorted(folder.glob("*.tar")) if p.name not in listed]
    results = iter(progress(map_ordered(check_shard, tasks, workers), total=len(tasks), desc="verifying",
                            unit="shard", enabled=show_progress and is_main_process()))
    seen: dict[str, str] = {}
    for split in SPLITS:
        meta = info["splits"][split]
        total, counts = 0, {class_name: 0 for class_name in classes}
        for shard in meta["shards"]:
            shard_problems, keys, shard_counts = next(results)
            problems += shard_problems
            total += len(keys)
            for class_name, n in shard_counts.items():
                counts[class_name] += n
            for key in keys:
                if key in seen:
                    problems.append(f"{shard['name']}/{key}: key also in {seen[key]}")
                seen[key] = shard["name"]
        if total != meta["num_samples"] or sum(s["num_samples"] for s in meta["shards"]) != meta["num_samples"]:
            problems.append(f"{split}: {total} samples in its shards, info.json says {meta['num_samples']}")
        if counts != meta["class_counts"]:
            problems.append(f"{split}: class counts {counts}, info.json says {meta['class_counts']}")
    return problems
