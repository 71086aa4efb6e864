"""What clusters do to a run, on one host: torchrun elastic restarts, repeated SIGTERMs, node-local output folders.

Every process has a hard timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import concurrent.futures
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
from slurm_cluster import free_port

from helpers import ENV, ROOT, error_line, pack_tiny, train_args, wait_for
from toolkit.training.checkpoint import list_checkpoints

TIMEOUT_S = 240
COMMON = ("train.batch_size=4", "train.epochs=4", "train.checkpoint_every_steps=2", "eval.test_split=null")


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("cluster-faults"))


def popen(argv: list[str], cwd: Path = ROOT, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=cwd, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_checkpoint(proc: subprocess.Popen, run: Path, count: int = 1) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while len(list_checkpoints(run / "checkpoints")) < count:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def worker_pid(out: Path, rank: int) -> int:
    """The torchrun worker of ``rank`` whose command line names ``out``."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"output.dir={out}".encode() in argv
            and f"RANK={rank}".encode() in environ
            and b"TORCHELASTIC_RESTART_COUNT=0" in environ
        ):
            return int(proc.name)
    raise AssertionError(f"no worker of rank {rank} found")


@pytest.mark.timeout(2 * TIMEOUT_S)
def test_torchrun_elastic_restart_after_a_sigkill_finishes_with_the_uninterrupted_weights(tiny_shards, tmp_path):
    def torchrun(out: Path) -> subprocess.Popen:
        return popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                "2",
                "--max-restarts",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{free_port()}",
                "--monitor-interval",
                "0.5",
                "-m",
                "toolkit.train",
                *train_args(tiny_shards, out, "run", *COMMON, "train.resume=auto"),
            ]
        )

    straight, killed = torchrun(tmp_path / "straight"), torchrun(tmp_path / "killed")
    try:
        wait_for_checkpoint(killed, tmp_path / "killed" / "run")
        os.kill(worker_pid(tmp_path / "killed", 1), signal.SIGKILL)
        out, err = wait_for(killed, TIMEOUT_S)
        assert killed.returncode == 0, err[-4000:]
        _, err = wait_for(straight, TIMEOUT_S)
        assert straight.returncode == 0, err[-4000:]
    finally:
        straight.kill()
        killed.kill()
    assert "resumed from" in out, out[-3000:]
    a, b = (load_file(tmp_path / name / "run" / "last.safetensors") for name in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(TIMEOUT_S)
def test_sigterm_again_and_again_still_checkpoints_and_exits_143(tiny_shards, tmp_path):
    """A TERM every 5 ms from the first checkpoint until the process is gone: also through interpreter
    shutdown, where CPython puts SIGTERM back to its default action (issue 33, item 1)."""
    proc = popen([sys.executable, "-m", "toolkit.train", *train_args(tiny_shards, tmp_path, "run", *COMMON)])
    try:
        wait_for_checkpoint(proc, tmp_path / "run")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            outputs = pool.submit(wait_for, proc, TIMEOUT_S)  # read while signalling: a full pipe would block it
            while proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the scheduler, the launcher forwarding it, the scheduler again ...
                time.sleep(0.005)
            out, err = outputs.result()
    finally:
        proc.kill()
    stopped = re.search(r"stopped by a stop signal at epoch \d+, step (\d+); checkpoint (\S+)\.", out)
    assert stopped, (proc.returncode, out[-3000:], err[-3000:])
    assert Path(stopped.group(2)).name == f"step-{int(stopped.group(1)):08d}"
    assert Path(stopped.group(2)) in list_checkpoints(tmp_path / "run" / "checkpoints")
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err[-3000:])


@pytest.mark.timeout(TIMEOUT_S)
def test_an_output_folder_that_is_not_shared_is_one_line_naming_output_dir(tiny_shards, tmp_path):
    """Two "nodes" (rank 0 and rank 1, each its own working folder) with a relative, node-local output.dir."""
    port = str(free_port())
    argv = [
        sys.executable,
        "-m",
        "toolkit.train",
        *train_args(tiny_shards, Path("runs"), "local", *COMMON, "output.shared_wait_s=1"),
    ]
    procs = []
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
        procs.append(
            popen(
                argv,
                cwd=tmp_path / f"node{rank}",
                RANK=str(rank),
                LOCAL_RANK="0",
                WORLD_SIZE="2",
                LOCAL_WORLD_SIZE="1",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                PYTHONPATH=str(ROOT),
            )
        )
    try:
        results = [wait_for(proc, TIMEOUT_S) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [2, 2], [err[-2000:] for _, err in results]
    line = error_line(results[0][1])
    assert "output.dir=runs is not shared by every process: rank 1 on" in line
    assert "error:" not in results[1][1]  # said once, by rank 0
    run = tmp_path / "node0" / "runs" / "local"
    assert sorted(p.name for p in run.iterdir()) == []  # nothing written, the lock released
