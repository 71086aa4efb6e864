"""The accelerator-side decode + augmentation path, run on the CPU here (same code on CUDA)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.config import load_config
from toolkit.data import build_eval_transform
from toolkit.gpu_augment import center_boxes, gpu_transform, random_resized_boxes


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
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    jpegs, images = zip(*(jpeg_tensor(w, h, i) for i, (w, h) in enumerate([(120, 90), (90, 150), (100, 100)])))
    gpu = gpu_transform(list(jpegs), data_cfg, mean, std, train=False, device=torch.device("cpu"))
    cpu = torch.stack([build_eval_transform(data_cfg, mean, std)(im) for im in images])
    assert gpu.shape == cpu.shape == (3, 3, 64, 64)
    assert (gpu - cpu).abs().mean() < 0.05  # normalized units; bilinear vs antialiased resampling


def test_train_path_is_seeded_and_stays_in_range(data_cfg):
    jpegs = [jpeg_tensor(96 + 8 * i, 80, i)[0] for i in range(6)]
    run = lambda seed: gpu_transform(jpegs, data_cfg, [0.5] * 3, [0.5] * 3, train=True, device=torch.device("cpu"),
                                     generator=torch.Generator().manual_seed(seed))
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
    from toolkit.data import load_info, make_train_loader, resolve_normalization
    from toolkit.gpu_augment import batch_to_device

    cfg = load_config(None, [f"data.shards={synthetic_shards}", "data.image_size=32", "data.resize_size=36",
                             "data.num_workers=0", "data.decode=gpu"]).data
    info = load_info(str(synthetic_shards))
    mean, std = resolve_normalization(cfg, info)
    batch = next(iter(make_train_loader(cfg, info, batch_size=4, rank=0, world_size=1, seed=0)))
    assert "image" not in batch and len(batch["jpeg"]) == 4 and batch["jpeg"][0].dtype == torch.uint8
    images = batch_to_device(batch, cfg, mean, std, torch.device("cpu"), memory_format=torch.channels_last, seed=3)
    assert images.shape == (4, 3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images, batch_to_device(batch, cfg, mean, std, torch.device("cpu"), seed=3))
