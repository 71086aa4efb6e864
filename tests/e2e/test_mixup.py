"""Mixup/CutMix in the training loop: off equals absent, a stopped run resumes bit for bit with the same
mixing, and 2 processes equal 1 process accumulating 2 micro-batches (toolkit.training.mixing)."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_distributed import DRIVER, EXACT, _finish, _popen
from test_stop_signal import run_signalled

from helpers import LAUNCH_2, ROOT, SMOKE, error_line, train_args, train_cli
from toolkit.config import TrainConfig
from toolkit.training.mixing import Mixer

MIX = ("train.mixup_alpha=0.4", "train.cutmix_alpha=1.0", "train.label_smoothing=0.1")


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last.safetensors")


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_mix_prob_0_trains_exactly_as_no_mixing_and_mix_prob_1_does_not(tiny_shards, tmp_path):
    common = ("train.epochs=1", "eval.test_split=null")
    for name, extra in [("plain", ()), ("prob0", (*MIX, "train.mix_prob=0")), ("prob1", MIX)]:
        smoothing = () if "train.label_smoothing=0.1" in extra else ("train.label_smoothing=0.1",)
        assert train_cli(train_args(tiny_shards, tmp_path, name, *common, *smoothing, *extra)) == 0
    assert same_weights(tmp_path / "plain", tmp_path / "prob0")
    assert history(tmp_path / "plain")[0]["train_loss"] == history(tmp_path / "prob0")[0]["train_loss"]
    assert not same_weights(tmp_path / "plain", tmp_path / "prob1")
    config = (tmp_path / "prob1" / "config.yaml").read_text()
    assert "mixup_alpha: 0.4" in config and "cutmix_alpha: 1.0" in config


def test_a_run_stopped_mid_epoch_resumes_bit_identically_with_the_same_mixing(tiny_shards, tmp_path):
    """Every run in a child process of the same environment (thread counts change float sums)."""
    argv = ("train.log_every_steps=100", "eval.test_split=null", *MIX)
    # SIGTERM in the 3rd training forward pass: checkpointed after step 3 of epoch 1's 8
    code, _, err = run_signalled(tmp_path, tiny_shards, "train", 3, *argv)
    assert code == 143 and "stopped by a stop signal at epoch 1, step 3" in err + _, err[-2000:]
    never = 10**9  # the same driver, never signalled
    code, _, err = run_signalled(tmp_path, tiny_shards, "train", never, "train.resume=auto", *argv)
    assert code == 0 and "resumed from" in _, err[-2000:]
    (tmp_path / "whole").mkdir()
    code, _, err = run_signalled(tmp_path / "whole", tiny_shards, "train", never, *argv)
    assert code == 0, err[-2000:]
    assert same_weights(tmp_path / "run", tmp_path / "whole" / "run")
    resumed, whole = history(tmp_path / "run"), history(tmp_path / "whole" / "run")
    # the epoch's mean loss is summed in another order across the stop: equal to float rounding
    assert [r["train_loss"] for r in resumed] == pytest.approx([r["train_loss"] for r in whole], rel=1e-6)


def test_class_weights_with_mixing_are_refused_in_one_line(tiny_shards, tmp_path, capsys):
    argv = train_args(tiny_shards, tmp_path, "refused", "train.class_weights=balanced", "train.cutmix_alpha=1.0")
    assert train_cli(argv) == 2
    assert "class_weights cannot be combined with mixup/cutmix" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "refused").exists()


def write_planted_shards(folder: Path, groups: int = 8, size: int = 24) -> None:
    """One train shard whose order makes 2 ranks (samples r, r + 2, ...) and 1 process (consecutive
    samples) see the same micro-batches at batch 4: per 8 samples, images a b b c b c c d; a val shard."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)

    def image(label: int) -> tuple[int, bytes]:
        pixels = (rng.integers(0, 150, (size, size, 3)) + 100 * label).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        return label, buffer.getvalue()

    train = []
    for _ in range(groups):
        a, b, c, d = (image(int(rng.integers(2))) for _ in range(4))
        train += [a, b, b, c, b, c, c, d]
    splits = {}
    for split, samples in (("train", train), ("val", [image(i % 2) for i in range(9)])):
        with tarfile.open(folder / f"{split}-000000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i, (label, jpeg) in enumerate(samples):
                for ext, payload in (("cls", str(label).encode()), ("jpg", jpeg)):
                    member = tarfile.TarInfo(f"{split}_{i:04d}.{ext}")
                    member.size = len(payload)
                    tar.addfile(member, io.BytesIO(payload))
        entries = [{"name": f"{split}-000000.tar", "num_samples": len(samples)}]
        splits[split] = {"num_samples": len(samples), "shards": entries}
    info = {"format_version": 1, "dataset": "planted", "synthetic": True, "classes": ["cat", "dog"], "splits": splits}
    info["normalization"] = {"mean": [0.5] * 3, "std": [0.25] * 3}
    (folder / "info.json").write_text(json.dumps(info))


@pytest.mark.timeout(600)
def test_two_processes_mixing_equal_one_process_accumulating_two_micro_batches(tmp_path):
    shards = tmp_path / "shards"
    write_planted_shards(shards)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))  # GroupNorm: per-sample, so the layouts can be equal
    args = ["--config", str(SMOKE), f"data.shards={shards}", f"output.dir={tmp_path}", *EXACT, *MIX]
    args += ["train.batch_size=4", "data.image_size=24", "data.resize_size=24"]
    two = _popen([*LAUNCH_2, "--main_process_port", "29631", str(driver), *args, "output.run_name=two"])
    one = _popen([sys.executable, str(driver), *args, "output.run_name=one", "train.grad_accum_steps=2"])
    _finish(two)
    _finish(one)

    final = json.loads((tmp_path / "two" / "final.json").read_text())
    assert final["num_processes"] == 2 and final["rank_weight_checksums"][0] == final["rank_weight_checksums"][1]
    rows = {run: history(tmp_path / run) for run in ("one", "two")}
    assert [r["step"] for r in rows["two"]] == [r["step"] for r in rows["one"]] == [8, 16]
    for a, b in zip(rows["one"], rows["two"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    one_w, two_w = weights(tmp_path / "one"), weights(tmp_path / "two")
    gap = max(float((one_w[k] - two_w[k]).abs().max()) for k in one_w)
    assert gap < 1e-5, gap
    # and the runs did mix: most micro-batches of the 16 steps drew a mixup or a CutMix
    mixer = Mixer(TrainConfig(seed=0, mixup_alpha=0.4, cutmix_alpha=1.0), num_classes=2)
    drawn = [mixer.draw((epoch, step, j), 24, 24) for epoch in (0, 1) for step in range(8) for j in (0, 1)]
    assert sum(d.box is not None for d in drawn) > 5 and sum(d.box is None and d.lam != 1 for d in drawn) > 5
