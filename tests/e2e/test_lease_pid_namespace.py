"""Same hostname, another PID namespace: a live lease is not taken (issue 33, item 4).

A container with host networking shares the hostname but not the pids: the holder below is pid 1
in a PID namespace of its own (``unshare --pid --fork --mount-proc``); pid 1 out here is another
process, which must not make its lease look dead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import ENV, ROOT, wait_for
from toolkit.training.run_lock import RunLock, is_dead, read_record

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
]

HOLDER = r"""
import sys, time
sys.path.insert(0, {root!r})
from toolkit.training.run_lock import RunLock
lock = RunLock({lock!r}, 300)
assert lock.acquire() is None
lock.start_renewing()
print("holding", flush=True)
time.sleep(120)
"""


def can_unshare() -> bool:
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.timeout(200)
def test_a_live_lease_held_from_another_pid_namespace_is_refused(tmp_path):
    if not can_unshare():
        pytest.skip("unshare --pid needs root (or user namespaces) here")
    lock = tmp_path / ".lock"
    script = HOLDER.format(root=str(ROOT), lock=str(lock))
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c", script],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()[-2000:]
        record = read_record(lock)
        assert record["pid"] == 1  # pid 1 in its namespace; out here pid 1 is another process
        assert is_dead(record, 300) is None
        refused = RunLock(lock, 300).acquire()
        assert refused is not None and refused["token"] == record["token"], "a live lease was taken over"
        assert read_record(lock)["token"] == record["token"]
    finally:
        holder.kill()
        wait_for(holder, 30)
