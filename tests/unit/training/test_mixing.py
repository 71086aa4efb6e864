"""Mixup/CutMix (toolkit.training.mixing) against timm's own Mixup, its draws and its soft-target loss."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import timm.data.mixup as timm_mixup
import torch
import yaml

from toolkit.config import Config, OutputConfig, TrainConfig, to_dict
from toolkit.training.mixing import MixDraw, MixedTargetLoss, Mixer, draw_mix, mix_batch
from toolkit.training.run_folder import newest_matching_run
from toolkit.training.step import training_loss

NUM_CLASSES = 5
BOTH = TrainConfig(mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)


def batch(n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=gen), torch.tensor([0, 3, 1, 4, 2, 3][:n])


def timm_mix(images, labels, mix: MixDraw, monkeypatch, minmax=None) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup (mode batch) told to use this draw: its lambda/switch draw and its box draw replaced."""
    mixer = timm_mixup.Mixup(
        mixup_alpha=0.2, cutmix_alpha=1.0, cutmix_minmax=minmax, label_smoothing=0.1, num_classes=NUM_CLASSES
    )
    monkeypatch.setattr(mixer, "_params_per_batch", lambda: (mix.lam, mix.box is not None))
    monkeypatch.setattr(timm_mixup, "rand_bbox", lambda *a, **k: mix.box)
    monkeypatch.setattr(timm_mixup, "rand_bbox_minmax", lambda *a, **k: mix.box)
    return mixer(images.clone(), labels)


def draws(train: TrainConfig, n: int, size: int = 16) -> list[MixDraw]:
    return [draw_mix(train, np.random.default_rng(i), size, size) for i in range(n)]


@pytest.mark.parametrize("minmax", [None, [0.2, 0.8]])
def test_mixed_images_and_targets_equal_timms_and_targets_sum_to_one(minmax, monkeypatch):
    train = dataclasses.replace(BOTH, cutmix_minmax=minmax)
    mixes = [m for m in draws(train, 40) if m.lam != 1.0]
    assert {m.box is None for m in mixes} == {True, False}  # both kinds were checked
    images, labels = batch()
    for mix in mixes:
        ours_x, ours_y = mix_batch(images, labels, mix, NUM_CLASSES, 0.1)
        timm_x, timm_y = timm_mix(images, labels, mix, monkeypatch, minmax)
        assert torch.equal(ours_x, timm_x) and torch.equal(ours_y, timm_y), mix
        assert torch.allclose(ours_y.sum(1), torch.ones(len(labels)), atol=1e-6)
        assert ours_y.argmax(1).tolist() == (labels if mix.lam >= 0.5 else labels.flip(0)).tolist() or mix.lam == 0.5
        assert not torch.equal(ours_x, images)  # mixing did something
    assert torch.equal(images, batch()[0])  # the loader's tensor is left as it was


def test_a_cutmix_lambda_is_the_share_of_the_image_left_unpasted():
    for mix in draws(TrainConfig(cutmix_alpha=1.0), 30, size=20):
        top, bottom, left, right = mix.box
        assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 20
        assert mix.lam == pytest.approx(1 - (bottom - top) * (right - left) / 400)
    for mix in draws(TrainConfig(cutmix_minmax=[0.25, 0.5]), 30, size=20):
        top, bottom, left, right = mix.box
        assert 5 <= bottom - top < 10 and 5 <= right - left < 10  # timm: randint(int(h*min), int(h*max))


def test_the_probabilities_choose_as_timm_does():
    assert all(m.lam == 1.0 for m in draws(dataclasses.replace(BOTH, mix_prob=0.0), 50))
    assert all(m.lam != 1.0 for m in draws(BOTH, 50))  # mix_prob 1: always
    assert all(m.box is not None for m in draws(dataclasses.replace(BOTH, mix_switch_prob=1.0), 50))
    assert all(m.box is None for m in draws(dataclasses.replace(BOTH, mix_switch_prob=0.0), 50))
    half = draws(dataclasses.replace(BOTH, mix_prob=0.5), 400)
    assert 150 < sum(m.lam != 1.0 for m in half) < 250
    # mixup 0.2: Beta(0.2, 0.2) piles lambda near 0 and 1; CutMix 1.0: uniform
    mixup = [m.lam for m in draws(TrainConfig(mixup_alpha=0.2), 400)]
    assert sum(min(x, 1 - x) < 0.1 for x in mixup) > 0.5 * len(mixup)
    assert all(m.box is None for m in draws(TrainConfig(mixup_alpha=0.2), 20))


def test_a_micro_batch_draw_depends_on_its_place_in_the_order_only():
    """The draw is a function of (seed, epoch, step, j): no state carried from earlier draws, nothing of
    the process that runs it (the loader gives every micro-batch the same place on any process count)."""
    one = Mixer(BOTH, num_classes=NUM_CLASSES)
    places = [(epoch, step, j) for epoch in (0, 3) for step in (0, 5) for j in (0, 1)]
    assert len({one.draw(p, 16, 16) for p in places}) == len(places)  # each micro-batch its own draw
    later = one.draw((2, 7, 1), 16, 16)
    assert Mixer(BOTH, num_classes=NUM_CLASSES).draw((2, 7, 1), 16, 16) == later  # no carried state
    assert Mixer(dataclasses.replace(BOTH, seed=1), num_classes=NUM_CLASSES).draw((2, 7, 1), 16, 16) != later


LOGITS = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3], [0.1, 0.3, 1.2, -0.5, 0.0], [-0.4, 1.5, 0.2, 0.9, 1.1]])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_loss_of_mixed_targets_is_the_mixed_loss_by_hand(smoothing):
    labels = torch.tensor([1, 4, 0])
    loss = MixedTargetLoss(training_loss("none", smoothing, torch.device("cpu")))
    assert torch.equal(loss(LOGITS, labels), training_loss("none", smoothing, torch.device("cpu"))(LOGITS, labels))
    lam = 0.3
    _, targets = mix_batch(torch.zeros(3, 3, 4, 4), labels, MixDraw(lam), NUM_CLASSES, smoothing)
    logp = torch.log_softmax(LOGITS, 1).tolist()
    by_hand = 0.0
    for row, a, b in zip(logp, labels.tolist(), labels.flip(0).tolist()):
        ce = [-(1 - smoothing) * row[y] - smoothing * sum(row) / NUM_CLASSES for y in (a, b)]
        by_hand += lam * ce[0] + (1 - lam) * ce[1]
    assert float(loss(LOGITS, targets)) == pytest.approx(by_hand / 3, rel=1e-6)
    assert math.isfinite(by_hand) and float(loss(LOGITS, targets)) != pytest.approx(float(loss(LOGITS, labels)))


NEW_KEYS = ("class_weights", "mixup_alpha", "cutmix_alpha", "cutmix_minmax", "mix_prob", "mix_switch_prob")


def test_resume_auto_still_finds_a_run_saved_before_the_mixing_keys(tmp_path):
    """An unfinished run whose config.yaml predates these keys trained without mixing (and unweighted)."""
    cfg = Config(output=OutputConfig(dir=str(tmp_path), run_name=None))
    saved = to_dict(cfg)
    for key in NEW_KEYS:
        del saved["train"][key]
    (tmp_path / "old" / "checkpoints" / "step-00000008").mkdir(parents=True)
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert newest_matching_run(tmp_path, cfg) == ("old", None)
    mixing = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixup_alpha=0.2))
    assert newest_matching_run(tmp_path, mixing) == (None, None)  # it trained without mixing: not this run
