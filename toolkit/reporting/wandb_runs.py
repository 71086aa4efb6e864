"""Local W&B runs: find the run folders that logged to W&B and read back what they logged.

A run folder's ``wandb/run_id.txt`` names its W&B run; offline and online runs write the same
``.wandb`` file: a LevelDB-style log (32 KiB blocks, 7-byte chunk
headers) of ``wandb.proto`` Records. ``wandb_report`` uses this to make panels only for keys
that exist, and the tests use it to check what training logged.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from toolkit.errors import DataError, UsageError
from toolkit.formats import RunDir

RUN_ID_FILE = RunDir(Path()).wandb_run_id.as_posix()  # wandb/run_id.txt, relative to a run folder
RUN_SEARCH_DEPTH = 3  # runs/NAME, runs/compare/runs/NAME: run folders sit at most this deep under --runs-dir
SEED_SUFFIX = re.compile(r"-seed\d+(-\d+)?$")  # compare_recipes names its runs <recipe>-seed<N>[-<version>]
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

_BLOCK = 32 * 1024  # LevelDB log: 32 KiB blocks of crc32/length/type-framed chunks
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version, and the size of every chunk header
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _raw_records(data: bytes) -> Iterator[bytes]:
    """The record payloads of a ``.wandb`` file; stops at a torn tail (a run still writing or killed)."""
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # too small for a chunk header: zero padding
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        if (kind == 0 and length == 0) or len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) != crc:
            return
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk


def read_wandb_records(path: Path) -> Iterator[Any]:
    """``wandb.proto`` Records of one ``.wandb`` file, in the order W&B wrote them."""
    from wandb.proto import wandb_internal_pb2  # heavy; only needed when reading logs

    data = Path(path).read_bytes()
    if not data:  # a run that has only just started
        return
    if data[:4] != b":W&B":
        raise DataError(f"{path} is not a W&B run log (no :W&B header); was it truncated or replaced?")
    for raw in _raw_records(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


@dataclass
class RunLog:
    """What one W&B run logged: keys with their kind, chart specs, and the project it was logged to."""

    run_id: str
    project: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # key -> scalar | table | image | chart | <W&B type>
    charts: dict[str, dict] = field(default_factory=dict)  # chart key -> W&B panel config


_MEDIA_KINDS = {"table-file": "table", "image-file": "image"}


def _note_item(log: RunLog, item: Any) -> None:
    """One history/summary item. Media arrive flattened: nested_key [key, field] with a ``_type`` field."""
    path = list(item.nested_key) or [item.key]
    key = path[0]
    if key.startswith("_"):  # _step, _runtime, _timestamp, _wandb: W&B's own
        return
    value = json.loads(item.value_json)
    if len(path) > 1:
        if path[1] == "_type":
            log.keys[key] = _MEDIA_KINDS.get(value, value)
        return
    if isinstance(value, dict) and "_type" in value:
        log.keys[key] = _MEDIA_KINDS.get(value["_type"], value["_type"])
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        log.keys.setdefault(key, "scalar")


def _note_config(log: RunLog, items: Any) -> None:
    """Custom charts live in the config as ``_wandb.visualize.<key>``: the panel W&B draws."""
    for item in items:
        path = list(item.nested_key) or [item.key]
        if path[:2] == ["_wandb", "visualize"] and len(path) == 3:
            spec = json.loads(item.value_json)
            log.charts[path[2]] = spec.get("panel_config", {})
            log.keys[path[2]] = "chart"


def read_run_log(files: Sequence[Path], run_id: str) -> RunLog:
    """Merge the ``.wandb`` files of one W&B run (a resumed run has one per part)."""
    log = RunLog(run_id)
    for path in files:
        for record in read_wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                log.project = record.run.project
                _note_config(log, record.run.config.update)
            elif kind == "config":
                _note_config(log, record.config.update)
            elif kind == "history":
                for item in record.history.item:
                    _note_item(log, item)
            elif kind == "summary":
                for item in record.summary.update:
                    _note_item(log, item)
    return log


def read_history(files: Sequence[Path]) -> list[dict]:
    """The history rows of one W&B run's ``.wandb`` files, in order (each a dict with its ``_step``): what
    ``wandb sync`` uploads. Nested (media) values are left out; the scalars are what the charts draw."""
    rows = []
    for path in files:
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") != "history":
                continue
            row = {}
            for item in record.history.item:
                path_ = list(item.nested_key) or [item.key]
                if len(path_) == 1:
                    row[path_[0]] = json.loads(item.value_json)
            if record.history.HasField("step") and "_step" not in row:
                row["_step"] = record.history.step.num
            rows.append(row)
    return rows


def last_step(files: Sequence[Path]) -> int:
    """The highest ``_step`` in these ``.wandb`` files (-1: none)."""
    return max((int(row["_step"]) for row in read_history(files) if "_step" in row), default=-1)


# ---------------------------------------------------------------------------------------------
# Finding the runs


@dataclass
class LocalRun:
    """A training run folder that logged to W&B."""

    run_dir: Path
    run_id: str
    log_files: list[Path]
    config: dict

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def group(self) -> str:
        """The recipe: ``strong-seed1`` (and a later ``strong-seed1-2``) belongs to ``strong``; other names stand alone."""
        return SEED_SUFFIX.sub("", self.name) or self.name

    @property
    def needs_sync(self) -> list[Path]:
        """Offline W&B folders not uploaded yet (``wandb sync`` leaves ``run-ID.wandb.synced``)."""
        return [
            p.parent
            for p in self.log_files
            if p.parent.name.startswith("offline-run-") and not p.with_suffix(".wandb.synced").exists()
        ]


def load_run(run_dir: Path) -> Optional[LocalRun]:
    """The run in ``run_dir``, or None when it never logged to W&B (tracking disabled or failed)."""
    try:
        run_id = RunDir(run_dir).wandb_run_id.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not RUN_ID.fullmatch(run_id):
        return None
    run = RunDir(run_dir)
    files = sorted(run.wandb.glob(f"*run-*-{run_id}/run-{run_id}.wandb"))
    if not files:
        return None
    return LocalRun(run_dir, run_id, files, run.read_config())


def find_runs(runs_dir: Path) -> list[LocalRun]:
    """W&B runs in ``runs_dir`` itself or in folders up to RUN_SEARCH_DEPTH levels below it."""
    runs: dict[str, LocalRun] = {}
    for depth in range(RUN_SEARCH_DEPTH + 1):
        for id_file in sorted(runs_dir.glob("/".join(["*"] * depth + [RUN_ID_FILE]))):
            run = load_run(id_file.parent.parent)
            if run is not None:
                runs.setdefault(run.run_id, run)
    return list(runs.values())


def select_runs(
    runs: Sequence[LocalRun], runs_dir: Path, groups: Optional[Sequence[str]], ids: Optional[Sequence[str]]
) -> list[LocalRun]:
    """The runs asked for, or a one-line UsageError that says what is there instead."""
    if not runs_dir.is_dir():
        raise UsageError(f"--runs-dir {runs_dir} not found; pass the folder that holds the run folders (output.dir)")
    if not runs:
        raise UsageError(
            f"no W&B runs found in {runs_dir} (a run that logged to W&B has {RUN_ID_FILE} and "
            "wandb/*run-*/run-ID.wandb; train with tracking.wandb=offline or online, or pass --runs-dir)"
        )
    if groups:
        there = sorted({run.group for run in runs})
        missing = [g for g in groups if g not in there]
        if missing:
            raise UsageError(
                f"no runs of group {', '.join(map(repr, missing))} in {runs_dir} (groups there: {', '.join(there)})"
            )
        return [run for g in groups for run in runs if run.group == g]
    by_id = {**{run.name: run for run in runs}, **{run.run_id: run for run in runs}}
    missing = [i for i in ids or [] if i not in by_id]
    if missing:
        shown = ", ".join(f"{run.name} ({run.run_id})" for run in runs[:10]) + (" ..." if len(runs) > 10 else "")
        raise UsageError(f"run(s) {', '.join(missing)} not found in {runs_dir} (runs there: {shown})")
    return list({by_id[i].run_id: by_id[i] for i in ids or []}.values())
