"""The accelerator-side decode + augmentation path, run on the CPU here (same code on CUDA)."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.config import load_config
from toolkit.data import build_eval_transform
from toolkit.data.device_augment import center_boxes, gpu_transform, random_resized_boxes


def jpeg_tensor(width: int, height: int, seed: int) -> tuple[torch.Tensor, Image.Image]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.BILINEAR)  # smooth: resampling-method agnostic
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8), image


@pytest.fixture()
def data_cfg():
    return load_config(None, ["data.image_size=64", "data.resize_size=72"]).data


def test_eval_path_matches_the_cpu_transform(data_cfg):
    """Resize + center crop via roi_align lands on the same pixels as PIL's Resize + CenterCrop."""
    data_cfg = dataclasses.replace(data_cfg, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    jpegs, images = zip(*(jpeg_tensor(w, h, i) for i, (w, h) in enumerate([(120, 90), (90, 150), (100, 100)])))
    gpu = gpu_transform(list(jpegs), data_cfg, train=False, device=torch.device("cpu"))
    cpu = torch.stack([build_eval_transform(data_cfg)(im) for im in images])
    assert gpu.shape == cpu.shape == (3, 3, 64, 64)
    assert (gpu - cpu).abs().mean() < 0.05  # normalized units; bilinear vs antialiased resampling


def test_train_path_is_seeded_and_stays_in_range(data_cfg):
    jpegs = [jpeg_tensor(96 + 8 * i, 80, i)[0] for i in range(6)]

    def run(seed):
        return gpu_transform(
            jpegs,
            dataclasses.replace(data_cfg, mean=[0.5] * 3, std=[0.5] * 3),
            train=True,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(seed),
        )

    first, again, other = run(1), run(1), run(2)
    assert first.shape == (6, 3, 64, 64)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert first.min() >= -1.0 - 1e-5 and first.max() <= 1.0 + 1e-5  # [0, 1] pixels, normalized by 0.5/0.5


def test_crop_boxes_follow_random_resized_crop_bounds():
    generator = torch.Generator().manual_seed(0)
    sizes = [(200, 300)] * 200
    boxes = random_resized_boxes(sizes, [0.6, 1.0], generator)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    areas = widths * heights / (200 * 300)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 300).all() and (boxes[:, 3] <= 200).all()
    assert areas.min() >= 0.55 and areas.max() <= 1.0
    box = center_boxes([(200, 300)], 224, 256)[0]
    assert torch.allclose(box, torch.tensor([150 - 87.5, 100 - 87.5, 150 + 87.5, 100 + 87.5]))


def test_loader_ships_jpeg_bytes_when_decoding_on_the_accelerator(synthetic_shards):
    from toolkit.config import resolve_normalization
    from toolkit.data import load_info, make_train_loader
    from toolkit.data.device_augment import batch_to_device

    cfg = load_config(
        None,
        [
            f"data.shards={synthetic_shards}",
            "data.image_size=32",
            "data.resize_size=36",
            "data.num_workers=0",
            "data.decode=gpu",
        ],
    ).data
    info = load_info(str(synthetic_shards))
    cfg = resolve_normalization(cfg, info)
    batch = next(iter(make_train_loader(cfg, info, batch_size=4, rank=0, world_size=1, seed=0)))
    assert "image" not in batch and len(batch["jpeg"]) == 4 and batch["jpeg"][0].dtype == torch.uint8
    images = batch_to_device(batch, cfg, torch.device("cpu"), memory_format=torch.channels_last, seed=3)
    assert images.shape == (4, 3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images, batch_to_device(batch, cfg, torch.device("cpu"), seed=3))


