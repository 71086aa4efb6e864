"""Which run folder a training run writes and which checkpoint it resumes: decided once, followed by every rank.

* Without ``train.resume`` a run never reuses a folder that holds a run or a lock: when
  ``output.run_name`` (or the timestamp name) is taken, it gets the next free ``NAME-2``,
  ``NAME-3`` and says so, the way Lightning numbers its versions. Choosing the name and taking its
  lock are one atomic step, so two jobs started together get ``NAME`` and ``NAME-2``.
* ``train.resume=auto`` without a name resumes the newest unfinished run in ``output.dir`` whose
  saved config equals this one (apart from the run name); a finished run (``final.json``) is never
  adopted: that is said, and a new run starts.
* ``RUN/.lock`` is a lease (``toolkit.training.run_lock``): a live writer anywhere is refused, a
  dead one's lock is taken over (at once on its own host or by its own requeued SLURM job, else
  after ``output.lock_expiry_s``).

The main process decides all of it (folder, resume or not, which checkpoint) and broadcasts the
decision, including an error, so that every rank stops with the same one line instead of waiting
at a barrier. Every rank then checks that it sees the folder the main process locked (the lock's
token): on node-local disks ranks would otherwise resume from different states.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from accelerate.utils import broadcast_object_list, gather_object

from toolkit.config import Config, to_dict
from toolkit.errors import UsageError, on_every_rank
from toolkit.fileio import TMP_PREFIX, read_yaml_mapping
from toolkit.formats import RunDir, versioned_name
from toolkit.formats.sample_order import SampleOrder
from toolkit.redaction import redact_secrets
from toolkit.training.checkpoint import checkpoint_step, latest_checkpoint, list_checkpoints
from toolkit.training.ranks import any_process
from toolkit.training.run_lock import RunLock, describe, read_record
from toolkit.training.state import TRAINER_STATE, TrainingError, saved_order

# Config keys that may differ between a run and the one that resumes it (max_steps: a time slice, not the recipe).
NOT_COMPARED = (
    ("output", "run_name"),
    ("output", "lock_expiry_s"),
    ("output", "shared_wait_s"),
    ("train", "resume"),
    ("train", "max_steps"),
    ("train", "record_sample_keys"),
    # how to read and how long to wait, not the recipe
    ("data", "retry_deadline_s"),
    ("data", "read_block_kib"),
    ("train", "collective_timeout_s"),
    # derived from the process count, or part of the sample order, which the checkpoint records and checks
    ("train", "grad_accum_steps"),
    ("train", "global_batch_size"),
    ("train", "streams"),
)
# What a run saved before these keys existed trained with: its config.yaml lacks them, and means these values.
BEFORE_KEYS = {
    ("train", "monitor"): "val_auc",
    ("train", "monitor_mode"): "max",
    ("train", "early_stop_patience"): 0,
    ("train", "early_stop_min_delta"): 0.0,
    ("train", "class_weights"): "none",
    ("train", "mixup_alpha"): 0.0,
    ("train", "cutmix_alpha"): 0.0,
    ("train", "cutmix_minmax"): None,
    ("train", "mix_prob"): 1.0,
    ("train", "mix_switch_prob"): 0.5,
    ("train", "checkpoint_every_minutes"): 0.0,
    ("data", "endpoint_url"): None,
    ("eval", "tta"): "none",
    ("tracking", "tensorboard"): False,
}
ABANDONED_PREFIX = "abandoned-"
MAX_VERSIONS = 10_000

_held: dict[Path, RunLock] = {}  # the locks this process holds, by run folder


def resolve_run_dir(cfg: Config, accelerator, order: SampleOrder) -> tuple[RunDir, Optional[Path]]:
    """(the run folder, the checkpoint to resume or None): the main process's decision, on every rank."""
    decision: list = [None, None, None, None, None]  # name, note, error, checkpoint, lock token
    if accelerator.is_main_process:
        decision = decide(cfg, accelerator.num_processes, order)
    if accelerator.num_processes > 1:
        broadcast_object_list(decision, from_process=0)
    name, note, error, checkpoint, token = decision
    if error is not None:
        raise on_every_rank(UsageError(error))
    run = RunDir(Path(cfg.output.dir) / name)
    if accelerator.num_processes > 1:
        try:
            check_every_rank_sees(run, token, cfg, accelerator)
        except UsageError:
            if accelerator.is_main_process:
                unlock(run)
            raise
    if note and accelerator.is_main_process:
        print(note, flush=True)
    return run, Path(checkpoint) if checkpoint else None


def decide(cfg: Config, world: int, order: SampleOrder) -> list:
    """[name, note, error, checkpoint, token] as the main process decides them; the folder is locked."""
    try:
        run, notes = claim_run(cfg)
    except UsageError as err:
        return [None, None, str(err), None, None]
    try:
        checkpoint = resume_checkpoint(cfg, run)
        if checkpoint is not None:
            check_resume_order(checkpoint, world, order)
            notes += set_aside_later_checkpoints(run, checkpoint)
    except UsageError as err:
        unlock(run)
        return [None, None, str(err), None, None]
    return [
        run.root.name,
        "\n".join(notes) or None,
        None,
        str(checkpoint) if checkpoint else None,
        _held[run.root].token,
    ]


