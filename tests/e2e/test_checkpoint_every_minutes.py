"""train.checkpoint_every_minutes on 2 processes: mid-epoch checkpoints, every rank deciding alike.

The ranks' clocks are injected (no timed asserts): rank 1's clock jumps 1000 s per reading, rank 0's
stands still. The loop decides on the slowest rank's clock, so both ranks checkpoint at every step
boundary together; a rank deciding by its own clock would checkpoint alone and the run would hang
or fail in the next collective.
"""

from __future__ import annotations

import pytest
from slurm_cluster import free_port

from helpers import LAUNCH_2, ROOT, kill_tree, pack_tiny, start, train_args, wait_for
from toolkit.training.checkpoint import checkpoint_step, list_checkpoints

TIMEOUT_S = 120
SKEWED_CLOCKS = r"""
import itertools, os, sys
sys.path.insert(0, {root!r})
from toolkit.training import state

readings = itertools.count()
state.CheckpointTimer.__init__.__defaults__ = (
    (lambda: 1000.0 * next(readings)) if os.environ["RANK"] == "1" else (lambda: 0.0),
)
from toolkit.cli import run_cli
from toolkit.train import main
run_cli(main, sys.argv[1:])
"""


@pytest.mark.timeout(TIMEOUT_S + 30)
def test_a_time_interval_writes_mid_epoch_checkpoints_decided_alike_on_two_processes(tmp_path):
    shards = pack_tiny(tmp_path)
    driver = tmp_path / "skewed_clocks.py"
    driver.write_text(SKEWED_CLOCKS.format(root=str(ROOT)))
    # 64 train images, 2 ranks x batch 4: 8 steps in the one epoch; no checkpoints by steps or epochs
    args = train_args(
        shards,
        tmp_path,
        "timed",
        "train.epochs=1",
        "train.batch_size=4",
        "train.checkpoint_every_steps=0",
        "train.checkpoint_every_epochs=0",
        "train.checkpoint_every_minutes=1",
        "train.keep_checkpoints=100",
        "eval.test_split=null",
    )
    proc = start([*LAUNCH_2, "--main_process_port", str(free_port()), str(driver), *args])
    try:
        _, err = wait_for(proc, TIMEOUT_S)  # a rank checkpointing alone would hang here
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, err[-3000:]
    steps = [checkpoint_step(p) for p in list_checkpoints(tmp_path / "timed" / "checkpoints")]
    assert steps == list(range(1, 9)), steps  # 1..7 mid-epoch, 8 at the epoch's end