def smooth_batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Float [n, 3, size, size] in [0.2, 0.8]: room to shift colours without clipping."""
    base = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(base, size=size, mode="bilinear") * 0.6 + 0.2


def test_hue_turn_keeps_luma_and_turns_the_way_torchvision_does():
    from torchvision.transforms.v2 import functional as F

    from toolkit.data.device_augment import saturation_hue_matrix

    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    images = smooth_batch()
    turned = torch.einsum("nij,njhw->nihw", saturation_hue_matrix(torch.ones(4), torch.full((4,), 0.1)), images)
    torch.testing.assert_close((turned * luma).sum(1), (images * luma).sum(1), atol=1e-5, rtol=0)
    assert (turned - images).abs().mean() > 0.02  # it did change the colours
    red = torch.tensor([0.8, 0.3, 0.3]).view(1, 3, 1, 1)
    ours = torch.einsum("nij,njhw->nihw", saturation_hue_matrix(torch.ones(1), torch.tensor([0.05])), red).flatten()
    theirs = F.adjust_hue(red, 0.05).flatten()
    assert ours[1] > 0.3 and ours[2] < 0.3 and theirs[1] > 0.3  # red turns towards yellow on both
    grey = torch.full((1, 3, 1, 1), 0.5)
    matrix = saturation_hue_matrix(torch.tensor([1.7]), torch.tensor([0.3]))
    torch.testing.assert_close(torch.einsum("nij,njhw->nihw", matrix, grey), grey)  # grey has no hue to turn


def test_device_color_jitter_matches_torchvision_for_brightness_contrast_saturation():
    from torchvision.transforms.v2 import functional as F

    from toolkit.data.device_augment import color_jitter, saturation_hue_matrix

    images = smooth_batch()
    torch.testing.assert_close(color_jitter(images, [0, 0, 0, 0], torch.Generator()), images)
    out = color_jitter(images, [0.5, 0, 0, 0], torch.Generator().manual_seed(1))
    factors = (out / images).mean((1, 2, 3))
    assert factors.min() >= 0.5 - 1e-3 and factors.max() <= 1.5 + 1e-3 and factors.std() > 0.01  # one draw per image
    for factor in (0.6, 1.4):
        sat = torch.einsum("nij,njhw->nihw", saturation_hue_matrix(torch.full((4,), factor), torch.zeros(4)), images)
        torch.testing.assert_close(sat.clamp(0, 1), F.adjust_saturation(images, factor), atol=1e-4, rtol=0)
    contrast = color_jitter(images, [0, 0.4, 0, 0], torch.Generator().manual_seed(2))
    ratio = contrast.std((1, 2, 3)) / images.std((1, 2, 3))
    assert ratio.min() >= 0.6 - 1e-3 and ratio.max() <= 1.4 + 1e-3 and not torch.allclose(ratio, torch.ones(4))
    full = color_jitter(images, [0.2, 0.2, 0.2, 0.1], torch.Generator().manual_seed(3))
    assert full.min() >= 0 and full.max() <= 1
    torch.testing.assert_close(full, color_jitter(images, [0.2, 0.2, 0.2, 0.1], torch.Generator().manual_seed(3)))


def test_random_erase_boxes_follow_torchvision_bounds():
    from toolkit.data.device_augment import random_erase

    images = torch.full((200, 3, 40, 40), 7.0)  # noise is standard normal: never exactly 7
    erased = random_erase(images, 1.0, torch.Generator().manual_seed(0)) != 7.0
    area = erased[:, 0].float().mean((1, 2))
    assert area.min() >= 0.015 and area.max() <= 0.34  # scale (0.02, 0.33), rounded to whole pixels
    rows, cols = erased[:, 0].any(2).sum(1), erased[:, 0].any(1).sum(1)
    assert torch.equal(erased[:, 0].sum((1, 2)), rows * cols)  # one rectangle per image
    assert torch.equal(erased[:, 0], erased[:, 2])  # on every channel
    assert not random_erase(images, 0.0, torch.Generator()).ne(7.0).any()
    half = random_erase(images, 0.5, torch.Generator().manual_seed(1)).ne(7.0).flatten(1).any(1).float().mean()
    assert 0.35 < half < 0.65


def test_uint8_batches_become_normalized_model_input():
    from toolkit.data.device_augment import batch_to_device

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    stats = ["data.mean=[0.5,0.4,0.3]", "data.std=[0.2,0.25,0.3]"]
    cfg = load_config(None, ["data.color_jitter=null", *stats]).data
    crops = torch.randint(256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = batch_to_device({"image": crops, "label": torch.zeros(2)}, cfg, torch.device("cpu"))
    expected = (crops.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(images, expected)
    jittered = load_config(None, ["data.jitter_on=device", *stats]).data
    in_workers = load_config(None, ["data.jitter_on=workers", *stats]).data
    batch = {"image": crops, "label": torch.zeros(2)}
    assert not torch.allclose(batch_to_device(batch, jittered, torch.device("cpu"), seed=1), expected)
    torch.testing.assert_close(batch_to_device(batch, in_workers, torch.device("cpu"), seed=1), expected)
