"""Kills and signals during training: a run killed or signalled at any point resumes with
train.resume=auto to the uninterrupted run's weights, and nothing half-written is ever read.

Kills are real signals. SIGKILL comes from outside when a checkpoint appears; where the window is
too short to hit from outside (an evaluation pass, a file write), a small driver script wraps one
function and signals its own process at that moment. The toolkit itself has no fault-injection hook.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest
import torch
from safetensors.torch import load_file

from helpers import (
    ENV,
    ROOT,
    assert_nothing_half_written,
    train_args,
    wait_for,
)
from toolkit.fileio import TMP_PREFIX
from toolkit.training.checkpoint import list_checkpoints

# ---------------------------------------------------------------------------------------------
# Kills and signals during training


# Runs toolkit.train and, at the Nth time the chosen point is reached in this process, sends the
# chosen signal to itself: the same as a kill from outside at exactly that moment.
DRIVER = r"""
import io, json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
point, sig, nth = sys.argv[1], getattr(signal, "SIG" + sys.argv[2]), int(sys.argv[3])
import torch
import toolkit.formats
import toolkit.training.loop
from toolkit.cli import run_cli

seen = 0
def due():
    global seen
    seen += 1
    return seen == nth

def fire():
    os.kill(os.getpid(), sig)

if point in ("train-step", "eval"):  # a forward pass in training / evaluation mode
    build = toolkit.training.loop.build_model
    def build_model(cfg):
        model = build(cfg)
        def hook(module, args):
            if module.training == (point == "train-step") and due():
                fire()
        model.register_forward_pre_hook(hook)
        return model
    toolkit.training.loop.build_model = build_model
elif point == "checkpoint-write":  # half of a checkpoint's torch.save file is on disk
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if due():
            buffer = io.BytesIO()
            real_save(obj, buffer)
            Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            fire()
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
elif point == "model-write":  # last.safetensors half written under its temporary name
    real_replace = os.replace
    def replace(src, dst):
        if Path(dst).name == "last.safetensors" and due():
            os.truncate(src, os.path.getsize(src) // 2)
            fire()
        return real_replace(src, dst)
    os.replace = replace
elif point == "metrics-append":  # half a line of metrics.jsonl on disk
    real_append = toolkit.formats.run_dir.append_jsonl
    def append_jsonl(path, obj):
        if due():
            line = json.dumps(obj) + "\n"
            with open(path, "a") as handle:
                handle.write(line[: len(line) // 2])
            fire()
        return real_append(path, obj)
    toolkit.formats.run_dir.append_jsonl = append_jsonl

import toolkit.train
run_cli(toolkit.train.main, sys.argv[4:])
"""

# (what happens, driver point, signal, nth time the point is reached, expected exit code);
# each stage restarts with train.resume=auto from whatever the previous one left behind.
STAGES = [
    ("SIGTERM during a training step", "train-step", "TERM", 3, 128 + signal.SIGTERM),
    ("SIGKILL during evaluation", "eval", "KILL", 1, -signal.SIGKILL),
    ("Ctrl-C (SIGINT) during a training step", "train-step", "INT", 2, 128 + signal.SIGINT),
    ("SIGKILL in the middle of a checkpoint write", "checkpoint-write", "KILL", 1, -signal.SIGKILL),
    ("SIGKILL while last.safetensors is half written", "model-write", "KILL", 1, -signal.SIGKILL),
    ("SIGKILL in the middle of a metrics.jsonl line", "metrics-append", "KILL", 1, -signal.SIGKILL),
    ("the final uninterrupted restart", "none", "KILL", 0, 0),
]
STOP_MESSAGE = re.compile(
    r"stopped by a stop signal at epoch (\d+), step (\d+); checkpoint (\S+)\. "
    r"Resume with the same command plus train\.resume=auto output\.run_name=killed"
)


def _launch(driver: Path, point: str, signame: str, nth: int, argv: Sequence[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(driver), point, signame, str(nth), *argv],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(600)
def test_killed_and_signalled_run_resumes_to_the_uninterrupted_weights(tiny_shards, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    # 3 epochs of 8 steps: room for every stage below even if the first kill lands a few steps late
    common = ["train.epochs=3", "train.checkpoint_every_steps=3", "train.log_every_steps=2", "eval.test_split=null"]
    straight = _launch(driver, "none", "KILL", 0, train_args(tiny_shards, tmp_path, "straight", *common))
    try:
        argv = train_args(tiny_shards, tmp_path, "killed", *common, "train.resume=auto")
        _kill_and_resume_again_and_again(driver, argv, tmp_path / "killed")
        out, err = wait_for(straight)
    finally:
        straight.kill()
    assert straight.returncode == 0, err[-3000:]

    run = tmp_path / "killed"
    reference, resumed = load_file(tmp_path / "straight" / "last.safetensors"), load_file(run / "last.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
    rows_a = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows_a] == [(1, 8), (2, 16), (3, 24)]
    assert [(r["epoch"], r["step"]) for r in rows_b] == [(r["epoch"], r["step"]) for r in rows_a]
    for a, b in zip(rows_a, rows_b):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    leftovers = [str(p) for p in run.rglob(f"{TMP_PREFIX}*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def _kill_and_resume_again_and_again(driver: Path, argv: list[str], run: Path) -> None:
    # SIGKILL from outside, a moment after the first checkpoint appears (typically in step 4)
    proc = _launch(driver, "none", "KILL", 0, argv)
    deadline = time.monotonic() + 240
    try:
        while not list_checkpoints(run / "checkpoints"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
    finally:
        proc.kill()
    wait_for(proc)
    assert proc.returncode == -signal.SIGKILL
    assert_nothing_half_written(run)

    for what, point, signame, nth, expected in STAGES:
        proc = _launch(driver, point, signame, nth, argv)
        out, err = wait_for(proc)
        assert "resumed from" in out, f"{what}: did not resume\n{out[-2000:]}"
        assert proc.returncode == expected, f"{what}: exit code {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
        assert_nothing_half_written(run, torn_metrics_tail=point == "metrics-append")
        if signame in ("TERM", "INT"):  # a checkpoint, then a clean exit that says how to resume
            stopped = STOP_MESSAGE.search(out)
            assert stopped, f"{what}: no resume instructions in\n{out[-2000:]}"
            step, path = int(stopped.group(2)), Path(stopped.group(3))
            assert path.name == f"step-{step:08d}" and path in list_checkpoints(run / "checkpoints")
        if point == "checkpoint-write":  # the half-written checkpoint is under a name resuming never reads
            assert list((run / "checkpoints").glob(f"{TMP_PREFIX}step-*"))
        if point == "model-write":
            assert list(run.glob(f"{TMP_PREFIX}last.safetensors*"))
