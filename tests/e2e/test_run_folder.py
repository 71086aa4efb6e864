"""No run is ever lost: a re-run gets a new folder, resume=auto finds the right run, two writers are refused."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from helpers import (
    error_line,
    pack_tiny,
    train_args,
    train_cli,
)
from toolkit.formats import RunDir


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("run-folder"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rerunning_a_config_keeps_the_earlier_run_and_resume_auto_continues_it(tiny_shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_cli(train_args(tiny_shards, runs, "again", "train.epochs=2")) == 0
    first = RunDir(runs / "again")
    model, checkpoints = sha(first.model), sorted(p.name for p in first.checkpoints.iterdir())
    capsys.readouterr()

    assert train_cli(train_args(tiny_shards, runs, "again", "train.epochs=1")) == 0
    out = capsys.readouterr().out
    assert "output.run_name=again already holds a run" in out and "this run is again-2" in out
    assert len(first.read_history()) == 2 and sha(first.model) == model  # the first run is untouched ...
    assert sorted(p.name for p in first.checkpoints.iterdir()) == checkpoints  # ... checkpoints included
    assert len(RunDir(runs / "again-2").read_history()) == 1

    assert train_cli(train_args(tiny_shards, runs, "again", "train.epochs=2", "train.resume=auto")) == 0
    assert "resumed from" in capsys.readouterr().out  # the named run, not a new version
    assert not (runs / "again-3").exists() and len(first.read_history()) == 2
    assert not first.lock.exists()  # released at the end


def test_resume_auto_without_a_name_takes_the_newest_run_with_the_same_config(tiny_shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_cli(train_args(tiny_shards, runs, "mine", "train.epochs=1", "train.max_steps=3")) == 0
    assert (
        train_cli(train_args(tiny_shards, runs, "other", "train.epochs=1", "train.max_steps=3", "optimizer.lr=1e-3"))
        == 0
    )  # newer, but another job's config
    capsys.readouterr()
    argv = train_args(tiny_shards, runs, "x", "train.epochs=1", "train.resume=auto", "output.run_name=null")
    assert train_cli(argv) == 0
    out = capsys.readouterr().out
    assert f"train.resume=auto: resuming {runs / 'mine'}" in out and "resumed from" in out
    assert len(RunDir(runs / "mine").read_history()) == 1 and RunDir(runs / "other").read_history() == []


def test_two_live_writers_are_refused_and_a_dead_one_s_lock_is_taken_over(tiny_shards, tmp_path, capsys):
    run = RunDir(tmp_path / "runs" / "busy")
    run.root.mkdir(parents=True)
    holder = f"{socket.gethostname()} {os.getppid()}"  # a live process that is not this one (an older lock format)
    run.lock.write_text(holder + "\n")
    argv = train_args(
        tiny_shards, tmp_path / "runs", "busy", "train.epochs=1", "train.max_steps=1", "train.resume=auto"
    )
    assert train_cli(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert "is being written by another process" in line and f"pid {os.getppid()}" in line
    assert "output.lock_expiry_s=300" in line
    assert run.lock.read_text().strip() == holder  # never another process's lock removed

    run.lock.write_text(f"{socket.gethostname()} 999999999\n")  # no such process: a killed run's lock
    assert train_cli(argv) == 0
    assert not run.lock.exists()


def test_an_unwritable_output_folder_is_one_line(tiny_shards, tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert train_cli(train_args(tiny_shards, blocked, "x", "train.epochs=1")) == 2
    assert "is not writable" in error_line(capsys.readouterr().err)


def test_unwritable_output_folder_fails_before_training(tiny_shards, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    assert train_cli(train_args(tiny_shards, blocker / "runs", "run")) == 2
    captured = capsys.readouterr()
    assert "not writable" in error_line(captured.err) and "output.dir" in captured.err
    assert "epoch 1/" not in captured.out + captured.err  # refused before the first batch
