"""Samples for pictures and benchmarks: decoded images by key, and synthetic batches."""

from __future__ import annotations

import json
from typing import Iterator, Optional

import torch

from toolkit.data.locations import load_info, split_shards
from toolkit.data.reading import Skips, bad_reason, decode_sample, read_shards


def raw_samples(shards: str, split: str, info: Optional[dict] = None) -> Iterator[dict]:
    """Undecoded samples ``{"__key__", "__url__", "jpg", "cls", "json": bytes}`` in packed order.

    Unreadable shards are warned about and skipped.
    """
    info = info if info is not None else load_info(shards)
    yield from read_shards(split_shards(shards, split, info), Skips(strict=False))


def read_samples(
    shards: str, split: str, keys: Optional[set[str]] = None, limit: Optional[int] = None
) -> Iterator[dict]:
    """Decoded samples ``{"key", "label", "image": PIL RGB, "meta"}`` in packed order, for pictures.

    ``keys`` keeps only those samples (and stops once all are found); ``limit`` stops after that many.
    Bad samples are skipped with a warning.
    """
    info = load_info(shards)
    wanted = set(keys) if keys is not None else None
    if limit is not None and limit <= 0 or wanted is not None and not wanted:
        return
    num_classes = len(info.get("classes") or [0, 1])
    skips = Skips(strict=False)
    given = 0
    for sample in raw_samples(shards, split, info):
        if wanted is not None and sample["__key__"] not in wanted:
            continue
        reason = bad_reason(sample, num_classes)
        if reason is not None:
            skips.report(sample["__url__"], sample["__key__"], reason)
            continue
        image = decode_sample(sample, 0, skips)
        if image is None:
            continue
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except ValueError:
            meta = {}
        yield {"key": sample["__key__"], "label": sample["__label__"], "image": image, "meta": meta}
        given += 1
        if wanted is not None:
            wanted.discard(sample["__key__"])
            if not wanted:
                return
        if limit is not None and given >= limit:
            return


class SyntheticBatches:
    """``steps`` batches of random uint8 crops in the training loader's format, generated once and reused.

    For measuring the model alone: the same tensors every step, so no time goes into making them.
    """

    def __init__(self, batch_size: int, image_size: int, steps: int, num_classes: int = 2, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.image = torch.randint(256, (batch_size, 3, image_size, image_size), generator=generator, dtype=torch.uint8)
        self.label = torch.randint(num_classes, (batch_size,), generator=generator)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict]:
        for step in range(self.steps):
            yield {
                "image": self.image,
                "label": self.label,
                "skipped": 0,
                "key": [f"synthetic-{step}-{i}" for i in range(len(self.label))],
            }


def synthetic_batches(batch_size: int, image_size: int, steps: int, num_classes: int = 2) -> SyntheticBatches:
    return SyntheticBatches(batch_size, image_size, steps, num_classes)
