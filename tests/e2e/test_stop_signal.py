"""A stop is noticed at once (issue 33, item 2): after the step a SIGTERM lands in, and after a validation.

Each run sends itself SIGTERM at an exact point (the Nth forward pass in training or in evaluation
mode), the same as a scheduler's TERM arriving at that moment.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, ROOT, pack_tiny, train_args, wait_for
from toolkit.training.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

DRIVER = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
import toolkit.training.loop
from toolkit.cli import run_cli

training, nth = sys.argv[1] == "train", int(sys.argv[2])
seen = 0
build = toolkit.training.loop.build_model

def build_model(cfg):
    model = build(cfg)
    def hook(module, args):
        global seen
        if module.training == training:
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGTERM)
    model.register_forward_pre_hook(hook)
    return model

toolkit.training.loop.build_model = build_model
import toolkit.train
run_cli(toolkit.train.main, sys.argv[3:])
"""
STOPPED = re.compile(r"stopped by a stop signal at epoch (\d+), step (\d+); checkpoint (\S+)\.")
# 2 epochs of 8 steps of 8 samples; the loss is logged (and the stop was looked at) only every 100 steps
COMMON = ("train.epochs=2", "train.log_every_steps=100", "eval.batch_size=64")


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("stop-signal"))


def run_signalled(tmp_path: Path, shards: Path, point: str, nth: int, *overrides: str) -> tuple[int, str, str]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    argv = [sys.executable, str(driver), point, str(nth), *train_args(shards, tmp_path, "run", *COMMON, *overrides)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = wait_for(proc, 300)
    return proc.returncode, out, err


@pytest.mark.timeout(300)
def test_a_sigterm_in_step_3_stops_after_step_3_not_at_the_next_log_step(tiny_shards, tmp_path):
    code, out, err = run_signalled(tmp_path, tiny_shards, "train", 3, "eval.test_split=null")
    stopped = STOPPED.search(out)
    assert stopped, (code, out[-2000:], err[-3000:])
    assert (stopped.group(1), stopped.group(2)) == ("1", "3"), stopped.group(0)  # the current step finishes
    assert Path(stopped.group(3)).name == "step-00000003"
    assert code == 128 + signal.SIGTERM, err[-3000:]


@pytest.mark.timeout(300)
def test_a_sigterm_during_the_last_validation_checkpoints_instead_of_testing_and_reporting(tiny_shards, tmp_path):
    code, out, err = run_signalled(tmp_path, tiny_shards, "eval", 2)  # the 2nd validation: the last epoch's
    stopped = STOPPED.search(out)
    assert stopped, (code, out[-2000:], err[-3000:])
    assert stopped.group(2) == "16"
    assert Path(stopped.group(3)) in list_checkpoints(tmp_path / "run" / "checkpoints")
    assert "done:" not in out and not (tmp_path / "run" / "report.html").exists()
    assert not (tmp_path / "run" / "eval").exists() or not any((tmp_path / "run" / "eval").iterdir())
    assert code == 128 + signal.SIGTERM, err[-3000:]
