"""One training step, the only one in the toolkit: the training loop and ``bench`` both run it.

So a benchmark measures exactly what users train with: Accelerate's mixed precision and loss
scaling, gradient accumulation without gradient sync until the window closes, clipping, the
schedule (not stepped when fp16 skipped the update), and the EMA.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn


def all_finite(accelerator, loss: torch.Tensor) -> bool:
    """True when the loss is finite on every process (so all ranks skip a bad batch together)."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, "min")
    return bool(flag.item() > 0)


def training_loss(
    class_weights: Union[str, Sequence[float]], label_smoothing: float, device: torch.device
) -> nn.CrossEntropyLoss:
    """The training loss: cross-entropy with ``train.class_weights`` (resolved: ``none`` or one per class).

    Weights and label smoothing combine as ``F.cross_entropy(weight=, label_smoothing=)`` defines it
    (the weighted mean over the batch). Validation loss is computed elsewhere, unweighted.
    """
    if isinstance(class_weights, str) and class_weights != "none":  # a bug: resolve_config turns it into a list
        raise ValueError(f"train.class_weights = {class_weights!r} was not resolved into one weight per class")
    weight = None if class_weights == "none" else torch.tensor(list(class_weights), dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing).to(device)


class TrainStep:
    """Forward, loss and backward per micro-batch; ``update`` closes an accumulation window.

    ``model`` and ``optimizer`` are the ones ``accelerator.prepare`` returned; ``raw_model`` is
    the unwrapped module the EMA follows.
    """

    def __init__(
        self,
        accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable,
        *,
        scheduler=None,
        ema=None,
        raw_model: Optional[nn.Module] = None,
        grad_clip: float = 0.0,
        accum_steps: int = 1,
    ) -> None:
        self.accelerator, self.model, self.optimizer, self.criterion = accelerator, model, optimizer, criterion
        self.scheduler, self.ema, self.raw_model = scheduler, ema, raw_model if raw_model is not None else model
        self.grad_clip, self.accum_steps = grad_clip, accum_steps

    def forward_backward(
        self, images: torch.Tensor, labels: torch.Tensor, *, sync: bool = True, skip_nonfinite: bool = False
    ) -> Optional[torch.Tensor]:
        """The micro-batch's loss (detached), or None when it was non-finite and ``skip_nonfinite`` dropped it."""
        with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
            logits = self.model(images)
            loss = self.criterion(logits.float(), labels)
            if skip_nonfinite and not all_finite(self.accelerator, loss):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            self.accelerator.backward(loss / self.accum_steps)
        return loss.detach()

    def update(self) -> None:
        if self.grad_clip:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None and not self.accelerator.optimizer_step_was_skipped:
            self.scheduler.step()  # fp16 overflow skipped the update: keep the LR where it was
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """A whole step on one batch (no accumulation), as the benchmarks time it."""
        loss = self.forward_backward(images, labels)
        self.update()
        return loss
