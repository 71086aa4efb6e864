"""Where a training run is, and how it survives a stop: the loop's state, its checkpoints, stop signals.

The loop position is saved as JSON and the EMA weights as safetensors next to Accelerate's own
checkpoint files, so resuming never unpickles anything of ours; Accelerate's pickles (optimizer,
RNG) are read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import signal
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors.torch import load_file, save_file

from toolkit.errors import UsageError
from toolkit.config import Config
from toolkit.fileio import atomic_write_json
from toolkit.formats import RunDir
from toolkit.training.checkpoint import latest_checkpoint, save_checkpoint

TRAINER_STATE = "trainer_state.json"
EMA_FILE = "ema.safetensors"


class TrainingError(Exception):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainerState:
    """Where the loop is: saved with every checkpoint, so a resumed run continues exactly here."""

    epoch: int = 0  # current epoch, 0-based
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    global_step: int = 0  # optimizer steps taken
    best_val_auc: float = -1.0
    best_epoch: int = -1
    epoch_loss_sum: float = 0.0  # partial sums of the current epoch, for mid-epoch resume
    epoch_loss_count: int = 0
    epoch_skipped: int = 0

    def start_next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_loss_sum, self.epoch_loss_count, self.epoch_skipped = 0.0, 0, 0


class StopRequested:
    """SIGTERM / Ctrl-C: finish the current step, save a checkpoint, exit cleanly (a second signal stops now)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequested":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Checkpoints of the whole training state


def save_training_state(accelerator, run: RunDir, state: TrainerState, scheduler, ema, keep: int) -> Path:
    """Full state for resuming: Accelerate's (model, optimizer, scaler, RNG) + ours as JSON/safetensors."""

    def extras(folder: Path) -> None:
        atomic_write_json(folder / TRAINER_STATE, {"trainer": dataclasses.asdict(state),
                                                    "scheduler": _scheduler_state(scheduler)})
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(folder / EMA_FILE))

    return save_checkpoint(accelerator, run.checkpoints, state.global_step, keep, write_extras=extras)


def _scheduler_state(scheduler) -> dict:
    return {"last_epoch": scheduler.last_epoch, "_step_count": scheduler._step_count,
            "base_lrs": list(scheduler.base_lrs), "_last_lr": list(scheduler.get_last_lr())}


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


def load_training_state(accelerator, folder: Path, scheduler, ema) -> TrainerState:
    try:  # pickles (optimizer, RNG, scaler) are read with weights_only=True: a foreign one fails here, unexecuted
        with weights_only_loads():
            accelerator.load_state(str(folder))
        saved = json.loads((folder / TRAINER_STATE).read_text())
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError) as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        if isinstance(err, pickle.UnpicklingError):
            detail = "a pickled file in it holds more than tensors and was refused unread"
        raise UsageError(f"cannot resume from {str(folder)!r} ({type(err).__name__}: {detail}); pass another checkpoint "
                         "folder as train.resume, or move this one away to resume from the one before") from None
    sched = saved["scheduler"]
    scheduler.last_epoch = sched["last_epoch"]
    scheduler._step_count = sched["_step_count"]
    scheduler.base_lrs = sched["base_lrs"]
    scheduler._last_lr = sched["_last_lr"]
    for group, lr in zip(scheduler.optimizer.param_groups, sched["_last_lr"]):
        group["lr"] = lr
    if ema is not None:
        ema.load_state_dict(load_file(str(folder / EMA_FILE)))
    return TrainerState(**saved["trainer"])


def find_resume_checkpoint(cfg: Config, run: RunDir) -> Optional[Path]:
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        return latest_checkpoint(run.checkpoints)
    return Path(cfg.train.resume)
