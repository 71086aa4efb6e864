"""The last steps of the training input, batched on the training device, and optional GPU decoding.

Loader workers hand over uint8 crops (4x fewer bytes between processes and to the GPU than
float32); ``batch_to_device`` turns a batch into model input where the model runs: float
conversion, colour jitter (``data.jitter_on=device``), normalization and random erasing, with
one random draw per image. On a GPU these cost next to nothing; in the workers the same colour
jitter is the most expensive step of the pipeline (torchvision's HSV hue shift alone takes about
2 ms per 224 px image on one core, more than decoding a pre-resized JPEG).

With ``data.decode: gpu`` the workers only read and batch the JPEG bytes; the training process
decodes the whole batch with nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``) and crops it
as one ``roi_align`` call (bilinear with 2x2 samples per output pixel instead of PIL's antialiased
resize; crop parameters follow torchvision's RandomResizedCrop). Sixteen CPU cores decode about
3,300 original-size images/s (docs/sources.md), less than a compiled ResNet-101 consumes on one
H100; the GPU decoder does not share that limit. Without CUDA the same code runs on the CPU
(the tests use it).

The device colour jitter is the colour-matrix form used by NVIDIA DALI's ColorTwist: brightness
scales, contrast blends with the image's mean grey, saturation blends with the per-pixel grey,
and hue rotates the chroma plane of YIQ space (torchvision shifts H in HSV instead). The factors
are drawn as torchvision's ColorJitter draws them; the order is fixed (brightness, contrast,
saturation, hue) where torchvision shuffles it per image.
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


def random_resized_boxes(
    sizes: Sequence[tuple[int, int]],
    scale: Sequence[float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
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
        out[indices] = roi_align(
            stacked, rois.to(device), output_size=image_size, spatial_scale=1.0, sampling_ratio=2, aligned=True
        )
    return out / 255.0


# ITU-R BT.601 luma, as torchvision's rgb_to_grayscale; YIQ rows below it
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([_LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312)])


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=generator)


def saturation_hue_matrix(saturation: torch.Tensor, hue_turns: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] RGB matrices: blend with grey by ``saturation``, then turn the YIQ chroma plane by ``hue_turns``."""
    n = saturation.shape[0]
    grey = torch.tensor(_LUMA).expand(3, 3)
    sat_matrix = saturation.view(n, 1, 1) * torch.eye(3) + (1 - saturation).view(n, 1, 1) * grey
    angle = -hue_turns * 2 * math.pi  # the sign that turns red towards yellow for hue > 0, as torchvision does
    rotation = torch.zeros(n, 3, 3)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = angle.cos(), -angle.sin()
    rotation[:, 2, 1], rotation[:, 2, 2] = angle.sin(), angle.cos()
    return torch.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ @ sat_matrix


def color_jitter(images: torch.Tensor, strengths: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter of float [N, 3, H, W] images in [0, 1], one draw per image.

    ``strengths`` are ColorJitter's (brightness, contrast, saturation, hue): factors uniform in
    [max(0, 1 - s), 1 + s], hue angle uniform in [-hue, hue] turns (hue <= 0.5).
    """
    n, device = images.shape[0], images.device
    brightness, contrast, saturation, hue = (list(strengths) + [0.0] * 4)[:4]
    if brightness:
        factor = _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator).to(device)
        images = (images * factor.view(n, 1, 1, 1)).clamp_(0, 1)
    if contrast:
        factor = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator).to(device).view(n, 1, 1, 1)
        luma = torch.tensor(_LUMA, device=device, dtype=images.dtype).view(1, 3, 1, 1)
        mean_grey = (images * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        images = ((images - mean_grey) * factor + mean_grey).clamp_(0, 1)
    if saturation or hue:  # both are linear maps of RGB: one 3x3 matrix per image
        sat = _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator) if saturation else torch.ones(n)
        turns = _uniform(n, -hue, hue, generator) if hue else torch.zeros(n)
        matrix = saturation_hue_matrix(sat, turns).to(device=device, dtype=images.dtype)
        images = torch.einsum("nij,njhw->nihw", matrix, images).clamp_(0, 1)
    return images


def random_erase(
    images: torch.Tensor,
    probability: float,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """torchvision's RandomErasing(value="random") for a normalized batch: with ``probability``, one box
    per image (area ``scale`` of the image, aspect ``ratio``) becomes standard normal noise."""
    n, _, height, width = images.shape
    area = _uniform(n, *scale, generator) * height * width
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator))
    box_h = (area * aspect).sqrt().round().clamp(1, height)
    box_w = (area / aspect).sqrt().round().clamp(1, width)
    top = (torch.rand(n, generator=generator) * (height - box_h + 1)).floor()
    left = (torch.rand(n, generator=generator) * (width - box_w + 1)).floor()
    erase = torch.rand(n, generator=generator) < probability
    # the per-image numbers are drawn on the CPU (reproducible anywhere); masks and noise are made where
    # the images are, so a GPU batch costs no host-side tensor of its size
    device = images.device
    top, bottom, left, right, erase = (
        t.to(device).view(n, 1, 1) for t in (top, top + box_h, left, left + box_w, erase)
    )
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right) & erase
    noise_generator = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    noise = torch.randn(images.shape, generator=noise_generator, device=device, dtype=images.dtype)
    return torch.where(inside.unsqueeze(1), noise, images)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def finish_batch(images: torch.Tensor, cfg, *, generator: torch.Generator, jitter: bool) -> torch.Tensor:
    """Float [0, 1] training crops -> model input: colour jitter (when ``jitter``), normalize, random erasing."""
    if jitter and cfg.color_jitter:
        images = color_jitter(images, cfg.color_jitter, generator)
    images = normalize(images, cfg.mean, cfg.std)
    if cfg.random_erasing > 0:  # on the normalized batch, so erased pixels are noise around the mean
        images = random_erase(images, cfg.random_erasing, generator)
    return images


def gpu_transform(
    jpegs: Sequence[torch.Tensor],
    cfg,
    *,
    train: bool,
    device: torch.device,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Decode and augment a batch of JPEG bytes on ``device``: float [N, 3, S, S], normalized."""
    images = decode_batch(jpegs, device)
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    generator = generator or torch.Generator().manual_seed(0)
    if train:
        boxes = random_resized_boxes(sizes, cfg.crop_scale, generator)
    else:
        boxes = center_boxes(sizes, cfg.image_size, cfg.resize_size)
    batch = crop_resize(images, boxes, cfg.image_size)
    if not train:
        return normalize(batch, cfg.mean, cfg.std)
    if cfg.hflip:
        flip = (torch.rand(len(images), generator=generator) < 0.5).to(device)
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
    return finish_batch(batch, cfg, generator=generator, jitter=True)


def batch_to_device(
    batch: dict,
    data_cfg,
    device: torch.device,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
    seed: int = 0,
) -> torch.Tensor:
    """The model input for a training loader batch, made on ``device`` from uint8 crops or JPEG bytes.

    ``data_cfg`` is the resolved data section: its mean/std normalize the batch."""
    generator = torch.Generator().manual_seed(seed)
    if "jpeg" in batch:
        images = gpu_transform(batch["jpeg"], data_cfg, train=True, device=device, generator=generator)
    else:
        images = batch["image"].to(device, non_blocking=True).float().div_(255)
        images = finish_batch(images, data_cfg, generator=generator, jitter=data_cfg.jitter_on == "device")
    return images.contiguous(memory_format=memory_format)
