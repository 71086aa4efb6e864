"""Decode and crop: the per-image work of the loader workers, shared with ``predict`` and the plots.

Workers only decode, crop and flip, and ship uint8 crops; float conversion, normalization,
colour jitter (``data.jitter_on=device``) and random erasing run on the whole batch on the
training device (``toolkit.data.device_augment``).
"""

from __future__ import annotations

import io
import math

import torch
from PIL import Image
from torchvision.transforms import v2

from toolkit.errors import UsageError

# What photos come as. Pillow would otherwise try every format it knows (EPS and PDF call Ghostscript).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")  # JPEG also opens multi-picture (MPO) files


def open_image(data: bytes) -> Image.Image:
    """Image bytes opened lazily, as one of IMAGE_FORMATS only."""
    return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)


def decode_jpeg(data: bytes, min_side_hint: int = 0) -> Image.Image:
    """Decode image bytes to RGB, letting libjpeg shrink by 2/4/8 while decoding when allowed.

    JPEG's draft mode scales in the DCT domain, so decoding a large image for a small target
    costs a fraction of a full decode; the shorter side stays >= ``min_side_hint`` (0: full size).
    Raises on truncated or corrupt data (the caller decides to skip or fail).
    """
    image = open_image(data)
    if min_side_hint > 0 and image.format == "JPEG":
        width, height = image.size
        scale = min_side_hint / min(width, height)
        if scale <= 0.5:
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_transform_config(cfg) -> None:
    scale = list(cfg.crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise UsageError(f"data.crop_scale={scale} must be two numbers 0 < low <= high <= 1")
    if cfg.color_jitter is not None and len(cfg.color_jitter) != 4:
        raise UsageError(
            f"data.color_jitter={cfg.color_jitter} must be 4 numbers (brightness, contrast, saturation, hue) or null"
        )


def build_train_transform(cfg):
    """PIL image -> uint8 [3, S, S] crop: random crop, flip, and the augmentation that needs PIL.

    Float conversion, normalization, random erasing and (with ``data.jitter_on=device``) colour
    jitter happen on the whole batch on the training device: ``toolkit.device_augment.batch_to_device``.
    """
    _check_transform_config(cfg)
    steps = [v2.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), antialias=True)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.color_jitter and cfg.jitter_on == "workers":
        steps.append(v2.ColorJitter(*cfg.color_jitter))
    if cfg.augment == "trivialaugment":  # one random op per image at a random strength, on the small crop
        steps.append(v2.TrivialAugmentWide())
    elif cfg.augment == "randaugment":
        steps.append(v2.RandAugment())
    steps += [v2.ToImage(), v2.ToPureTensor()]
    return v2.Compose(steps)


def build_eval_transform(cfg):
    """PIL image -> normalized float tensor: resize the shorter side, center crop (``cfg`` resolved: its mean/std set)."""
    return v2.Compose(
        [
            v2.Resize(cfg.resize_size, antialias=True),
            v2.CenterCrop(cfg.image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(cfg.mean), list(cfg.std)),
            v2.ToPureTensor(),
        ]
    )


def decode_hint(cfg) -> int:
    return max(cfg.resize_size, cfg.image_size)
