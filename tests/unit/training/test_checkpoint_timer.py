"""train.checkpoint_every_minutes: when a step boundary saves a checkpoint, on an injected clock."""

from __future__ import annotations

import pytest

from toolkit.config import load_config, validate_config
from toolkit.training.state import CheckpointTimer, checkpoint_due


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_time_alone_decides_once_the_interval_has_passed():
    assert not checkpoint_due(7, 0, 59.9, 1.0)
    assert checkpoint_due(7, 0, 60.0, 1.0)
    assert checkpoint_due(7, 0, 3600.0, 1.0)
    assert not checkpoint_due(7, 0, 1e9, 0.0)  # 0: off, whatever the clock says


def test_steps_and_minutes_each_decide_alone():
    assert checkpoint_due(10, 5, 0.0, 1.0)  # every 5 steps, the clock not yet due
    assert not checkpoint_due(11, 5, 0.0, 1.0)
    assert checkpoint_due(11, 5, 90.0, 1.0)  # the clock due between step checkpoints
    assert not checkpoint_due(11, 0, 0.0, 0.0)


def test_the_timer_counts_from_its_start_and_restarts_at_each_checkpoint():
    clock = FakeClock()
    timer = CheckpointTimer(clock)
    clock.now += 59.0
    assert timer.elapsed_s() == 59.0 and not checkpoint_due(3, 0, timer.elapsed_s(), 1.0)
    clock.now += 2.0
    assert checkpoint_due(3, 0, timer.elapsed_s(), 1.0)
    timer.restart()  # the checkpoint was saved (or the run resumed): a new interval
    assert timer.elapsed_s() == 0.0
    clock.now += 30.0
    assert not checkpoint_due(4, 0, timer.elapsed_s(), 1.0)


def test_the_key_is_a_non_negative_number_of_minutes():
    cfg = validate_config(load_config(None, ["train.checkpoint_every_minutes=0.5"]))
    assert cfg.train.checkpoint_every_minutes == 0.5
    assert validate_config(load_config(None, [])).train.checkpoint_every_minutes == 0
    with pytest.raises(Exception, match="train.checkpoint_every_minutes"):
        validate_config(load_config(None, ["train.checkpoint_every_minutes=-1"]))
