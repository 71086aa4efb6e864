"""Resuming reads only safetensors, JSON and weights-only pickles; a pickle planted in a checkpoint never runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import (
    error_line,
    plant_pickle,
    train_args,
    train_cli,
)
from toolkit.training.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def ema_run(tiny_shards, tmp_path_factory) -> Path:
    """A finished 1-epoch run with EMA weights; copy before changing."""
    out = tmp_path_factory.mktemp("ema")
    assert (
        train_cli(train_args(tiny_shards, out, "run", "train.epochs=1", "eval.test_split=null", "train.ema_decay=0.9"))
        == 0
    )
    return out / "run"


def test_resume_reads_only_safetensors_json_and_weights_only_pickles(ema_run, tiny_shards, tmp_path, monkeypatch):
    (ckpt,) = list_checkpoints(ema_run / "checkpoints")
    # accelerate.save_state(safe_serialization=True) + ours; nothing that accelerate would load with
    # weights_only=False (custom_checkpoint_*.pkl) and no pickled model (pytorch_model.bin)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "best_model.safetensors",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "trainer_state.json",
    ]
    shutil.copytree(ema_run, tmp_path / "run")
    loads, real_load = [], torch.load

    def spy(f, *args, **kwargs):
        loads.append((Path(f).name, kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert (
        train_cli(
            train_args(tiny_shards, tmp_path, "run", "train.resume=auto", "eval.test_split=null", "train.ema_decay=0.9")
        )
        == 0
    )
    resume_loads = [entry for entry in loads if entry[0] in ("optimizer.bin", "random_states_0.pkl")]
    assert sorted(resume_loads) == [("optimizer.bin", True), ("random_states_0.pkl", True)]
    assert all(weights_only is True for _, weights_only in loads), loads


@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl"])
def test_a_planted_pickle_in_a_checkpoint_never_runs(ema_run, tiny_shards, tmp_path, capsys, victim):
    shutil.copytree(ema_run, tmp_path / "run")
    (ckpt,) = list_checkpoints(tmp_path / "run" / "checkpoints")
    marker = tmp_path / "pwned"
    plant_pickle(ckpt / victim, marker)
    code = train_cli(
        train_args(tiny_shards, tmp_path, "run", "train.resume=auto", "eval.test_split=null", "train.ema_decay=0.9")
    )
    assert not marker.exists()
    if victim == "optimizer.bin":  # needed to resume: refused in one line
        assert code == 2
        line = error_line(capsys.readouterr().err)
        assert "cannot resume from" in line and ckpt.name in line and "refused unread" in line
    else:  # Accelerate skips RNG states it cannot load; our batches are seeded per (seed, epoch, rank, batch)
        assert code == 0
