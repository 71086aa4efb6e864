"""Progress in a log file: a 3-epoch smoke run whose output goes to a file (as in a SLURM ``%x-%j.out``: no
terminal) writes plain step lines, no progress-bar redraws, and stays in kilobytes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, ROOT, pack_tiny, train_args

pytestmark = pytest.mark.slow

STEP_LINE = re.compile(
    r"^step \d+/48 \| epoch \d\.\d\d \| loss \d+\.\d{4} \| lr \S+ \| \d+\.\d img/s \| data_wait \d+% \| ETA \d+:\d\d$"
)


def run_to_file(tmp_path: Path, progress: str) -> bytes:
    """The smoke config for 3 epochs of 16 steps, stdout and stderr into one file, as sbatch's --output does."""
    argv = train_args(pack_tiny(tmp_path / "data"), tmp_path / "runs", "smoke", "train.epochs=3", "train.batch_size=4")
    log = tmp_path / "smoke.out"
    with open(log, "wb") as handle:
        proc = subprocess.run(
            [sys.executable, "-m", "toolkit.train", f"--progress={progress}", *argv],
            env={**ENV, "PYTHONPATH": str(ROOT)},
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    data = log.read_bytes()
    assert proc.returncode == 0, data[-3000:].decode(errors="replace")
    return data


def test_smoke_run_log_without_a_terminal_is_plain_lines_in_kilobytes(tmp_path: Path):
    data = run_to_file(tmp_path, "auto")
    assert b"\r" not in data, "progress-bar redraws in a log file"
    assert len(data) < 8 * 1024, f"{len(data)} bytes of output for a 3-epoch smoke run"
    lines = data.decode().splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    # train.log_every_steps=5 of the smoke config, and each epoch's last step: 5, 10, 15, 16, 20, ... 48
    assert [int(line.split()[1].split("/")[0]) for line in steps] == sorted({*range(5, 49, 5), 16, 32, 48})
    assert all(STEP_LINE.match(line) for line in steps), steps
    assert sum(line.startswith("epoch ") for line in lines) == 3


def test_progress_none_prints_no_progress(tmp_path: Path):
    data = run_to_file(tmp_path, "none").decode()
    assert "step " not in data and "eval val:" not in data and "\r" not in data
    assert data.count("\nepoch ") == 3  # the epoch lines are results, not progress: they stay
