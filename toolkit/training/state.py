"""Where a training run is, and how it survives a stop: the loop's state, its checkpoints, stop signals.

The loop position is saved as JSON and the EMA weights as safetensors next to Accelerate's own
checkpoint files, so resuming never unpickles anything of ours; Accelerate's pickles (optimizer,
RNG) are read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import signal
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from safetensors.torch import load_file, save_file

from toolkit.errors import UsageError
from toolkit.fileio import TMP_PREFIX, atomic_write_json, fsync_dir
from toolkit.formats import RunDir
from toolkit.training.checkpoint import save_checkpoint
from toolkit.training.norm_slots import NormSlots

TRAINER_STATE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
BEST_MODEL_FILE = "best_model.safetensors"  # RUN/model.safetensors as it was at this checkpoint
RANK_BUFFERS = "buffers_rank{rank}.safetensors"  # each rank's BatchNorm statistics, as toolkits before slots saved them


class TrainingError(Exception):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainerState:
    """Where the loop is: saved with every checkpoint, so a resumed run continues exactly here."""

    epoch: int = 0  # current epoch, 0-based
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    global_step: int = 0  # optimizer steps taken
    monitor: str = "val_auc"  # train.monitor and its mode as resolved: what best_value means
    monitor_mode: str = "max"
    best_value: Optional[float] = None  # the monitor at best_epoch (None: no finite value yet)
    best_epoch: int = -1  # 1-based epoch of RUN/model.safetensors
    stop_best: Optional[float] = None  # early stopping's reference: moves only on a gain > early_stop_min_delta
    stop_wait: int = 0  # validations since stop_best last moved (early stopping's patience count)
    stopped_early_at: Optional[int] = None  # 1-based epoch early stopping ended training after
    epoch_loss_sum: float = 0.0  # partial sums of the current epoch, for mid-epoch resume
    epoch_loss_count: int = 0
    epoch_skipped: int = 0

    def start_next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_loss_sum, self.epoch_loss_count, self.epoch_skipped = 0.0, 0, 0

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainerState":
        """The state of a checkpoint's ``trainer_state.json``, also one saved before ``train.monitor``
        existed: its ``best_val_auc`` (-1: none yet) was the best value of a val_auc monitor."""
        saved = dict(saved)
        legacy = saved.pop("best_val_auc", None)
        if "best_value" not in saved:
            has_best = legacy is not None and saved.get("best_epoch", -1) >= 1
            saved.update(monitor="val_auc", monitor_mode="max", best_value=float(legacy) if has_best else None)
        return cls(**saved)


class CheckpointTimer:
    """Wall-clock seconds since the last checkpoint, or since this process started or resumed.

    Each rank reads its own clock; the loop decides on the largest reading over the ranks
    (``ranks.agreed_max``), so every rank checkpoints at the same step. ``clock`` is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.since = clock()

    def restart(self) -> None:
        self.since = self.clock()

    def elapsed_s(self) -> float:
        return self.clock() - self.since


def checkpoint_due(global_step: int, every_steps: int, elapsed_s: float, every_minutes: float) -> bool:
    """Whether a step boundary saves a checkpoint: every N steps, or ``every_minutes`` after the last one.

    ``elapsed_s`` must be the same number on every rank (the maximum over ranks): one rank deciding by
    its own clock would checkpoint alone and leave the others waiting in the next collective.
    """
    by_steps = bool(every_steps) and global_step % every_steps == 0
    by_time = every_minutes > 0 and elapsed_s >= every_minutes * 60.0
    return by_steps or by_time


class StopRequested:
    """SIGTERM / Ctrl-C: finish the current step, save a checkpoint, exit cleanly.

    A scheduler signals every process of a job, and launchers forward signals again, so SIGTERM
    may arrive several times: it never means more than "checkpoint and stop". Only a second
    Ctrl-C, at least ``SECOND_INTERRUPT_S`` after the first (a person, not a launcher forwarding
    it), stops at once without a checkpoint.
    """

    SECOND_INTERRUPT_S = 1.0

    def __init__(self) -> None:
        self.requested = False
        self.signum: Optional[int] = None
        self._first_interrupt: Optional[float] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequested":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._first_interrupt is not None and now - self._first_interrupt >= self.SECOND_INTERRUPT_S:
                raise KeyboardInterrupt
            self._first_interrupt = self._first_interrupt or now
        if not self.requested:
            self.requested, self.signum = True, signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            if self.requested and sig == signal.SIGTERM:
                continue  # leaving to save the checkpoint: a repeated TERM (srun, a launcher) must not cut it short
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Checkpoints of the whole training state


