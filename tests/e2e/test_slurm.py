"""launch/slurm_multi_node.sbatch on a real SLURM cluster (two nodes on this machine, see slurm_cluster.py).

1. ``sbatch --nodes 2`` on CPU nodes, one gloo process per node, trains to the same weights on
   every rank as a single-host 2-process run with the same seed (bit for bit).
2. Three stops of one job, each landing mid-run: the time-limit signal (``--signal=B:USR1``, to the
   batch script), which checkpoints every rank and makes the job requeue itself; a preemption's
   TERM to every rank; and ``scancel --signal=TERM --full``, which also reaches srun, and srun
   SIGKILLs its tasks on a TERM (its own behaviour), so that run resumes from its last periodic
   checkpoint. The job finishes with case 1's weights, bit for bit.
3. A job killed on n1 (its lock left behind, freshly renewed) and requeued onto n2 takes its own run back.

The signals are sent while the training processes are stopped (SIGSTOP) and delivered when they
continue, so they always land mid-run, however fast or slow the machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_cluster import Cluster, why_unavailable

from helpers import ENV, LAUNCH_2, ROOT, pack_tiny, start, train_args, wait_for
from toolkit.training.checkpoint import checkpoint_step, latest_checkpoint, list_checkpoints
from toolkit.training.run_lock import read_record

SBATCH = ROOT / "launch" / "slurm_multi_node.sbatch"
# 2 ranks x 2 shards of 16 images, batch 4: 4 steps per epoch, 4 epochs, a checkpoint every 2 steps
COMMON = ("train.batch_size=4", "train.epochs=4", "train.checkpoint_every_steps=2", "eval.test_split=null")
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    started = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("slurm-shards"))


def submit(cluster: Cluster, out: Path, *sbatch_args: str, train: list[str]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    env = {**cluster.env, **{k: v for k, v in ENV.items() if k != "SLURM_CONF"}, "PYTHON": sys.executable}
    done = subprocess.run(
        ["sbatch", "--parsable", f"--output={out}/slurm-%j.out", *sbatch_args, str(SBATCH), *train],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def wait_until(cluster: Cluster, job: str, ready, what: str, timeout: float = JOB_TIMEOUT_S) -> dict:
    """Poll the job until ``ready(info)``; a requeued job held by SLURM's begin-time delay is released soon.

    Not at once: slurmd refuses a job credential issued in the same second as the revoked one of
    the job's previous run ("Job credential revoked"), which is what the delay is there for.
    """
    deadline = time.monotonic() + timeout
    held_since = None
    while True:
        info = cluster.job(job)
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since > 3:
                cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
        else:
            held_since = None
        if ready(info):
            return info
        if time.monotonic() > deadline:
            pytest.fail(f"job {job}: {what} not reached in {timeout} s: {info}\n{cluster.logs()}")
        time.sleep(0.5)


def job_log(out: Path, job: str) -> str:
    return (out / f"slurm-{job}.out").read_text(errors="replace")


def finished(cluster: Cluster, job: str, out: Path) -> dict:
    info = wait_until(
        cluster, job, lambda i: i["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), "the end"
    )
    assert info["JobState"] == "COMPLETED", f"{info}\n{job_log(out, job)[-4000:]}"
    return info


def training_pids(out: Path) -> list[int]:
    """The training processes whose command line names ``out`` (the run's output.dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"python" in argv[0] and b"toolkit.train" in argv and f"output.dir={out}".encode() in argv:
            pids.append(int(proc.name))
    return pids


def latest_step(run: Path) -> int:
    latest = latest_checkpoint(run / "checkpoints")
    return checkpoint_step(latest) if latest else 0


def signal_mid_run(cluster: Cluster, job: str, out: Path, run: Path, after_step: int, send) -> None:
    """Once a checkpoint of step ``after_step`` or later exists: stop both ranks, ``send()`` the signal, continue."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while latest_step(run) < after_step or len(training_pids(out)) < 2:
        assert time.monotonic() < deadline, f"no progress:\n{job_log(out, job)[-3000:]}"
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), job_log(out, job)[-3000:]
        time.sleep(0.05)
    pids = training_pids(out)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        send()
        time.sleep(3)  # the batch script's trap forwards TERM to the ranks: pending until they continue
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # srun SIGKILLs its tasks when it gets TERM itself
                os.kill(pid, signal.SIGCONT)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def two_node_run(cluster, shards, tmp_path_factory) -> Path:
    """Case 1's run folder, checked against a single-host 2-process run (reused by case 2)."""
    out = tmp_path_factory.mktemp("case1")
    job = submit(cluster, out, "--nodes=2", train=train_args(shards, out, "straight", *COMMON))
    local = start(
        [
            *LAUNCH_2,
            "--main_process_port",
            "29671",
            "-m",
            "toolkit.train",
            *train_args(shards, out / "local", "straight", *COMMON),
        ]
    )
    try:
        info = finished(cluster, job, out)
        _, err = wait_for(local, JOB_TIMEOUT_S)
    finally:
        local.kill()
    assert local.returncode == 0, err[-3000:]
    assert info["NodeList"] == "n[1-2]"
    log = job_log(out, job)
    assert "2 node(s) x 1 process(es), main 127.0.0.1:" in log and "2 process(es) on cpu" in log
    final = (out / "straight" / "final.json").read_text()
    assert '"num_processes": 2' in final
    assert_same_weights(weights(out / "straight"), weights(out / "local" / "straight"))
    return out / "straight"


@pytest.mark.timeout(2 * JOB_TIMEOUT_S)
def test_two_node_sbatch_equals_a_single_host_two_process_run(two_node_run):
    checksums = json.loads((two_node_run / "final.json").read_text())["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # equal weights on every rank


@pytest.mark.timeout(4 * JOB_TIMEOUT_S)
def test_time_limit_and_scancel_checkpoint_requeue_and_finish_with_the_same_weights(
    cluster, shards, two_node_run, tmp_path
):
    out = tmp_path / "case2"
    job = submit(cluster, out, "--nodes=2", train=train_args(shards, out, "stopped", *COMMON))
    run = out / "stopped"
    # the time-limit signal as --signal=B:USR1@120 delivers it: to the batch script only
    signal_mid_run(cluster, job, out, run, 2, lambda: cluster.run("scancel", "--batch", "--signal=USR1", job))
    wait_until(cluster, job, lambda i: int(i.get("Restarts", 0)) >= 1, "the first requeue")
    first = job_log(out, job)
    assert first.count("stopped by a stop signal") == 1, first[-3000:]  # printed by rank 0, after every rank saved
    # preemption: TERM to every process of every step (the batch script is not signalled); SLURM's
    # PreemptMode=REQUEUE requeues the job itself, which `scontrol requeue` stands in for here
    wait_until(cluster, job, lambda i: i["JobState"] == "RUNNING", "the requeued run")
    stop_at = latest_step(run) + 2
    signal_mid_run(cluster, job, out, run, stop_at, lambda: cluster.run("scancel", "--signal=TERM", job))
    wait_until(cluster, job, lambda i: i["JobState"] != "RUNNING", "the preempted run's end")
    assert job_log(out, job).count("stopped by a stop signal") == 2
    cluster.run("scontrol", "requeue", job)
    # scancel --signal=TERM --full: the batch script too (it forwards TERM again) and srun, which
    # SIGKILLs its tasks on a TERM: the job still requeues and resumes, from the last periodic checkpoint
    wait_until(cluster, job, lambda i: i["JobState"] == "RUNNING", "the second requeued run")
    signal_mid_run(
        cluster, job, out, run, latest_step(run) + 2, lambda: cluster.run("scancel", "--full", "--signal=TERM", job)
    )
    wait_until(cluster, job, lambda i: int(i.get("Restarts", 0)) >= 3, "the third requeue")
    finished(cluster, job, out)

    log = job_log(out, job)
    assert log.count("requeueing job") == 2 and log.count("resumed from") == 3, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    assert_same_weights(weights(run), weights(two_node_run))
    assert not (run / ".lock").exists()


@pytest.mark.timeout(3 * JOB_TIMEOUT_S)
def test_a_job_requeued_onto_the_other_node_takes_its_run_back_from_the_first_node_s_lock(cluster, shards, tmp_path):
    out = tmp_path / "case3"
    run = out / "moved"
    cluster.run("scontrol", "update", "NodeName=n2", "State=DRAIN", "Reason=case3")
    try:
        job = submit(cluster, out, "--nodes=1", train=train_args(shards, out, "moved", *COMMON))
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not list_checkpoints(run / "checkpoints"):
            assert time.monotonic() < deadline and cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), job_log(
                out, job
            )[-3000:]
            time.sleep(0.05)
        lock = read_record(run / ".lock")
        assert lock["node"] == "n1" and lock["slurm_job"] == job
        os.kill(lock["pid"], signal.SIGKILL)  # n1 "fails": no checkpoint, no unlock
        wait_until(cluster, job, lambda i: i["JobState"] in ("FAILED", "COMPLETED", "CANCELLED"), "the kill")
        assert (run / ".lock").exists()
        cluster.run("scontrol", "update", "NodeName=n2", "State=RESUME")
        cluster.run("scontrol", "update", "NodeName=n1", "State=DRAIN", "Reason=case3")
        cluster.run("scontrol", "requeue", job)  # as SLURM does for a --requeue job after a node failure
        info = finished(cluster, job, out)
    finally:
        cluster.run("scontrol", "update", "NodeName=n1,n2", "State=RESUME", check=False)
    assert info["NodeList"] == "n2"
    log = job_log(out, job)
    assert "resumed from" in log and "is being written by another process" not in log, log[-3000:]
    assert (run / "final.json").exists() and not (run / ".lock").exists()


# Case 4: a node lost mid-run. 64 train images, global batch 8: 8 steps per epoch on 2 nodes or 1, 2 epochs.
ELASTIC = (
    "train.batch_size=4",
    "train.global_batch_size=8",
    "train.epochs=2",
    "train.checkpoint_every_steps=2",
    "train.record_sample_keys=true",
    "train.log_every_steps=1",
    "eval.test_split=null",
)


def node_of(pid: int) -> str:
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_text(errors="replace").split("\0")
        if "=" in item
    )
    return environ.get("SLURMD_NODENAME", "")


