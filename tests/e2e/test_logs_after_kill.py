"""Step logs after a SIGKILL between checkpoints and a resume: steps.csv, TensorBoard's event files and the
offline W&B history each hold every step once, with the values of the run that finished it.

One run: 8 epochs of 32 steps (batch size 2), a checkpoint every fourth epoch, a row every step; the process
kills itself (SIGKILL: no handler runs) a second after writing step 250's row, so steps 129..250 were logged by
a run that never finished them. ``train.resume=auto`` then redoes them from the step-128 checkpoint. So many
rows, because W&B writes its offline file in 32 KiB blocks (about 60 rows) and a killed run keeps only its
whole blocks: without holding rows back, the killed part would keep rows past the checkpoint.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys

import pytest

from helpers import ENV, ROOT, pack_tiny, train_args, wait_for
from toolkit.formats import RunDir
from toolkit.reporting.wandb_runs import load_run, read_history

pytestmark = pytest.mark.slow

KILL_AFTER_STEP = 250  # between the checkpoints at steps 128 and 256
STEPS = list(range(1, 257))

# toolkit.train that SIGKILLs itself a second after steps.csv gets the row of KILL_AFTER_STEP
DRIVER = r"""
import os, signal, sys, time
sys.path.insert(0, {root!r})
import toolkit.formats.run_dir as run_dir
from toolkit.cli import run_cli

real_append = run_dir.RunDir.append_steps
def append_steps(self, rows):
    real_append(self, rows)
    if any(row["step"] == {kill_after} for row in rows):
        time.sleep(1.0)  # W&B's service has had time to write what it was given
        os.kill(os.getpid(), signal.SIGKILL)
run_dir.RunDir.append_steps = append_steps

import toolkit.train
run_cli(toolkit.train.main, sys.argv[1:])
"""


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    root = tmp_path_factory.mktemp("logs-kill")
    shards = pack_tiny(root)
    home = root / "home"
    env = {
        **ENV,
        "WANDB_MODE": "offline",
        "HOME": str(home),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("WANDB_API_KEY", None)
    argv = train_args(
        shards,
        root / "runs",
        "killed",
        "tracking.wandb=offline",
        "tracking.tensorboard=true",
        "train.batch_size=2",
        "train.epochs=8",
        "train.checkpoint_every_epochs=4",
        "train.log_every_steps=1",
        "eval.test_split=null",
        "train.resume=auto",
    )
    driver = root / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), kill_after=KILL_AFTER_STEP))
    first = subprocess.Popen(
        [sys.executable, str(driver), *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = wait_for(first)
    assert first.returncode == -signal.SIGKILL, err[-3000:]
    run = RunDir(root / "runs" / "killed")
    assert [row["step"] for row in run.read_steps()][-1] == KILL_AFTER_STEP  # the killed run logged past step 4
    second = subprocess.run(
        [sys.executable, "-m", "toolkit.train", *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step 128)" in second.stdout, second.stdout[-2000:]
    return run


def test_steps_csv_has_each_step_once_after_a_kill_and_resume(killed_and_resumed: RunDir):
    rows = killed_and_resumed.read_steps()
    assert [row["step"] for row in rows] == STEPS
    assert killed_and_resumed.steps.read_text().splitlines()[0] == "step,epoch,loss,lr,img_per_s,data_wait"
    assert rows[-1]["epoch"] == 8.0 and all(row["loss"] > 0 and 0 <= row["data_wait"] <= 1 for row in rows)


def test_tensorboard_reader_sees_each_step_once(killed_and_resumed: RunDir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    expected = {row["step"]: row["loss"] for row in killed_and_resumed.read_steps()}
    events = EventAccumulator(str(killed_and_resumed.tensorboard))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [event.step for event in losses] == STEPS
    for event in losses:
        assert event.value == pytest.approx(expected[event.step], rel=1e-5)
    assert [event.step for event in events.Scalars("epoch/val_auc")] == [32 * n for n in range(1, 9)]


def test_wandb_offline_history_has_each_step_once_with_the_finishing_run_s_values(killed_and_resumed: RunDir):
    local = load_run(killed_and_resumed.root)
    assert local is not None and len(local.log_files) == 2  # the killed part and the resumed part
    killed_part = [row["_step"] for row in read_history(local.log_files[:1]) if "train/loss" in row]
    assert killed_part, "the killed part kept no rows: nothing here shows what a kill leaves in W&B"
    history = read_history(local.log_files)
    steps = [row["_step"] for row in history if "train/loss" in row]
    duplicates = [step for step, n in collections.Counter(steps).items() if n > 1]
    assert not duplicates, f"steps logged twice: {duplicates}"
    assert sorted(steps) == STEPS
    expected = {row["step"]: row["loss"] for row in killed_and_resumed.read_steps()}
    for row in history:
        if "train/loss" in row:
            assert row["train/loss"] == pytest.approx(expected[row["_step"]], rel=1e-5), row
