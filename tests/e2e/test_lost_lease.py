"""A writer that lost its lease stops writing (issue 33, item 3).

Run A is suspended (``kill -STOP``, as Ctrl-Z does) right after its first checkpoint, for longer
than ``output.lock_expiry_s``; run B takes the run over with ``train.resume=auto`` and finishes it.
When A continues, it must stop with one line before it writes or prunes anything of B's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ENV, ROOT, error_line, file_hashes, pack_tiny, start, train_args, wait_for

pytestmark = pytest.mark.slow

# toolkit.train, suspending itself (SIGSTOP) right after its first checkpoint is in place
DRIVER = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
import toolkit.training.loop as loop
from toolkit.cli import run_cli

real_save = loop.save_training_state
def save_training_state(*args, **kwargs):
    path = real_save(*args, **kwargs)
    if not getattr(save_training_state, "done", False):
        save_training_state.done = True
        print("suspending after", path, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    return path
loop.save_training_state = save_training_state
import toolkit.train
run_cli(toolkit.train.main, sys.argv[1:])
"""
EXPIRY_S = 2.0


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("lost-lease"))


def wait_until_stopped(proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never suspended itself"
        time.sleep(0.05)


@pytest.mark.timeout(600)
def test_a_suspended_writer_whose_lease_was_taken_stops_without_touching_the_new_writers_files(tiny_shards, tmp_path):
    argv = train_args(
        tiny_shards,
        tmp_path,
        "run",
        "train.checkpoint_every_steps=2",
        "train.resume=auto",
        "eval.test_split=null",
        f"output.lock_expiry_s={EXPIRY_S}",
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    first = start([sys.executable, str(driver), *argv])
    try:
        wait_until_stopped(first)
        time.sleep(EXPIRY_S + 1.0)  # the lease expires while its holder sleeps
        second = subprocess.run(
            [sys.executable, "-m", "toolkit.train", *argv], cwd=ROOT, env=ENV, capture_output=True, text=True
        )
        assert second.returncode == 0, second.stderr[-3000:]
        assert "resumed from" in second.stdout, second.stdout[-2000:]
        run = tmp_path / "run"
        written = file_hashes(run)
        os.kill(first.pid, signal.SIGCONT)
        out, err = wait_for(first, 300)
    finally:
        first.kill()
    line = error_line(err)
    assert f"lost the lease on {run}" in line and "stopped without writing to it again" in line, line
    assert first.returncode == 1, err[-3000:]
    assert file_hashes(run) == written  # not one checkpoint written or pruned, no model replaced, no lock taken
