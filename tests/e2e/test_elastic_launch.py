"""launch/torchrun_elastic.sh: torchrun agents that lose a node (or a frozen peer) and go on without it.

1. Two agents (``--nnodes 1:2``, one worker each, c10d rendezvous on 127.0.0.1). After the first
   checkpoint the non-host agent's "node" is lost (agent and worker SIGKILLed); the survivor's
   collective fails at once, its agent re-forms the group alone, and the worker resumes the run on
   1 process from the last checkpoint. It finishes with the sample keys of every step (and the
   losses) of an uninterrupted 1-process run, having redone at most one checkpoint interval.
2. A frozen peer (SIGSTOP: its sockets stay open, nothing arrives): the survivor gives up after
   ``train.collective_timeout_s`` with one line instead of waiting torch's 30 minutes.

The workers are stopped (SIGSTOP) while the node is removed, so the loss always lands mid-run.
Every process has a hard timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from slurm_cluster import free_port

from helpers import ENV, ROOT, descendants, kill_tree, pack_tiny, start, train_args, wait_for
from toolkit.training.checkpoint import checkpoint_step, latest_checkpoint, list_checkpoints

SCRIPT = ROOT / "launch" / "torchrun_elastic.sh"
TIMEOUT_S = 240
INTERVAL = 2  # train.checkpoint_every_steps
# 64 train images, global batch 8: 8 steps per epoch on any process count, 2 epochs
COMMON = (
    "train.batch_size=4",
    "train.global_batch_size=8",
    f"train.checkpoint_every_steps={INTERVAL}",
    "train.record_sample_keys=true",
    "train.log_every_steps=1",
    "eval.test_split=null",
)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("elastic"))


class Agent:
    """One ``launch/torchrun_elastic.sh`` (a "node"); its output is read as it comes, with arrival times."""

    def __init__(self, args: list[str], port: int, **env: str) -> None:
        self.proc = subprocess.Popen(
            ["bash", str(SCRIPT), *args],
            cwd=ROOT,
            env={
                **ENV,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{ENV['PATH']}",  # this interpreter's torchrun
                "PYTHON": sys.executable,
                "RDZV_PORT": str(port),
                "NPROC": "1",
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def first(self, pattern: str) -> tuple[float, str]:
        return next(((t, line) for t, line in self.lines if re.search(pattern, line)), (float("nan"), ""))

    def worker(self) -> int:
        workers = [
            pid for pid in descendants(self.proc.pid) if b"toolkit.train" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 1, workers
        return workers[0]

    def finish(self) -> int:
        try:
            self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc)
            pytest.fail(f"agent still running after {TIMEOUT_S} s:\n{self.output()[-4000:]}")
        self.reader.join(10)
        return self.proc.returncode


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_until(ready, what: str, agents: list[Agent]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        for agent in agents:
            assert agent.proc.poll() is None, f"{what}: an agent exited\n{agent.output()[-4000:]}"
        assert time.monotonic() < deadline, f"{what}: not reached in {TIMEOUT_S} s"
        time.sleep(0.02)


def step_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "sample_keys.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    lines = (run / "steps.csv").read_text().splitlines()
    return {int(row.split(",")[0]): float(row.split(",")[2]) for row in lines[1:]}


@pytest.mark.timeout(2 * TIMEOUT_S)
def test_a_lost_node_costs_one_checkpoint_interval_and_the_survivor_finishes_with_the_same_keys(tiny_shards, tmp_path):
    reference = start(
        [sys.executable, "-m", "toolkit.train", *train_args(tiny_shards, tmp_path / "reference", "run", *COMMON)]
    )
    out, run, port = tmp_path / "elastic", tmp_path / "elastic" / "run", free_port()
    args = train_args(tiny_shards, out, "run", *COMMON)
    agents = [Agent(args, port)]  # the first agent binds the rendezvous port: it holds the c10d store
    try:
        wait_until(lambda: listening(port), "the rendezvous store", agents)
        agents.append(Agent(args, port))  # the agent whose node is lost
        survivor, lost = agents
        wait_until(lambda: list_checkpoints(run / "checkpoints"), "the first checkpoint", agents)
        workers = [survivor.worker(), lost.worker()]
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        done_before = len(step_rows(run))  # steps the lost node took part in
        saved_before = checkpoint_step(latest_checkpoint(run / "checkpoints"))
        for pid in [lost.proc.pid, *descendants(lost.proc.pid)]:  # the whole node: agent and worker
            os.kill(pid, signal.SIGKILL)
        lost_at = time.monotonic()
        os.kill(workers[0], signal.SIGCONT)
        wait_until(lambda: not Path(f"/proc/{workers[0]}").exists(), "the survivor's worker failing", [survivor])
        failed_at = time.monotonic()
        assert survivor.finish() == 0, survivor.output()[-4000:]
        _, err = wait_for(reference, TIMEOUT_S)
        assert reference.returncode == 0, err[-3000:]
    finally:
        for agent in agents:
            kill_tree(agent.proc)
        kill_tree(reference)

    log = survivor.output()
    resumed_at, resumed = survivor.first(r"resumed from \S+step-(\d+)")
    resumed_step = int(re.search(r"step-(\d+)", resumed).group(1)) if resumed else -1
    restarted_at, _ = survivor.first(r"training on CPU with 1 process")
    print(
        f"\nnode lost after step {done_before} (last checkpoint {saved_before}); survivor failed after "
        f"{failed_at - lost_at:.1f} s, its new worker started {restarted_at - failed_at:.1f} s later, resumed "
        f"from step {resumed_step} {resumed_at - restarted_at:.1f} s after that; lost to the node: "
        f"{resumed_at - lost_at:.1f} s and {done_before - resumed_step} step(s) redone"
    )
    assert "error: lost another process mid-collective (" in log and "]: Traceback" not in log, log[-4000:]
    assert resumed_step >= saved_before and done_before - resumed_step <= INTERVAL, (done_before, resumed, log[-3000:])
    assert "| 1 process(es) on cpu" in log and log.count("resumed from") == 1
    elastic_rows, reference_rows = step_rows(run), step_rows(tmp_path / "reference" / "run")
    assert [r["step"] for r in elastic_rows] == list(range(1, 17))
    assert elastic_rows == reference_rows  # the same samples in every step, across the change from 2 to 1 process
    mine, theirs = losses(run), losses(tmp_path / "reference" / "run")
    assert mine.keys() == theirs.keys()
    assert all(abs(mine[s] - theirs[s]) <= 1e-5 * abs(theirs[s]) for s in mine), (mine, theirs)
    assert (run / "final.json").exists() and not (run / ".lock").exists()


@pytest.mark.timeout(TIMEOUT_S)
def test_a_frozen_peer_fails_the_survivor_after_collective_timeout_s_in_one_line(tiny_shards, tmp_path):
    port = free_port()
    args = train_args(tiny_shards, tmp_path, "run", *COMMON, "train.collective_timeout_s=3")
    agents = [Agent(args, port, MAX_RESTARTS="0")]
    try:
        wait_until(lambda: listening(port), "the rendezvous store", agents)
        agents.append(Agent(args, port, MAX_RESTARTS="0"))
        wait_until(lambda: list_checkpoints(tmp_path / "run" / "checkpoints"), "the first checkpoint", agents)
        survivor, frozen = (agent.worker() for agent in agents)
        os.kill(frozen, signal.SIGSTOP)  # a node that stops answering, its connections still open
        frozen_at = time.monotonic()
        deadline = frozen_at + 90  # torch's default would wait 30 minutes
        while Path(f"/proc/{survivor}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        gone_after = time.monotonic() - frozen_at
        assert not Path(f"/proc/{survivor}").exists(), "the survivor still waits for its frozen peer"
        time.sleep(1)  # its last line reaches the agent's output
        print(f"\nsurvivor of a frozen peer failed after {gone_after:.1f} s (train.collective_timeout_s=3)")
    finally:
        for agent in agents:
            kill_tree(agent.proc)
    log = agents[0].output()
    assert "error: lost another process mid-collective (Timed out waiting" in log, log[-4000:]
    assert "train.collective_timeout_s=3" in log and "]: Traceback" not in log, log[-4000:]  # none from a worker