def save_training_state(
    accelerator,
    run: RunDir,
    state: TrainerState,
    scheduler,
    ema,
    keep: int,
    norms: Optional[NormSlots] = None,
    order: Optional[dict] = None,
) -> Path:
    """Full state for resuming: Accelerate's (model, optimizer, scaler, RNG) + ours as JSON/safetensors.

    With several micro-batches per step each rank also saves its BatchNorm slots (``norm_slots``): they
    differ until the next validation merges them, and Accelerate keeps rank 0's model buffers only. ``order`` is the run's sample order (``formats.sample_order``) with the global position in it, which
    lets the checkpoint continue on another process count.
    """

    def extras(folder: Path) -> None:
        atomic_write_json(
            folder / TRAINER_STATE,
            {
                "trainer": dataclasses.asdict(state),
                "scheduler": _scheduler_state(scheduler),
                "num_processes": accelerator.num_processes,
                **({"order": order} if order is not None else {}),
            },
        )
        if run.model.exists():
            link_or_copy(run.model, folder / BEST_MODEL_FILE)
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(folder / EMA_FILE))

    per_rank = norms.save if norms is not None and norms.total > 1 else None
    return save_checkpoint(
        accelerator, run.checkpoints, state.global_step, keep, write_extras=extras, write_rank_extras=per_rank
    )


def saved_order(checkpoint: Path) -> Optional[dict]:
    """The sample order and position a checkpoint recorded; None when it has none (written before they
    were recorded) or cannot be read (loading it then says why, in one line)."""
    try:
        order = json.loads((Path(checkpoint) / TRAINER_STATE).read_text()).get("order")
    except (OSError, ValueError, AttributeError):
        return None
    return order if isinstance(order, dict) else None


def _scheduler_state(scheduler) -> dict:
    return {
        "last_epoch": scheduler.last_epoch,
        "_step_count": scheduler._step_count,
        "base_lrs": list(scheduler.base_lrs),
        "_last_lr": list(scheduler.get_last_lr()),
    }


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside reads tensors only, whatever its caller asks.

    Accelerate's pickles (optimizer, RNG, fp16 scaler) are then safe to read from a checkpoint of
    unknown origin on any torch and Accelerate version: one that asks for ``weights_only=False``
    gets a refusal, not an execution.
    """
    real_load = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = real_load


def load_training_state(accelerator, folder: Path, scheduler, ema, norms: Optional[NormSlots] = None) -> TrainerState:
    try:  # pickles (optimizer, RNG, scaler) are read with weights_only=True: a foreign one fails here, unexecuted
        with weights_only_loads():
            accelerator.load_state(str(folder))
        saved = json.loads((folder / TRAINER_STATE).read_text())
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError) as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        if isinstance(err, pickle.UnpicklingError):
            detail = "a pickled file in it holds more than tensors and was refused unread"
        raise UsageError(
            f"cannot resume from {str(folder)!r} ({type(err).__name__}: {detail}); pass another checkpoint "
            "folder as train.resume, or move this one away to resume from the one before"
        ) from None
    sched = saved["scheduler"]
    scheduler.last_epoch = sched["last_epoch"]
    scheduler._step_count = sched["_step_count"]
    scheduler.base_lrs = sched["base_lrs"]
    scheduler._last_lr = sched["_last_lr"]
    for group, lr in zip(scheduler.optimizer.param_groups, sched["_last_lr"]):
        group["lr"] = lr
    if ema is not None:
        ema.load_state_dict(load_file(str(folder / EMA_FILE)))
    if norms is not None:
        restore_norm_statistics(folder, norms, accelerator.process_index)
    return TrainerState.from_saved(saved["trainer"])


def restore_norm_statistics(folder: Path, norms: NormSlots, rank: int) -> None:
    """Each slot's BatchNorm statistics as the checkpoint saved them; a checkpoint of a toolkit before slots
    (same process count only) saved one set per rank, and one of a single process none beyond the model's."""
    if norms.restore(folder):
        return
    legacy = folder / RANK_BUFFERS.format(rank=rank)
    norms.restore_all(load_file(str(legacy)) if legacy.exists() else {n: b.clone() for n, b in norms.buffers.items()})


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` with ``source``'s bytes: a hard link (free; model files are replaced, never changed in place)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def restore_best_model(run: RunDir, checkpoint: Path, state: TrainerState) -> None:
    """Put back ``RUN/model.safetensors`` as it was at ``checkpoint``, so the best model agrees with ``state``.

    The model file is written before the checkpoint of its epoch; a run killed in between left a
    model the resumed run knows nothing of (its ``best_epoch`` is older). Checkpoints of older
    toolkit versions hold no copy: then the file is left as it is.
    """
    saved = checkpoint / BEST_MODEL_FILE
    if saved.exists():
        tmp = run.model.with_name(f"{TMP_PREFIX}{run.model.name}.restore")
        tmp.unlink(missing_ok=True)
        link_or_copy(saved, tmp)
        os.replace(tmp, run.model)
        fsync_dir(run.root)
    elif state.best_epoch < 0:  # no best model yet at this checkpoint: one found now is from a killed future
        run.model.unlink(missing_ok=True)
