"""Which epoch is best, and when to stop: ``train.monitor`` and early stopping on it.

The best model is the epoch whose monitored val metric is strictly better than every earlier one
(Lightning's ``ModelCheckpoint(monitor=, mode=)``, timm's ``--eval-metric``). Early stopping
follows Lightning's ``EarlyStopping(patience=, min_delta=)``: its own reference value moves only on a
gain larger than ``min_delta``, and training ends after ``patience`` validations without one.

Every rank decides from the same numbers: ``evaluate_split`` gathers the val predictions and gives
every process the identical merged result; the loop then takes the main process's stop decision on
every rank (``ranks.main_process_value``), so no rank can stop alone. The counts live in
``TrainerState`` and are checkpointed, so a resumed run keeps its patience.
"""

from __future__ import annotations

import math
from typing import Optional

from toolkit.config import TrainConfig
from toolkit.errors import UsageError
from toolkit.evaluation.metrics import format_number
from toolkit.formats import EpochRow
from toolkit.training.state import TrainerState


def monitor_value(row: EpochRow, name: str) -> Optional[float]:
    """The monitored column of an epoch's row; None when undefined (a one-class val split's AUC, NaN)."""
    value = getattr(row, name)
    return float(value) if value is not None and math.isfinite(value) else None


def better(value: Optional[float], reference: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``reference`` by more than ``min_delta`` in ``mode`` (anything beats None)."""
    if value is None:
        return False
    if reference is None:
        return True
    return value > reference + min_delta if mode == "max" else value < reference - min_delta


def new_state(train: TrainConfig) -> TrainerState:
    """A fresh run's state, remembering which (resolved) monitor its best value is of."""
    return TrainerState(monitor=train.monitor, monitor_mode=train.monitor_mode)


def check_resumed(state: TrainerState, train: TrainConfig, checkpoint: str) -> None:
    """A resumed run compares new epochs with the checkpoint's best: the monitor must be the same."""
    if (state.monitor, state.monitor_mode) != (train.monitor, train.monitor_mode):
        raise UsageError(
            f"{checkpoint} chose its best epoch by {state.monitor} ({state.monitor_mode}), this config by "
            f"{train.monitor} ({train.monitor_mode}); resume with train.monitor={state.monitor} "
            f"train.monitor_mode={state.monitor_mode}, or start a new run"
        )


def record_epoch(state: TrainerState, row: EpochRow, train: TrainConfig) -> bool:
    """Take an epoch's val metrics into ``state``; True when it is the new best model.

    Sets ``state.stopped_early_at`` when early stopping's patience has run out at this epoch.
    """
    value = monitor_value(row, train.monitor)
    improved = better(value, state.best_value, train.monitor_mode)
    if improved:
        state.best_value, state.best_epoch = value, row.epoch
    if train.early_stop_patience:
        if better(value, state.stop_best, train.monitor_mode, train.early_stop_min_delta):
            state.stop_best, state.stop_wait = value, 0
        else:
            state.stop_wait += 1
        if state.stop_wait >= train.early_stop_patience:
            state.stopped_early_at = row.epoch
    return improved


def early_stop_line(state: TrainerState, train: TrainConfig) -> str:
    """What the log says when early stopping ends a run."""
    return (
        f"early stopping: {train.monitor} did not improve by more than {train.early_stop_min_delta:g} in "
        f"{state.stop_wait} validation(s) (train.early_stop_patience={train.early_stop_patience}); "
        f"stopped early at epoch {state.stopped_early_at}, best at {state.best_epoch} "
        f"({train.monitor} {format_number(state.best_value)})"
    )


def final_fields(state: TrainerState, train: TrainConfig) -> dict:
    """The monitor's and early stopping's part of final.json (and of the W&B summary)."""
    return {
        "monitor": state.monitor,
        "monitor_mode": state.monitor_mode,
        "best_value": state.best_value,
        "best_epoch": state.best_epoch,
        "early_stop": {
            "patience": train.early_stop_patience,
            "min_delta": train.early_stop_min_delta,
            "stopped_at_epoch": state.stopped_early_at,
        },
    }