def claim_run(cfg: Config) -> tuple[RunDir, list[str]]:
    """The run folder, created if new and locked; plus what to tell the user about the choice."""
    root, name = Path(cfg.output.dir), cfg.output.run_name
    notes: list[str] = []
    if cfg.train.resume == "auto" and name is None:
        found, finished = newest_matching_run(root, cfg)
        if finished and not found:
            notes.append(
                f"train.resume=auto: {root / finished} has this config but finished (final.json); "
                "a finished run is not resumed, so this is a new run"
            )
        if found is not None:
            run = take_existing(RunDir(root / found), cfg)
            return run, notes + [f"train.resume=auto: resuming {run.root} (the newest unfinished run with this config)"]
    if cfg.train.resume is not None and name is not None:
        return take_existing(RunDir(root / name), cfg), notes  # continue the named run
    base = name or time.strftime("run-%Y%m%d-%H%M%S")
    run = create_new(root, base, cfg.output.lock_expiry_s)
    if run.root.name != base and name is not None:
        notes.append(
            f"output.run_name={name} already holds a run in {root / name}, which is kept; this run is "
            f"{run.root.name} (to continue {name} instead, add train.resume=auto)"
        )
    return run, notes


def not_writable(folder: Path, err: OSError) -> UsageError:
    return UsageError(
        f"output folder {str(folder)!r} is not writable ({err.strerror or err}); set output.dir to a writable folder"
    )


def create_new(root: Path, base: str, expiry_s: float) -> RunDir:
    """The first of ``base``, ``base-2``, ... that holds no run and no lock, created and locked in one step."""
    for version in range(1, MAX_VERSIONS):
        run = RunDir(root / versioned_name(base, version))
        if run.holds_a_run() or run.lock.exists():
            continue
        lock = RunLock(run.lock, expiry_s)
        try:
            run.root.mkdir(parents=True, exist_ok=True)
            created = lock.create()
        except OSError as err:
            raise not_writable(run.root, err) from None
        if not created:
            continue  # another job took this name a moment ago
        if run.holds_a_run():  # a run finished here between the check and the lock
            lock.release()
            continue
        hold(run, lock)
        return run
    raise UsageError(f"{root}: {base} and {MAX_VERSIONS} versions of it are taken; choose another output.run_name")


def take_existing(run: RunDir, cfg: Config) -> RunDir:
    """Lock a run to continue it (created when it does not exist yet); a live writer is refused."""
    lock = RunLock(run.lock, cfg.output.lock_expiry_s)
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        holder = lock.acquire()
    except OSError as err:
        raise not_writable(run.root, err) from None
    if holder is not None:
        raise UsageError(
            f"{run.root} is being written by another process ({describe(holder)}); wait for it, choose "
            f"another output.run_name, or, if that process is gone, wait output.lock_expiry_s="
            f"{cfg.output.lock_expiry_s:g} s after its last heartbeat or delete {run.lock}"
        )
    hold(run, lock)
    return run


def hold(run: RunDir, lock: RunLock) -> None:
    """Clear what a killed run left half-written, then keep renewing the lock until ``unlock``."""
    _held[run.root] = lock
    remove_stale_temporaries(run.root)
    lock.start_renewing()


def lease_lost(run: RunDir) -> Optional[str]:
    """Why this process no longer holds ``run``'s lease (None: it does, or it holds no lock on it)."""
    lock = _held.get(run.root)
    return lock.lost() if lock is not None else None


def keep_lease(accelerator, run: RunDir, run_name: str) -> None:
    """Stop, on every rank, when the main process lost ``run``'s lease (``run_lock``): another process
    may own the run now, and two writers would prune each other's checkpoints (all ranks call)."""
    why = lease_lost(run) if accelerator.is_main_process else None
    if any_process(accelerator, why is not None):
        raise on_every_rank(
            TrainingError(
                f"lost the lease on {run.root} ({why}); stopped without writing to it again. If no other "
                f"process trains there, resume with the same command plus train.resume=auto output.run_name={run_name}"
            )
        )


def unlock(run: RunDir) -> None:
    """Release this process's lock on ``run`` (never another process's)."""
    lock = _held.pop(run.root, None)
    if lock is not None:
        lock.release()


def comparable(config: dict) -> dict:
    """A config as a resumed run would compare it: secrets redacted, NOT_COMPARED left out."""
    config = redact_secrets(config)
    for section, key in NOT_COMPARED:
        config.get(section, {}).pop(key, None)
    return config


def with_keys_before_they_existed(config: dict) -> dict:
    """A saved config with the keys added since filled in as the run behaved (``BEFORE_KEYS``), so an older
    run still equals the config that would continue it."""
    for (section, key), value in BEFORE_KEYS.items():
        if isinstance(config.get(section), dict):
            config[section].setdefault(key, value)
    return config


