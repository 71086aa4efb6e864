"""Evaluation batches: every sample of a split exactly once over all ranks and workers.

The counterpart of ``toolkit.data.loader`` (training): the same shard reading and collation, but
shards are dealt to ranks and workers without repetition or padding, so ``evaluate_split`` can check
the gathered count against the manifest.
"""

from __future__ import annotations

import json
import math
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from toolkit.data.loader import (
    _assign_shards,
    _check_rank,
    _collate,
    _loader_kwargs,
    _ShardStream,
    _sizes,
    _worker,
)
from toolkit.data.locations import Shard, num_samples_of, split_shards
from toolkit.data.reading import Skips, decode_sample, read_shards, usable
from toolkit.data.transforms import build_eval_transform, decode_hint
from toolkit.errors import DataError


class EvalStream(_ShardStream):
    """The per-worker batch generator behind ``EvalLoader``."""

    def __init__(
        self,
        shards: Sequence[Shard],
        *,
        num_samples: int,
        num_classes: int,
        transform,
        decode_hint: int,
        image_size: int,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
        strict: bool,
    ):
        super().__init__(
            shards,
            num_classes=num_classes,
            transform=transform,
            decode_hint=decode_hint,
            image_size=image_size,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            strict=strict,
        )
        n_slots = world_size * self.num_workers
        self.sizes = _sizes(self.shards, num_samples)
        self.num_samples = num_samples
        self.plan = (
            None
            if len(self.shards) < n_slots
            else _assign_shards(self.sizes, range(len(self.shards)), [math.ceil(num_samples / n_slots)] * n_slots)
        )

    def slot_samples(self, worker: int) -> int:
        """Samples slot (rank, worker) reads if no sample is bad."""
        slot, n_slots = self.rank * self.num_workers + worker, self.world_size * self.num_workers
        if self.plan is None:
            return len(range(slot, self.num_samples, n_slots))
        return sum(self.sizes[i] for i in self.plan[slot])

    def worker_batches(self, worker: int) -> Iterator[dict]:
        slot, n_slots = self.rank * self.num_workers + worker, self.world_size * self.num_workers
        skips = Skips(self.strict)
        if self.plan is None:
            raw = read_shards(self.shards, skips, owner=lambda i: i % n_slots == slot)
        else:
            raw = read_shards([self.shards[i] for i in self.plan[slot]], skips)
        pending: Optional[dict] = None  # held back one batch so skips after the last sample land in it
        images, labels, keys, breeds = [], [], [], []
        for sample in usable(raw, skips, self.num_classes):
            image = decode_sample(sample, self.decode_hint, skips)
            if image is None:
                continue
            images.append(self.transform(image))
            labels.append(sample["__label__"])
            keys.append(sample["__key__"])
            breeds.append(_breed(sample))
            if len(images) == self.batch_size:
                if pending is not None:
                    yield pending
                pending = _collate(images, labels, keys, skips.take(), self.image_size) | {
                    "breed": breeds,
                    "retries": skips.take_retries(),
                }
                images, labels, keys, breeds = [], [], [], []
        if images or (pending is None and skips.count):
            if pending is not None:
                yield pending
            # the last, partial batch; empty only when this worker found nothing but bad samples
            yield _collate(images, labels, keys, skips.take(), self.image_size) | {
                "breed": breeds,
                "retries": skips.take_retries(),
            }
        elif pending is not None:
            pending["skipped"] += skips.take()
            pending["retries"] += skips.take_retries()
            yield pending

    def __iter__(self) -> Iterator[dict]:
        self._enter_worker()
        worker, num_workers = _worker()
        if num_workers != self.num_workers:
            raise RuntimeError(f"EvalStream was planned for {self.num_workers} workers, runs in {num_workers}")
        try:
            yield from self.worker_batches(worker)
        except DataError as err:
            yield {"error": str(err)}


def _breed(sample: dict) -> str:
    try:
        return str(json.loads(sample["json"]).get("breed", ""))
    except (KeyError, ValueError, AttributeError):
        return ""


class EvalLoader:
    """This rank's share of a split, in batches (the last ones may be partial or even empty)."""

    def __init__(self, stream: EvalStream, loader_kwargs: dict):
        self.stream = stream
        self.loader = DataLoader(stream, generator=torch.Generator().manual_seed(0), **loader_kwargs)
        self.skipped = 0
        self.retries = 0  # remote reads retried during the last pass

    def __len__(self) -> int:
        """Batches when no sample is bad (a skipped sample can only make it smaller)."""
        return sum(
            math.ceil(self.stream.slot_samples(w) / self.stream.batch_size) for w in range(self.stream.num_workers)
        )

    def __iter__(self) -> Iterator[dict]:
        self.skipped, self.retries = 0, 0
        for batch in self.loader:
            if "error" in batch:
                raise DataError(batch["error"])
            self.skipped += batch["skipped"]
            self.retries += batch.get("retries", 0)
            yield batch


def make_eval_loader(cfg, info: dict, split: str, *, batch_size: int, rank: int, world_size: int) -> EvalLoader:
    """Evaluation batches of ``split`` for this rank: over all ranks, every sample exactly once."""
    _check_rank(rank, world_size, batch_size)
    if cfg.mean is None or cfg.std is None:  # a bug in the caller: resolve the data section first
        raise ValueError("make_eval_loader needs a resolved data section (config.resolve_normalization)")
    shard_list = split_shards(cfg.shards, split, info)
    stream = EvalStream(
        shard_list,
        num_samples=num_samples_of(shard_list, info, split),
        num_classes=len(info.get("classes") or [0, 1]),
        transform=build_eval_transform(cfg),
        decode_hint=decode_hint(cfg),
        image_size=cfg.image_size,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=cfg.num_workers,
        strict=cfg.strict,
    )
    return EvalLoader(stream, _loader_kwargs(cfg, persistent=False))  # one pass: idle workers would only hold memory
