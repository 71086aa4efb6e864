"""Optimizers, the learning-rate schedule and the weight EMA, built from the config.

The schedule is a function of the optimizer step (not the epoch), so warmup, step decay and
cosine decay behave the same whatever the batch size, accumulation or number of processes.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from toolkit.config import OptimizerConfig, SchedulerConfig
from toolkit.models.pretrained import HEAD_KEYS


def build_optimizer(
    params: Union[torch.nn.Module, Iterable[torch.nn.Parameter]], cfg: OptimizerConfig
) -> torch.optim.Optimizer:
    """The configured optimizer; pass the model itself to give the backbone its own LR (``backbone_lr_scale``)."""
    if cfg.backbone_lr_scale != 1.0:
        if not isinstance(params, torch.nn.Module):
            raise ValueError("optimizer.backbone_lr_scale needs the model (to tell the head from the backbone)")
        params = backbone_and_head(params, cfg)
    else:
        params = params.parameters() if isinstance(params, torch.nn.Module) else params
        params = parameter_groups(params, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "adam":  # weight decay as L2 in the gradient, as the seed experiment did
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":  # decoupled weight decay
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def parameter_groups(params: Iterable[torch.nn.Parameter], weight_decay: float, decay_norm_and_bias: bool) -> list:
    """Trainable parameters, optionally with 1-D ones (norm scales and shifts, biases) exempt from decay.

    A BatchNorm scale feeds the next BatchNorm, which undoes its size, so decaying it mostly shifts
    effective learning rates instead of regularizing; a decayed bias is only pulled towards zero.
    timm and the common ImageNet recipes exempt both. Returns a flat list when everything decays
    alike, so the optimizer state keeps its single group.
    """
    params = [p for p in params if p.requires_grad]
    if decay_norm_and_bias or weight_decay == 0:
        return params
    return [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def backbone_and_head(model: torch.nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Groups for fine-tuning: the new head at ``lr``, the pretrained backbone at ``lr * backbone_lr_scale``.

    Each keeps the weight-decay split of ``parameter_groups``; the schedule scales every group alike.
    """
    head = [p for name, p in model.named_parameters() if name in HEAD_KEYS]
    backbone = [p for name, p in model.named_parameters() if name not in HEAD_KEYS]
    groups = []
    for members, lr in ((backbone, cfg.lr * cfg.backbone_lr_scale), (head, cfg.lr)):
        split = parameter_groups(members, cfg.weight_decay, cfg.decay_norm_and_bias)
        if split and not isinstance(split[0], dict):  # everything decays alike: one group
            split = [{"params": split}]
        groups += [{**group, "lr": lr} for group in split]
    return groups


class LRSchedule:
    """Multiplier of the base LR at optimizer step ``s``: linear warmup, then step/cosine/constant."""

    def __init__(self, cfg: SchedulerConfig, steps_per_epoch: int, total_steps: int):
        self.name = cfg.name
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.step_size = max(1, cfg.step_epochs * steps_per_epoch)
        self.gamma = cfg.gamma
        self.min_ratio = cfg.min_lr_ratio
        self.total_steps = max(1, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "step":
            return self.gamma ** (step // self.step_size)
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(cfg, steps_per_epoch, total_steps))


def build_ema(model: torch.nn.Module, decay: Optional[float]) -> Optional[AveragedModel]:
    """An exponential moving average of weights and BN statistics, or None when disabled."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