def newest_matching_run(root: Path, cfg: Config) -> tuple[Optional[str], Optional[str]]:
    """(newest unfinished run in ``root`` with a checkpoint and this config, newest finished one passed over)."""
    wanted = comparable(to_dict(cfg))
    candidates = sorted(
        (p.parent for p in root.glob("*/checkpoints") if list_checkpoints(p)),
        key=lambda run: latest_checkpoint(run / "checkpoints").stat().st_mtime,
        reverse=True,
    )
    finished = None
    for run in candidates:
        try:
            saved = comparable(with_keys_before_they_existed(read_yaml_mapping(RunDir(run).config)))
        except (UsageError, OSError):
            continue
        if saved != wanted:
            continue
        if RunDir(run).final.exists():
            finished = finished or run.name
            continue
        return run.name, finished
    return None, finished


# ---------------------------------------------------------------------------------------------
# Which checkpoint, and whether it fits this run


def resume_checkpoint(cfg: Config, run: RunDir) -> Optional[Path]:
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        return latest_checkpoint(run.checkpoints)
    return Path(cfg.train.resume)


def saved_process_count(checkpoint: Path) -> Optional[int]:
    try:
        count = json.loads((checkpoint / TRAINER_STATE).read_text()).get("num_processes")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: loading the checkpoint says so, in one line
    return count if isinstance(count, int) else None


def check_resume_order(checkpoint: Path, world: int, order: SampleOrder) -> None:
    """Resume only with the sample order the checkpoint recorded (then on any valid process count);
    a checkpoint that recorded none (older toolkits) only on its own process count."""
    saved = saved_order(checkpoint)
    if saved is None:
        check_process_count(checkpoint, world)
        return
    problem = order.mismatch(saved)
    if problem is not None:
        raise UsageError(
            f"cannot resume {checkpoint}: {problem}; the sample order must stay the same, so set it back "
            "(or start a new run)"
        )


def check_process_count(checkpoint: Path, world: int) -> None:
    """Refuse to resume a checkpoint without a recorded sample order on another number of processes
    (its data split and position depend on it)."""
    saved = saved_process_count(checkpoint)
    if saved is not None and saved != world:
        raise UsageError(
            f"{checkpoint} was saved by {saved} process(es) but this run has {world}; it records "
            f"no sample order (written by a toolkit before train.global_batch_size), so each rank's place in the "
            f"data depends on the process count: launch {saved} process(es), or start a new run"
        )


def set_aside_later_checkpoints(run: RunDir, checkpoint: Path) -> list[str]:
    """Rename this run's checkpoints after ``checkpoint`` to ``abandoned-step-*``: that future is not resumed.

    Otherwise pruning (by step) would delete the checkpoints of the new line first and
    ``resume=auto`` would later pick the abandoned future. Renamed, not deleted: they stay for the user.
    """
    step = checkpoint_step(checkpoint)
    later = [p for p in list_checkpoints(run.checkpoints) if step is not None and checkpoint_step(p) > step]
    for path in later:
        target = path.with_name(ABANDONED_PREFIX + path.name)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(path, target)
    if not later:
        return []
    return [
        f"resuming {checkpoint.name}: the later checkpoint(s) {', '.join(p.name for p in later)} of this run are "
        f"an abandoned future; renamed to {ABANDONED_PREFIX}* (never resumed or pruned; delete them when done)"
    ]


# ---------------------------------------------------------------------------------------------
# Every rank sees the same folder


def sees_token(run: RunDir, token: str, wait_s: float) -> bool:
    """Whether this process reads ``token`` in the run's lock, retrying for ``wait_s`` (NFS caches)."""
    deadline = time.monotonic() + wait_s
    while True:
        record = read_record(run.lock) if run.root.is_dir() else None
        if record is not None and record.get("token") == token:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def check_every_rank_sees(run: RunDir, token: str, cfg: Config, accelerator) -> None:
    """One line on every rank when some rank does not see the run folder the main process locked."""
    seen = sees_token(run, token, cfg.output.shared_wait_s)
    results = gather_object([(accelerator.process_index, socket.gethostname(), seen)])
    blind = [f"rank {rank} on {host}" for rank, host, ok in results if not ok]
    if blind:
        raise on_every_rank(
            UsageError(
                f"output.dir={cfg.output.dir} is not shared by every process: {', '.join(blind)} cannot see {run.root} "
                f"that rank 0 created (waited {cfg.output.shared_wait_s:g} s); put output.dir on storage every node "
                "mounts (NFS, Lustre, ...)"
            )
        )


def remove_stale_temporaries(folder: Path) -> None:
    """Delete what a killed run left half-written under temporary names (never read, only in the way)."""
    for stale in (*folder.glob(f"{TMP_PREFIX}*"), *folder.glob(f"*/{TMP_PREFIX}*"), *folder.glob(f"*/*/{TMP_PREFIX}*")):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
