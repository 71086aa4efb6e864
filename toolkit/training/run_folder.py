"""Which run folder a training run writes, so that no finished run is ever overwritten.

* Without ``train.resume`` a run never reuses a folder that holds a run: when ``output.run_name``
  (or the timestamp name) is taken, it gets the next free ``NAME-2``, ``NAME-3`` and says so, the
  way Lightning numbers its versions. ``train.resume=auto`` is how to continue a named run.
* ``train.resume=auto`` without a name resumes the newest run in ``output.dir`` whose saved config
  equals this one (apart from the run name), never just the newest run, which may be another job's.
* A lock file names the process that writes the folder; a second live process is refused, a
  lock left by a dead process on this host is taken over.

The main process decides and tells the others, including an error, so that every rank stops
with the same one line instead of waiting at a barrier for a rank that already failed.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from accelerate.utils import broadcast_object_list

from toolkit.errors import UsageError, on_every_rank
from toolkit.config import Config, read_yaml_mapping, to_dict
from toolkit.fileio import TMP_PREFIX
from toolkit.formats import RunDir
from toolkit.redaction import redact_secrets
from toolkit.training.checkpoint import latest_checkpoint, list_checkpoints

# Config keys that may differ between a run and the one that resumes it (max_steps: a time slice, not the recipe).
NOT_COMPARED = (("output", "run_name"), ("train", "resume"), ("train", "max_steps"))


def resolve_run_dir(cfg: Config, accelerator) -> RunDir:
    """The run folder every process agrees on, created and locked by the main process."""
    decision: list = [None, None, None]  # name, note to print, error
    if accelerator.is_main_process:
        try:
            name, note = choose_run_name(cfg)
            prepare(RunDir(Path(cfg.output.dir) / name))
            decision = [name, note, None]
        except UsageError as err:
            decision = [None, None, str(err)]
    if accelerator.num_processes > 1:
        broadcast_object_list(decision, from_process=0)
    name, note, error = decision
    if error is not None:
        raise on_every_rank(UsageError(error))
    if note and accelerator.is_main_process:
        print(note, flush=True)
    cfg.output.run_name = name
    return RunDir(Path(cfg.output.dir) / name)


def choose_run_name(cfg: Config) -> tuple[str, Optional[str]]:
    """(name, what to tell the user about it)."""
    root, name = Path(cfg.output.dir), cfg.output.run_name
    if cfg.train.resume == "auto" and name is None:
        found = newest_matching_run(root, cfg)
        if found is not None:
            return found, f"train.resume=auto: resuming {root / found} (the newest run with this config)"
    if cfg.train.resume is not None and name is not None:
        return name, None  # continue the named run
    base = name or time.strftime("run-%Y%m%d-%H%M%S")
    free = next_free_name(root, base)
    if free != base and name is not None:
        return free, (f"output.run_name={name} already holds a run in {root / name}, which is kept; this run is "
                      f"{free} (to continue {name} instead, add train.resume=auto)")
    return free, None


def next_free_name(root: Path, base: str) -> str:
    name, version = base, 2
    while RunDir(root / name).holds_a_run():
        name, version = f"{base}-{version}", version + 1
    return name


def comparable(config: dict) -> dict:
    """A config as a resumed run would compare it: secrets redacted, NOT_COMPARED left out."""
    config = redact_secrets(config)
    for section, key in NOT_COMPARED:
        config.get(section, {}).pop(key, None)
    return config


def newest_matching_run(root: Path, cfg: Config) -> Optional[str]:
    """The newest run in ``root`` with a checkpoint and the same config (normalization resolved or not)."""
    wanted = comparable(to_dict(cfg))
    candidates = sorted((p.parent for p in root.glob("*/checkpoints") if list_checkpoints(p)),
                        key=lambda run: latest_checkpoint(run / "checkpoints").stat().st_mtime, reverse=True)
    for run in candidates:
        try:
            saved = comparable(read_yaml_mapping(RunDir(run).config))
        except (UsageError, OSError):
            continue
        if wanted["data"].get("mean") is None:  # training fills these in from the shards
            saved.get("data", {}).update(mean=None, std=None)
        if saved == wanted:
            return run.name
    return None


def prepare(run: RunDir) -> None:
    """Create the folder, check it is writable, lock it, and clear what a killed run left half-written."""
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        probe = run.root / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output folder {str(run.root)!r} is not writable ({err.strerror}); "
                         "set output.dir to a writable folder") from None
    lock(run)
    remove_stale_temporaries(run.root)


def holder_of(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def is_alive_here(holder: str) -> bool:
    """Whether ``host pid`` names a live process on this host (a lock of another host counts as live)."""
    host, _, pid = holder.partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return bool(holder)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock(run: RunDir) -> None:
    path = run.lock
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = holder_of(path)
            if holder == me:  # this process, e.g. an earlier run in the same Python session that failed
                return
            if is_alive_here(holder):
                raise UsageError(f"{run.root} is being written by another process ({holder}); wait for it, choose "
                                 f"another output.run_name, or delete {path} if that process is gone") from None
            path.unlink(missing_ok=True)  # left by a process that died: take it over
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me + "\n")
        return
    raise UsageError(f"cannot lock {run.root}: {path} keeps reappearing; is another run starting there?")


def unlock(run: RunDir) -> None:
    """Release our own lock (never another process's)."""
    path = run.lock
    if holder_of(path) == f"{socket.gethostname()} {os.getpid()}":
        try:
            path.unlink()
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise


def remove_stale_temporaries(folder: Path) -> None:
    """Delete what a killed run left half-written under temporary names (never read, only in the way)."""
    for stale in (*folder.glob(f"{TMP_PREFIX}*"), *folder.glob(f"*/{TMP_PREFIX}*"), *folder.glob(f"*/*/{TMP_PREFIX}*")):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
