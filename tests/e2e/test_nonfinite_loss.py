"""A non-finite loss: the run stops naming the step and keeps the last good checkpoint, or skips the step when
train.skip_nonfinite=true."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

from helpers import (
    continue_run,
    error_line,
    finished_files,
    train_cli,
)
from toolkit.training.checkpoint import list_checkpoints


def _poison_training_forward(monkeypatch, nth: int) -> None:
    """The nth training-mode forward pass of the next run returns NaN logits."""
    import toolkit.training.loop

    build, seen = toolkit.training.loop.build_model, [0]

    def build_model(cfg):
        model = build(cfg)

        def hook(module, args, output):
            if module.training:
                seen[0] += 1
                if seen[0] == nth:
                    return output * float("nan")
            return None

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(toolkit.training.loop, "build_model", build_model)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(
    one_epoch_run, tiny_shards, tmp_path, capsys, monkeypatch
):
    run, argv = continue_run(one_epoch_run, tiny_shards, tmp_path, "train.checkpoint_every_steps=4")
    before = finished_files(run)
    _poison_training_forward(monkeypatch, nth=3)  # resumed at step 8: the 3rd step is step 11
    assert train_cli(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: loss became nan at step 11;") and "train.skip_nonfinite=true" in line
    # step 12's checkpoint (after the NaN update) was refused; everything finished before is as it was
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000008"]
    assert finished_files(run) == before
    assert all(torch.isfinite(t).all() for t in load_file(run / "checkpoints/step-00000008/model.safetensors").values())


def test_skip_nonfinite_skips_the_step_and_finishes(one_epoch_run, tiny_shards, tmp_path, capsys, monkeypatch):
    run, argv = continue_run(one_epoch_run, tiny_shards, tmp_path, "train.skip_nonfinite=true")
    _poison_training_forward(monkeypatch, nth=3)
    assert train_cli(argv) == 0
    out = capsys.readouterr().out
    assert "warning: non-finite loss at step 11; skipping this batch (train.skip_nonfinite=true)" in out
    final = json.loads((run / "final.json").read_text())
    assert final["global_step"] == 15  # 16 batches, one skipped
    assert all(torch.isfinite(t).all() for t in load_file(run / "last.safetensors").values())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(math.isfinite(r["train_loss"]) for r in rows)
