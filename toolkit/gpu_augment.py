"""JPEG decoding and augmentation on the accelerator, for when CPU cores cannot keep up.

With ``data.decode: gpu`` the loader workers only read and batch the JPEG bytes; the training
process decodes the whole batch with nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``) and
applies the same augmentation as the CPU path, batched: RandomResizedCrop as one ``roi_align``
call over the batch (crop and resize in one kernel), horizontal flip, optional brightness /
contrast / saturation jitter, normalization. Sixteen CPU cores decode about 3,300 original-size
images/s (REFERENCE.md), less than a compiled ResNet-101 consumes on one H100; the GPU decoder does
not share that limit. On a machine without CUDA the same code runs on the CPU (used by the tests).

Differences from the CPU path, by design: bilinear sampling (``roi_align`` with 2x2 samples per
output pixel) instead of PIL's antialiased resize, and no hue jitter (it needs an HSV round trip
that costs more than it brings). Crop parameters follow torchvision's RandomResizedCrop.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align


def decode_batch(jpegs: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 1-D tensors of JPEG bytes -> uint8 [3, H, W] images on ``device`` (one batched call on CUDA)."""
    data = [j if j.dtype == torch.uint8 else j.to(torch.uint8) for j in jpegs]
    if device.type == "cuda":
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]


def random_resized_boxes(sizes: Sequence[tuple[int, int]], scale: Sequence[float], generator: torch.Generator,
                         ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for a batch: boxes [N, 4] as (x1, y1, x2, y2)."""
    boxes = []
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for height, width in sizes:
        area = height * width
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
            aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                break
        else:  # fallback: central crop within the ratio bounds
            in_ratio = width / height
            if in_ratio < ratio[0]:
                w, h = width, int(round(width / ratio[0]))
            elif in_ratio > ratio[1]:
                h, w = height, int(round(height * ratio[1]))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
        boxes.append((left, top, left + w, top + h))
    return torch.tensor(boxes, dtype=torch.float32)


def center_boxes(sizes: Sequence[tuple[int, int]], image_size: int, resize_size: int) -> torch.Tensor:
    """The region that Resize(resize_size) + CenterCrop(image_size) keeps, in original pixels."""
    boxes = []
    for height, width in sizes:
        crop = min(height, width) * image_size / resize_size
        top, left = (height - crop) / 2, (width - crop) / 2
        boxes.append((left, top, left + crop, top + crop))
    return torch.tensor(boxes, dtype=torch.float32)


def crop_resize(images: list[torch.Tensor], boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """Crop every box and resize it to ``image_size`` in one roi_align call per image size group."""
    device = images[0].device
    out = torch.empty(len(images), 3, image_size, image_size, device=device, dtype=torch.float32)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape[1:]), []).append(index)
    for indices in by_shape.values():  # roi_align needs one input tensor: stack images of equal size
        stacked = torch.stack([images[i] for i in indices]).float()
        rois = torch.cat([torch.arange(len(indices), dtype=torch.float32).unsqueeze(1), boxes[indices]], dim=1)
        out[indices] = roi_align(stacked, rois.to(device), output_size=image_size, spatial_scale=1.0,
                                 sampling_ratio=2, aligned=True)
    return out / 255.0


def jitter(images: torch.Tensor, strengths: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter with one random factor per image (hue is not applied)."""
    n = images.shape[0]

    def factors(strength: float) -> torch.Tensor:
        return torch.empty(n).uniform_(max(0.0, 1 - strength), 1 + strength, generator=generator).to(images.device).view(n, 1, 1, 1)

    brightness, contrast, saturation = (list(strengths) + [0, 0, 0])[:3]
    if brightness:
        images = (images * factors(brightness)).clamp_(0, 1)
    if contrast:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * factors(contrast) + mean).clamp_(0, 1)
    if saturation:
        gray = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])
        images = ((images - gray) * factors(saturation) + gray).clamp_(0, 1)
    return images


def gpu_transform(jpegs: Sequence[torch.Tensor], cfg, mean: Sequence[float], std: Sequence[float], *, train: bool,
                  device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Decode and augment a batch of JPEG bytes on ``device``: float [N, 3, S, S], normalized."""
    images = decode_batch(jpegs, device)
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    generator = generator or torch.Generator().manual_seed(0)
    if train:
        boxes = random_resized_boxes(sizes, cfg.crop_scale, generator)
    else:
        boxes = center_boxes(sizes, cfg.image_size, cfg.resize_size)
    batch = crop_resize(images, boxes, cfg.image_size)
    if train and cfg.hflip:
        flip = (torch.rand(len(images), generator=generator) < 0.5).to(device)
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
    if train and cfg.color_jitter:
        batch = jitter(batch, cfg.color_jitter, generator)
    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def batch_to_device(batch: dict, data_cfg, mean: Sequence[float], std: Sequence[float], device: torch.device, *,
                    memory_format: torch.memory_format = torch.contiguous_format, seed: int = 0) -> torch.Tensor:
    """The training images of a loader batch on ``device``: copied (CPU decode) or decoded there (``data.decode=gpu``)."""
    if "jpeg" in batch:
        images = gpu_transform(batch["jpeg"], data_cfg, mean, std, train=True, device=device,
                               generator=torch.Generator().manual_seed(seed))
    else:
        images = batch["image"].to(device, non_blocking=True)
    return images.contiguous(memory_format=memory_format)
