"""``make_shards --verify``: re-read every shard against its manifest.

Training trusts the manifest's counts blindly, so this checks what a reader would otherwise
discover hours in: sizes and sha256, tar structure, every sample's members, each label against
the class its metadata names (species, breed or class folder, as the manifest's ``label_field``
says), and that every JPEG decodes to the size its metadata says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from toolkit.cli import is_main_process, progress
from toolkit.data import stores
from toolkit.data.locations import is_remote
from toolkit.data.reading import CappedTarInfo, Limits, default_limits, open_shard
from toolkit.data.shards import SIZE_FIELDS, decode_error, map_ordered, strict_decoding
from toolkit.data.stores import read_bytes
from toolkit.data.transforms import open_image
from toolkit.errors import UsageError
from toolkit.formats import MANIFEST_NAME, SPLITS, class_names, label_field, parse_manifest, read_manifest


@dataclass(frozen=True)
class ShardCheck:
    path: str
    shard: dict
    classes: tuple[str, ...]
    label_field: str  # the sample json field that must name classes[cls]
    limits: Limits  # what one member and one sample may hold in memory


class HashingReader:
    """A stream that hashes what passes through it: the tar is checked and hashed in one read (one download
    for a remote shard); ``drain`` reads what the tar reader left (the end-of-archive padding)."""

    def __init__(self, stream) -> None:
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> tuple[int, str]:
        """(size, sha256) of the whole file, read in 1 MiB chunks: any shard costs no more memory than that."""
        while self.read(1 << 20):
            pass
        return self.size, self.digest.hexdigest()


def read_shard_manifest(folder: Union[str, Path]) -> dict:
    """The complete manifest of a shard folder or object store prefix."""
    if not is_remote(str(folder)):
        return read_manifest(folder)
    where = f"{str(folder).rstrip('/')}/{MANIFEST_NAME}"
    hint = f"make shards with: python -m toolkit.make_shards --source DIR --out {folder}"
    try:
        text = read_bytes(where).decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"no {MANIFEST_NAME} at {where}: not a shard folder, or an unfinished run; {hint}") from None
    return parse_manifest(text, where, complete=True, hint=hint)


class ShardTally:
    """One shard's samples checked one by one as the tar is read, so at most one sample is in memory."""

    def __init__(self, name: str, task: ShardCheck) -> None:
        self.name, self.task = name, task
        self.problems: list[str] = []
        self.keys: list[str] = []
        self.counts = {class_name: 0 for class_name in task.classes}
        self.key: Optional[str] = None
        self.members: dict[str, bytes] = {}
        self.size, self.too_big = 0, None

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        key, _, ext = member.name.partition(".")
        if not member.isfile() or not key or not ext:
            self.problems.append(f"{self.name}: unexpected member {member.name!r}")
            return
        if key != self.key:
            self.finish()
            if key in self.keys:
                self.problems.append(f"{self.name}: {member.name} repeated or not next to the rest of its sample")
            self.key, self.members, self.size, self.too_big = key, {}, 0, None
        elif ext in self.members:
            self.problems.append(f"{self.name}: {member.name} repeated or not next to the rest of its sample")
        self.size += member.size
        limits = self.task.limits
        if self.too_big is None and (member.size > limits.member_bytes or self.size > limits.sample_bytes):
            self.too_big = (
                f"{member.name} is {member.size:,} bytes ({self.size:,} with the rest of its sample), over "
                f"the cap of {limits.member_bytes:,} per member and {limits.sample_bytes:,} per sample; "
                "not read"
            )
            self.members = {}
        if self.too_big is None:
            self.members[ext] = tar.extractfile(member).read()

    def finish(self) -> None:
        """Check the sample read so far, if any."""
        if self.key is None:
            return
        if self.key not in self.keys:
            self.keys.append(self.key)
        problem = self.too_big or check_sample(self.members, self.task.classes, self.task.label_field)
        if problem:
            self.problems.append(f"{self.name}/{self.key}: {problem}")
        else:
            self.counts[self.task.classes[int(self.members["cls"])]] += 1
        self.key, self.members = None, {}


def check_shard(task: ShardCheck) -> tuple[list[str], list[str], dict[str, int]]:
    """Problems found in one shard, its keys in order, and its class counts."""
    name, shard = task.path.rstrip("/").rpartition("/")[2], task.shard
    tally, broken = ShardTally(name, task), None
    try:
        with contextlib.closing(open_shard(task.path)) as raw:
            stream = HashingReader(raw)
            try:
                with tarfile.open(fileobj=stream, mode="r|", tarinfo=CappedTarInfo) as tar:
                    for member in tar:
                        tar.members = []  # keep no list of a hostile tar's millions of members
                        tally.add(member, tar)
                tally.finish()
            except (tarfile.TarError, EOFError) as err:
                broken = f"{name}: not a readable tar ({err})"
            size, digest = stream.drain()
    except OSError as err:
        return [f"{name}: cannot read ({err.strerror or err})"], [], {}
    problems = []
    if size != shard["bytes"]:
        problems.append(f"{name}: {size} bytes, info.json says {shard['bytes']}")
    if digest != shard["sha256"]:
        problems.append(f"{name}: sha256 differs from info.json (file changed or damaged)")
    if broken:
        return problems + tally.problems + [broken], tally.keys, {}
    problems += tally.problems
    if len(tally.keys) != shard["num_samples"]:
        problems.append(f"{name}: {len(tally.keys)} samples, info.json says {shard['num_samples']}")
    return problems, tally.keys, tally.counts


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


def verify_shards(
    folder: Union[str, Path], workers: int = 1, show_progress: bool = False, limits: Optional[Limits] = None
) -> list[str]:
    """Re-read every shard against info.json; the problems found (empty = OK).

    Memory stays bounded whatever the shards hold: files are hashed in chunks, tars read as a stream,
    and a member or sample over ``limits`` (the readers' caps by default) is a problem, not read.
    """
    remote = is_remote(str(folder))
    info = read_shard_manifest(folder)
    problems = []
    classes, field = tuple(class_names(info)), label_field(info)
    limits = limits or default_limits()
    base = str(folder).rstrip("/") if remote else str(folder)
    tasks = [
        ShardCheck(
            f"{base}/{shard['name']}" if remote else str(Path(folder) / shard["name"]), shard, classes, field, limits
        )
        for split in SPLITS
        for shard in info["splits"][split]["shards"]
    ]
    listed = {shard["name"] for split in SPLITS for shard in info["splits"][split]["shards"]}
    present = stores.list_names(base) if remote else [p.name for p in Path(folder).glob("*.tar")]
    problems += [
        f"{name}: not listed in info.json (left over from another run?)"
        for name in sorted(present)
        if name.endswith(".tar") and name not in listed
    ]
    results = iter(
        progress(
            map_ordered(check_shard, tasks, workers),
            total=len(tasks),
            desc="verifying",
            unit="shard",
            enabled=show_progress and is_main_process(),
        )
    )
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
