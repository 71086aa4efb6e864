"""Mixup and CutMix as timm defines them (``timm.data.mixup.Mixup``, its default ``mode='batch'``).

Applied on the device to each training micro-batch after ``batch_to_device``: one draw per micro-batch
decides whether it is mixed (``train.mix_prob``), mixup or CutMix (``train.mix_switch_prob`` when both
are on), the mixing weight lambda and CutMix's box; each image is mixed with the batch's mirror image
(``x.flip(0)``) and the targets become soft: timm's own ``mixup_target`` (label smoothing included) under
timm's own ``SoftTargetCrossEntropy``.

Why the draws are not timm's ``Mixup`` object: it draws from numpy's global RNG, whose state carries over
from step to step and differs per rank, so a run resumed mid-epoch or run on N processes would mix
differently from the uninterrupted 1-process run. Here every micro-batch draws from its own
``numpy.random.Generator`` seeded by (train.seed, epoch, step in the epoch, the micro-batch's slot j in the
global step) and by nothing else, whichever process runs it; the draws follow timm's ``_params_per_batch``,
``rand_bbox``, ``rand_bbox_minmax`` and ``cutmix_bbox_and_lam`` (with ``correct_lam``, timm's default) step
by step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import torch
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from toolkit.config import TrainConfig

Box = tuple[int, int, int, int]  # (top, bottom, left, right) as timm's (yl, yh, xl, xh)


@dataclasses.dataclass(frozen=True)
class MixDraw:
    lam: float  # the weight of the micro-batch's own images; 1.0: not mixed
    box: Optional[Box] = None  # CutMix's pasted box; None: mixup (or not mixed)


def cutmix_box(rng: np.random.Generator, height: int, width: int, lam: float, minmax: Optional[Sequence[float]]) -> Box:
    """timm's ``rand_bbox`` (a square of area 1 - lam around a random centre, clipped) or ``rand_bbox_minmax``."""
    if minmax is not None:
        cut_h = int(rng.integers(int(height * minmax[0]), int(height * minmax[1])))
        cut_w = int(rng.integers(int(width * minmax[0]), int(width * minmax[1])))
        top, left = int(rng.integers(0, height - cut_h + 1)), int(rng.integers(0, width - cut_w + 1))
        return top, top + cut_h, left, left + cut_w
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    return (
        min(max(cy - cut_h // 2, 0), height),
        min(max(cy + (cut_h + 1) // 2, 0), height),
        min(max(cx - cut_w // 2, 0), width),
        min(max(cx + (cut_w + 1) // 2, 0), width),
    )


def draw_mix(train: TrainConfig, rng: np.random.Generator, height: int, width: int) -> MixDraw:
    """One micro-batch's mixing, drawn as timm's ``_params_per_batch`` then ``cutmix_bbox_and_lam``."""
    if not train.mixing or rng.random() >= train.mix_prob:
        return MixDraw(1.0)
    cutmix_alpha = 1.0 if train.cutmix_minmax is not None else train.cutmix_alpha  # as timm forces it
    if train.mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = bool(rng.random() < train.mix_switch_prob)
        alpha = cutmix_alpha if use_cutmix else train.mixup_alpha
    else:
        use_cutmix = cutmix_alpha > 0
        alpha = cutmix_alpha if use_cutmix else train.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if lam == 1.0 or not use_cutmix:
        return MixDraw(lam)
    box = cutmix_box(rng, height, width, lam, train.cutmix_minmax)
    area = (box[1] - box[0]) * (box[3] - box[2])
    return MixDraw(1.0 - area / float(height * width), box)  # the share the box left, as correct_lam does


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, mix: MixDraw, num_classes: int, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images mixed with their mirror batch and timm's soft targets; an unmixed draw returns both untouched
    (hard labels, so it trains exactly as a run without mixing)."""
    if mix.lam == 1.0:
        return images, labels
    if mix.box is not None:
        top, bottom, left, right = mix.box
        images = images.clone()
        images[:, :, top:bottom, left:right] = images.flip(0)[:, :, top:bottom, left:right]
    else:
        images = images * mix.lam + images.flip(0) * (1.0 - mix.lam)
    return images, mixup_target(labels, num_classes, mix.lam, label_smoothing)


class Mixer:
    """The training loop's mixing: ``mixer(images, labels, position)`` for one micro-batch.

    ``position`` is the micro-batch's place in the run's sample order, (epoch, step in the epoch, j), as
    the loader gives it (``formats.sample_order``): the same on any process count and after a resume.
    """

    def __init__(self, train: TrainConfig, *, num_classes: int):
        self.train, self.num_classes = train, num_classes

    def draw(self, position: tuple[int, int, int], height: int, width: int) -> MixDraw:
        epoch, step, j = position
        return draw_mix(self.train, np.random.default_rng((self.train.seed, epoch, step, j)), height, width)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, position: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mix = self.draw(position, images.shape[-2], images.shape[-1])
        return mix_batch(images, labels, mix, self.num_classes, self.train.label_smoothing)


class MixedTargetLoss(nn.Module):
    """Hard labels go to the run's usual loss; soft (mixed) targets to timm's ``SoftTargetCrossEntropy``.

    With label smoothing both are the same function of the unmixed labels (timm's smoothed one-hot under
    the soft loss equals ``CrossEntropyLoss(label_smoothing=)``), so a micro-batch that drew no mixing
    computes exactly what a run without mixing computes.
    """

    def __init__(self, hard: nn.Module):
        super().__init__()
        self.hard, self.soft = hard, SoftTargetCrossEntropy()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.soft(logits, target) if target.is_floating_point() else self.hard(logits, target)
