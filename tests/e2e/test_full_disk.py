"""A full disk: one line that says how to resume, the last good checkpoint untouched, and the same command plus
train.resume=auto finishes the run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from helpers import (
    ENV,
    ROOT,
    SMOKE,
    assert_nothing_half_written,
    continue_run,
    error_line,
    finished_files,
    train_args,
    train_cli,
    wait_for,
)
from toolkit.formats import RunDir
from toolkit.training.checkpoint import list_checkpoints


@pytest.mark.parametrize(
    "target, checkpoints",
    [
        ("checkpoints/.tmp-step-", ["step-00000008"]),  # the first checkpoint of epoch 2 (step 12) fails
        ("/.tmp-last.safetensors", ["step-00000008", "step-00000012"]),  # step 12 is saved, the end of epoch 2 fails
    ],
)
def test_full_disk_keeps_the_last_good_checkpoint_and_resumes_after(
    one_epoch_run, tiny_shards, tmp_path, capsys, monkeypatch, target, checkpoints
):
    run, argv = continue_run(one_epoch_run, tiny_shards, tmp_path, "train.checkpoint_every_steps=4")
    before = finished_files(run)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the disk fills up while this file is being written
        if target in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert train_cli(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "train.resume=auto" in line
    after = finished_files(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing finished was overwritten
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == checkpoints
    assert_nothing_half_written(run)

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the same command resumes and finishes
    assert train_cli(argv) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs the test can fill and then grow ("free space"); skipped where mounting is not allowed."""

    mount = tmp_path / "disk"
    mount.mkdir()

    def resize(size: str, *, first: bool = False) -> None:
        options = f"size={size}" if first else f"remount,size={size}"
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {proc.stderr.strip()}")

    resize("64k", first=True)
    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("size, writer", [("800k", "safetensors"), ("1200k", "torch.save")])
def test_a_full_disk_is_one_resumable_line_from_every_writer(synthetic_shards, small_disk, capsys, size, writer):
    """800k: the checkpoint's model.safetensors fills it; 1200k: the optimizer's torch.save does (0.08M params)."""
    mount, resize = small_disk
    resize(size)
    argv = train_args(synthetic_shards, mount, "full", "train.epochs=2")
    assert train_cli(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "train.resume=auto output.run_name=full" in line
    resize("32m")  # space freed: the same command plus resume=auto finishes the run
    assert train_cli([*argv, "train.resume=auto"]) == 0
    assert [row["epoch"] for row in RunDir(mount / "full").read_history()] == [1, 2]


@pytest.mark.timeout(300)
def test_a_full_disk_in_a_two_process_run_stops_both_processes_with_one_line(synthetic_shards, small_disk):
    """The main process writes the files; the other rank learns of its failure instead of meeting a dead peer.

    The two ranks are started by hand (no launcher that would end the other), so what each prints is its own.
    """
    import os

    mount, resize = small_disk
    resize("800k")
    argv = [
        sys.executable,
        "-m",
        "toolkit.train",
        "--config",
        str(SMOKE),
        f"data.shards={synthetic_shards}",
        f"output.dir={mount}",
        "output.run_name=full2",
        "train.epochs=2",
        "train.batch_size=8",
        "tracking.wandb=disabled",
        "eval.plots=false",
    ]
    started = time.monotonic()
    ranks = [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **ENV,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29618",
            },
        )
        for r in (0, 1)
    ]
    (_, main_err), (_, other_err) = (wait_for(proc, 120) for proc in ranks)
    assert [proc.returncode for proc in ranks] == [1, 1] and time.monotonic() - started < 90
    assert main_err.count("error: No space left on device") == 1, main_err[-3000:]
    assert "Traceback" not in other_err and "error:" not in other_err, other_err[-3000:]  # stopped, quietly
    assert os.environ.get("RANK") is None  # the test itself never became a rank
