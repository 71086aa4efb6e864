"""train.monitor and early stopping (issue 31, items 1-2), on planted val metrics: no training.

The sequences are chosen so that each monitor picks a different epoch, and so that Lightning's
EarlyStopping rule (its reference moves only on a gain > min_delta) differs from counting from the best model.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from toolkit.config import Config, OutputConfig, TrainConfig, resolve_monitor, to_dict
from toolkit.errors import UsageError
from toolkit.formats import HISTORY_FIELDS, MONITORS, EpochRow
from toolkit.training.monitor import check_resumed, new_state, record_epoch
from toolkit.training.run_folder import newest_matching_run
from toolkit.training.state import TrainerState

# epoch:            1     2     3     4     5
PLANTED = {
    "val_auc": [0.90, 0.97, 0.98, 0.96, 0.95],  # best at 3
    "val_acc": [0.50, 0.60, 0.55, 0.70, 0.65],  # best at 4
    "val_loss": [0.80, 0.40, 0.60, 0.50, 0.45],  # lowest at 2
    "val_balanced_acc": [0.40, 0.45, 0.50, 0.42, 0.52],  # best at 5
    "val_top5": [0.80, 0.90, 0.90, 0.85, 0.88],  # best at 2: a tie later is not better
}
EXPECTED_BEST = {"val_auc": 3, "val_acc": 4, "val_loss": 2, "val_balanced_acc": 5, "val_top5": 2}


def row(epoch: int, **values) -> EpochRow:
    base = dict(epoch=epoch, step=epoch * 8, lr=1e-3, train_loss=0.5, val_loss=0.5, val_acc=0.5, val_auc=0.5)
    base.update(img_per_s=1.0, data_wait_frac=0.0, epoch_seconds=1.0, peak_mem_gib=None)
    base.update(skipped_samples=0, val_skipped_samples=0)
    return EpochRow(**{**base, **values})


def planted_rows() -> list[EpochRow]:
    return [row(e + 1, **{name: seq[e] for name, seq in PLANTED.items()}) for e in range(5)]


def run_monitor(train: TrainConfig, rows: list[EpochRow]) -> tuple[TrainerState, list[int]]:
    """What the loop does per epoch: record, and stop once early stopping says so."""
    state, best_marks = new_state(train), []
    for r in rows:
        if record_epoch(state, r, train):
            best_marks.append(r.epoch)
        if state.stopped_early_at is not None:
            break
    return state, best_marks


def resolved(num_classes: int = 2, **train) -> TrainConfig:
    return resolve_monitor(TrainConfig(**train), num_classes)


@pytest.mark.parametrize("monitor", sorted(MONITORS))
def test_each_monitor_picks_its_own_best_epoch_on_planted_metrics(monitor):
    state, marks = run_monitor(resolved(37, monitor=monitor), planted_rows())
    assert state.best_epoch == EXPECTED_BEST[monitor]
    assert state.best_value == PLANTED[monitor][EXPECTED_BEST[monitor] - 1]
    assert marks[-1] == EXPECTED_BEST[monitor] and marks[0] == 1  # the "best" marker follows the monitor


def test_an_explicit_mode_overrides_the_metrics_own_direction():
    state, _ = run_monitor(resolved(monitor="val_loss", monitor_mode="max"), planted_rows())
    assert state.best_epoch == 1  # the highest loss


def test_auto_is_val_auc_for_two_classes_and_top1_for_more():
    assert (resolved(2).monitor, resolved(2).monitor_mode) == ("val_auc", "max")
    assert (resolved(37).monitor, resolved(37).monitor_mode) == ("val_acc", "max")
    assert resolved(3, monitor="val_loss").monitor_mode == "min"
    assert resolve_monitor(resolved(37), 37) == resolved(37)  # resolving twice changes nothing


def test_top5_is_refused_where_it_is_always_one():
    with pytest.raises(UsageError, match="val_top5 needs more than 5 classes"):
        resolved(5, monitor="val_top5")
    assert resolved(6, monitor="val_top5").monitor == "val_top5"


def test_every_monitor_is_a_metrics_column():
    assert set(MONITORS) <= set(HISTORY_FIELDS)


def test_an_undefined_value_is_never_best_and_counts_against_patience():
    rows = [row(1, val_auc=None), row(2, val_auc=0.7), row(3, val_auc=None), row(4, val_auc=None)]
    state, marks = run_monitor(resolved(monitor="val_auc", early_stop_patience=2), rows)
    assert marks == [2] and state.best_epoch == 2 and state.stopped_early_at == 4


def test_early_stopping_follows_lightning_min_delta_rule():
    # Lightning: the reference stays at 0.80 after 0.805 (gain 0.005 < 0.01); 0.812 beats 0.80 + 0.01 and resets.
    rows = [row(e + 1, val_acc=v) for e, v in enumerate([0.80, 0.805, 0.812, 0.815, 0.816, 0.9])]
    train = resolved(37, early_stop_patience=2, early_stop_min_delta=0.01)
    state, marks = run_monitor(train, rows)
    assert state.stopped_early_at == 5  # 0.815 and 0.816 do not beat 0.812 + 0.01
    assert marks == [1, 2, 3, 4, 5] and state.best_epoch == 5  # the best model still takes every strict gain
    assert (state.stop_best, state.stop_wait) == (0.812, 2)


def test_patience_zero_never_stops():
    rows = [row(e + 1, val_acc=0.5) for e in range(10)]
    state, marks = run_monitor(resolved(37), rows)
    assert state.stopped_early_at is None and marks == [1] and state.stop_wait == 0


def test_a_checkpoint_saved_before_monitors_existed_resumes_as_val_auc():
    legacy = {"epoch": 3, "batch_in_epoch": 0, "global_step": 24, "best_val_auc": 0.93, "best_epoch": 2}
    legacy |= {"epoch_loss_sum": 0.0, "epoch_loss_count": 0, "epoch_skipped": 0}
    state = TrainerState.from_saved(json.loads(json.dumps(legacy)))
    assert (state.monitor, state.monitor_mode, state.best_value, state.best_epoch) == ("val_auc", "max", 0.93, 2)
    check_resumed(state, resolved(2), "ckpt")  # a two-class config resolves to the same monitor
    fresh = TrainerState.from_saved({**legacy, "best_val_auc": -1.0, "best_epoch": -1})
    assert fresh.best_value is None and fresh.best_epoch == -1


def test_the_new_state_round_trips_through_its_json():
    state, _ = run_monitor(resolved(37, early_stop_patience=3), planted_rows())
    saved = json.loads(json.dumps(dataclasses.asdict(state)))
    assert TrainerState.from_saved(saved) == state


def test_resuming_with_another_monitor_is_one_clear_line():
    state = new_state(resolved(2))
    with pytest.raises(UsageError, match="resume with train.monitor=val_auc train.monitor_mode=max"):
        check_resumed(state, resolved(37), "runs/x/checkpoints/step-00000016")


def test_resume_auto_still_finds_a_run_saved_before_the_monitor_keys(tmp_path):
    """An unfinished run whose config.yaml predates train.monitor is the run a two-class config continues."""
    cfg = Config(train=resolved(2), output=OutputConfig(dir=str(tmp_path), run_name=None))
    saved = to_dict(cfg)
    for key in ("monitor", "monitor_mode", "early_stop_patience", "early_stop_min_delta"):
        del saved["train"][key]
    (tmp_path / "old" / "checkpoints" / "step-00000008").mkdir(parents=True)
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert newest_matching_run(tmp_path, cfg) == ("old", None)
    other = dataclasses.replace(cfg, train=resolved(2, monitor="val_loss"))
    assert newest_matching_run(tmp_path, other) == (None, None)  # it chose by val_auc: not this run
