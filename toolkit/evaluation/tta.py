"""Test-time augmentation (TTA): one prediction from several views of each image.

The counterparts are timm's ``validate.py`` test-time pooling/flip and torchvision's ``TenCrop``. Every
mode works on the model's input batch ``x`` ``[B, C, S, S]`` (already resized and center-cropped by the
model's own eval transform), so evaluate, predict and training's final evaluation share this one
function and every sample is predicted from its own pixels alone (1 and N processes agree):

- ``none``: ``model(x)``, untouched (bit-identical to evaluation without TTA).
- ``hflip``: the mean of the softmax of ``x`` and of ``x`` flipped left-right (2 views).
- ``hflip_crops``: 10 views, as ``TenCrop``: ``x`` itself in place of TenCrop's center crop, plus its four
  corner crops of side ``round(S * CROP_FRACTION)`` (top-left, top-right, bottom-left, bottom-right),
  each resized back to ``S x S`` (bilinear, antialiased) so fixed-size models take them; and each of the
  5 flipped left-right. The softmax of the 10 views is averaged.

The result is returned as logits, ``log(mean probabilities)``, so softmax, argmax, cross-entropy and
every metric downstream are those of the averaged distribution without a second code path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toolkit.config import TTA_MODES  # the config's choices; each is defined here

__all__ = ["TTA_MODES", "CROP_FRACTION", "apply_tta", "corner_crops", "tta_views"]
CROP_FRACTION = 0.875  # corner crop side as a share of the input side (224 -> 196), timm's default crop_pct


def _flip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[-1])


def corner_crops(x: torch.Tensor) -> list[torch.Tensor]:
    """The four corner crops of side ``round(S * CROP_FRACTION)``, each resized back to ``x``'s size."""
    height, width = x.shape[-2:]
    side_h, side_w = round(height * CROP_FRACTION), round(width * CROP_FRACTION)
    corners = [(0, 0), (0, width - side_w), (height - side_h, 0), (height - side_h, width - side_w)]
    crops = [x[..., top : top + side_h, left : left + side_w] for top, left in corners]
    return [
        F.interpolate(crop.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True).to(
            x.dtype
        )
        for crop in crops
    ]


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views ``mode`` averages over, in a fixed order (see the module docstring)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; one of {', '.join(TTA_MODES)}")
    if mode == "none":
        return [x]
    bases = [x] + (corner_crops(x) if mode == "hflip_crops" else [])
    return [view for base in bases for view in (base, _flip(base))]


def apply_tta(model: torch.nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """The model's logits for ``x`` [B, C]; with TTA, ``log`` of its softmax averaged over ``tta_views``."""
    views = tta_views(x, mode)
    if mode == "none":
        return model(x)
    probs = torch.stack([torch.softmax(model(view).float(), dim=1) for view in views]).mean(0)
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))  # finite: a zero probability stays tiny