def step_keys(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "sample_keys.jsonl").read_text().splitlines()]


def watch_unattended(cluster: Cluster, job: str, out: Path, since: float) -> dict[str, float]:
    """Seconds from ``since`` to each stage of the job's recovery, observed without touching the job."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while "end" not in seen:
        info = cluster.job(job)
        now = time.monotonic() - since
        if "n2 down" not in seen and "n2 down" in cluster.run("sinfo", "-h", "-N", "-o", "%N %t").stdout:
            seen["n2 down"] = now
        if int(info.get("Restarts", 0)) >= 1:
            seen.setdefault("requeued", now)
            if info["JobState"] == "RUNNING":
                seen.setdefault("running again", now)
        if "resumed" not in seen and "resumed from" in job_log(out, job):
            seen["resumed"] = now
        if info["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            seen["end"] = now
        assert time.monotonic() < deadline, f"job {job} not done in {JOB_TIMEOUT_S} s: {info}\n{cluster.logs()}"
        time.sleep(0.2)
    return seen


@pytest.mark.timeout(3 * JOB_TIMEOUT_S)
def test_a_lost_node_requeues_the_job_which_resumes_on_the_node_left_with_the_same_keys(cluster, shards, tmp_path):
    """``--nodes=1-2 --requeue``: n2 fails (its slurmd, step daemon and task SIGKILLed) after the first
    checkpoint; SLURM marks it DOWN after SlurmdTimeout and requeues the job, which resumes on n1 alone.
    Nothing but the failure is done to the job (no requeue, no release of its begin time)."""
    out = tmp_path / "case4"
    run = out / "lost"
    reference = start([sys.executable, "-m", "toolkit.train", *train_args(shards, tmp_path / "one", "lost", *ELASTIC)])
    cluster.wait(lambda: cluster.idle_nodes() == {"n1", "n2"}, JOB_TIMEOUT_S, "both nodes idle")  # else 1-2 gets 1
    job = submit(cluster, out, "--nodes=1-2", "--requeue", train=train_args(shards, out, "lost", *ELASTIC))
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not list_checkpoints(run / "checkpoints") or len(training_pids(out)) < 2:
            info = cluster.job(job)
            assert time.monotonic() < deadline and info["JobState"] in ("PENDING", "RUNNING"), (info, cluster.logs())
            time.sleep(0.05)
        pids = {node_of(pid): pid for pid in training_pids(out)}
        for pid in pids.values():
            os.kill(pid, signal.SIGSTOP)  # the failure lands mid-run
        done_before, saved_before = len(step_keys(run)), latest_step(run)
        step_daemon = int(Path(f"/proc/{pids['n2']}/stat").read_text().rsplit(")", 1)[1].split()[1])
        cluster.stop_node("n2")  # n2 fails: its slurmd, its step daemon and its task, all at once
        os.kill(step_daemon, signal.SIGKILL)
        os.kill(pids["n2"], signal.SIGKILL)
        lost_at = time.monotonic()
        os.kill(pids["n1"], signal.SIGCONT)
        stages = watch_unattended(cluster, job, out, lost_at)
        _, err = wait_for(reference, JOB_TIMEOUT_S)
        assert reference.returncode == 0, err[-3000:]
    finally:
        reference.kill()
        cluster.start_node("n2")  # back for the other tests (ReturnToService=2)
        cluster.run("scontrol", "update", "NodeName=n2", "State=RESUME", check=False)
    print(f"\nnode n2 lost after step {done_before} (checkpoint {saved_before}); seconds after the loss: {stages}")
    info = cluster.job(job)
    log = job_log(out, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1" and info["NodeList"] == "n1", (info, log[-4000:])
    assert (
        "requeue job JobId=" + job + " due to failure of node n2"
        in (cluster.folder / "log" / "slurmctld.log").read_text()
    )
    assert "(restart 1) on n1: 1 node(s) x 1 process(es)" in log and log.count("resumed from") == 1, log[-4000:]
    resumed = int(re.search(r"resumed from \S+step-(\d+)", log).group(1))
    assert resumed >= saved_before and done_before - resumed <= 2, (done_before, resumed)
    assert [row["step"] for row in step_keys(run)] == list(range(1, 17))
    assert step_keys(run) == step_keys(tmp_path / "one" / "lost")  # the same samples in every step, 2 nodes then 1
    assert (run / "final.json").exists() and not (run / ".lock").exists()
