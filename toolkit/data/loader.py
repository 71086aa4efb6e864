"""Read the packed webdataset shards into batches for training, evaluation and pictures.

Why not a plain ``wds.WebDataset(...).batched(...)``: with several processes it hands ranks
different numbers of batches and distributed training deadlocks at the next collective
(webdataset #225, #194), it cannot resume mid-epoch (#177, #271), and evaluation over an
iterable dataset duplicates or drops samples. So the splitting is explicit here:

* every rank runs ``steps_per_epoch = train samples // (batch_size * world_size)`` batches;
* workers do not build whole batches: a batch is ``chunks_per_batch`` consecutive CHUNKS of
  ``chunk_size`` samples (see ``_chunk_size``), which the main process concatenates, so up to
  ``chunks_per_batch`` workers share each batch and an epoch's first batch waits for one chunk's
  decode, not one whole batch's;
* the shards of an epoch are dealt to (rank, worker) slots, sized to the chunks each slot must
  produce; with fewer shards than slots every slot reads everything and keeps every n-th sample;
* loader worker ``w`` produces the rank's global chunks ``c = w, w + W, ...`` (the order in
  which ``DataLoader`` collects them), cycling over its shards if they run short;
* the key order and the augmentation of chunk ``c`` depend only on (seed, epoch, rank, c), so
  ``start_step=k`` can skip the first k batches' chunks without decoding them and resume bit for bit.

Bad samples (undecodable JPEG, missing ``jpg``/``cls``, truncated or missing shard) are skipped,
warned about and counted in ``batch["skipped"]``; with ``strict`` they raise ``DataError``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import random
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from toolkit.cli import is_main_process
from toolkit.data import stores
from toolkit.data.locations import Shard, num_samples_of, split_shards
from toolkit.data.reading import Skips, decode_sample, header_ok, read_shards, usable
from toolkit.data.transforms import build_train_transform, decode_hint
from toolkit.errors import DataError, UsageError

log = logging.getLogger(__name__)


# The shuffle buffer's bytes per loader process: ~2,500 stored images of 50 KB, far more than the 1,000
# samples data.shuffle_buffer holds of them. Hostile shards (samples of up to reading.MAX_SAMPLE_BYTES)
# then hold at most this much, or one sample when it alone is larger: not 1,000 x 64 MiB.
SHUFFLE_BUFFER_BYTES = 128 << 20


def _sample_bytes(sample: dict) -> int:
    return sum(len(value) for value in sample.values() if isinstance(value, (bytes, bytearray)))


def _shuffled(
    samples: Iterator[dict], size: int, rng: random.Random, max_bytes: int = SHUFFLE_BUFFER_BYTES
) -> Iterator[dict]:
    """A shuffle buffer of ``size`` raw samples and at most ``max_bytes`` (or one larger sample): each
    incoming sample swaps out a random resident; when its bytes would pass ``max_bytes``, random
    residents leave first. Within the byte bound the order is exactly the count-only buffer's."""
    if size <= 1:  # no buffer: the shards' own (seeded, shuffled) order
        yield from samples
        return
    buffer: list[dict] = []
    held = 0
    for sample in samples:
        incoming = _sample_bytes(sample)
        while buffer and held + incoming > max_bytes:
            out = buffer.pop(rng.randrange(len(buffer)))
            held -= _sample_bytes(out)
            yield out
        held += incoming
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        held -= _sample_bytes(buffer[i])
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def _seed(*parts) -> int:
    """A 63-bit seed from its parts, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _assign_shards(sizes: Sequence[int], order: Sequence[int], targets: Sequence[int]) -> list[list[int]]:
    """Deal whole shards to slots: one each first, then each to the slot furthest below its target."""
    slots: list[list[int]] = [[] for _ in targets]
    load = [0] * len(targets)
    for n, shard in enumerate(order):
        slot = n if n < len(targets) else max(range(len(targets)), key=lambda s: targets[s] - load[s])
        slots[slot].append(shard)
        load[slot] += sizes[shard]
    return slots


def _sizes(shards: Sequence[Shard], total: int) -> list[int]:
    average = max(1, total // max(1, len(shards)))
    return [n if n is not None else average for _, n in shards]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _collate(images: list, labels: list, keys: list, skipped: int, image_size: int) -> dict:
    batch = {"label": torch.tensor(labels, dtype=torch.long), "key": keys, "skipped": skipped}
    if images and images[0].dim() == 1:  # data.decode=gpu: undecoded JPEG bytes, decoded by toolkit.device_augment
        return batch | {"jpeg": images}
    return batch | {
        "image": torch.stack(images) if images else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    }


def _loader_kwargs(cfg, persistent: bool) -> dict:
    kwargs = {
        "batch_size": None,
        "num_workers": cfg.num_workers,
        "pin_memory": bool(cfg.pin_memory and torch.cuda.is_available()),
    }
    if cfg.num_workers > 0:
        kwargs.update(persistent_workers=persistent, prefetch_factor=cfg.prefetch_factor)
    return kwargs


def _check_rank(rank: int, world_size: int, batch_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not within world size {world_size}")
    if batch_size < 1:
        raise UsageError(f"batch size {batch_size} must be >= 1")


# ---------------------------------------------------------------------------------------------
# Training: equal steps on every rank, deterministic, resumable


MAX_CHUNK = 16  # samples per worker task at most


def _chunk_size(batch_size: int, num_workers: int) -> int:
    """Samples per worker task: the largest divisor of the batch that is <= ``MAX_CHUNK`` and
    still leaves at least one chunk per worker in every batch (when the batch is big enough).

    With whole batches per worker, a 4-step epoch kept 4 of 16 workers busy and every epoch
    started by waiting for one worker to decode a whole batch; small chunks spread each batch
    over all workers. Much smaller chunks would only add per-task overhead (a prime batch size
    falls back to chunks of one sample).
    """
    limit = max(1, min(MAX_CHUNK, batch_size // max(1, num_workers)))
    return max(d for d in range(1, limit + 1) if batch_size % d == 0)


class _ShardStream(IterableDataset):
    """What the training and evaluation streams share: their shards, decoding and place among the slots."""

    def __init__(
        self,
        shards: Sequence[Shard],
        *,
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
        self.shards = list(shards)
        self.num_classes = num_classes
        self.transform = transform
        self.decode_hint = decode_hint
        self.image_size = image_size
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(1, num_workers)
        self.strict = strict
        self.store_options = stores.current()  # a worker started by spawn would not inherit the module's

    def _enter_worker(self) -> None:
        stores.configure(self.store_options)


class TrainStream(_ShardStream):
    """The per-worker chunk generator behind ``TrainLoader`` (runs inside the loader workers)."""

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
        seed: int,
        shuffle_buffer: int,
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
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.steps = num_samples // (batch_size * world_size)
        self.chunk_size = _chunk_size(batch_size, self.num_workers)
        self.chunks_per_batch = batch_size // self.chunk_size
        self.chunks = self.steps * self.chunks_per_batch  # per rank and epoch
        self.sample_level = len(self.shards) < world_size * self.num_workers
        self.sizes = _sizes(self.shards, num_samples)
        # (epoch, start_step) in shared memory: persistent workers hold a copy of this object
        self._state = multiprocessing.RawArray("q", 2)

    def set_state(self, epoch: int, start_step: int) -> None:
        self._state[0], self._state[1] = epoch, start_step

    def quota(self, worker: int) -> int:
        """Chunks worker ``worker`` produces in a whole epoch: global chunks c with c % W == worker."""
        return len(range(worker, self.chunks, self.num_workers))

    def plan(self, epoch: int) -> Optional[list[list[int]]]:
        """Shard indices per slot (rank * W + worker) for ``epoch``; None means sample-level splitting.

        The same on every rank (it depends on the seed and epoch only), so it is a partition.
        """
        if self.sample_level:
            return None
        order = list(range(len(self.shards)))
        random.Random(_seed(self.seed, "shards", epoch)).shuffle(order)
        targets = [
            self.quota(slot % self.num_workers) * self.chunk_size for slot in range(self.world_size * self.num_workers)
        ]
        return _assign_shards(self.sizes, order, targets)

    def _raw(self, epoch: int, worker: int, skips: Skips) -> Iterator[dict]:
        """This slot's usable raw samples, shuffled, endless: it cycles over its shards as needed."""
        slot = self.rank * self.num_workers + worker
        n_slots = self.world_size * self.num_workers
        plan = self.plan(epoch)
        buffer_rng = random.Random(_seed(self.seed, "buffer", epoch, self.rank, worker))
        for cycle in range(1 << 62):
            if plan is not None:
                mine = [self.shards[i] for i in plan[slot]]
                if cycle > 0:
                    random.Random(_seed(self.seed, "cycle", epoch, self.rank, worker, cycle)).shuffle(mine)
                raw = read_shards(mine, skips)
            else:  # every slot reads every shard in the same order and keeps its own indices
                mine = list(self.shards)
                random.Random(_seed(self.seed, "shards", epoch, cycle)).shuffle(mine)
                raw = read_shards(mine, skips, owner=lambda i: i % n_slots == slot)
            got = 0
            for sample in _shuffled(usable(raw, skips, self.num_classes), self.shuffle_buffer, buffer_rng):
                got += 1
                yield sample
            if got == 0:
                raise DataError(
                    f"rank {self.rank} loader worker {worker} found no readable training sample in "
                    f"{', '.join(url for url, _ in mine[:3])}{' ...' if len(mine) > 3 else ''}; "
                    "check the shards with `python -m toolkit.make_shards --verify`"
                )

    def worker_chunks(self, worker: int, epoch: int, start_chunk: int = 0) -> Iterator[dict]:
        """Global chunks c = worker, worker + W, ... with c >= start_chunk, each exactly full."""
        skips = Skips(self.strict)
        raw = self._raw(epoch, worker, skips)
        resumed = False
        for c in range(worker, self.chunks, self.num_workers):
            if c < start_chunk:  # consume the same raw samples without decoding them
                taken = 0
                while taken < self.chunk_size:
                    taken += header_ok(next(raw), skips)
                continue
            if not resumed:  # skips before start_chunk were reported by the run that made those chunks
                skips.take()
                resumed = True
            images, labels, keys = [], [], []
            with torch.random.fork_rng(devices=[]):  # with num_workers=0 this is the main process
                torch.manual_seed(_seed(self.seed, "augment", epoch, self.rank, c))
                while len(images) < self.chunk_size:
                    sample = next(raw)
                    if self.transform is None:  # data.decode=gpu: ship the bytes, the accelerator decodes
                        image = (
                            torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8)
                            if header_ok(sample, skips)
                            else None
                        )
                    else:
                        image = decode_sample(sample, self.decode_hint, skips)
                        image = None if image is None else self.transform(image)
                    if image is not None:
                        images.append(image)
                        labels.append(sample["__label__"])
                        keys.append(sample["__key__"])
            yield _collate(images, labels, keys, skips.take(), self.image_size) | {"retries": skips.take_retries()}

    def __iter__(self) -> Iterator[dict]:
        self._enter_worker()
        loader_worker, num_workers = _worker()
        if num_workers != self.num_workers:
            raise RuntimeError(f"TrainStream was planned for {self.num_workers} workers, runs in {num_workers}")
        epoch, start_step = int(self._state[0]), int(self._state[1])
        start_chunk = start_step * self.chunks_per_batch
        # DataLoader asks worker 0 first; on resuming at chunk s, chunk s belongs to worker s % W
        worker = (loader_worker + start_chunk) % self.num_workers
        try:
            yield from self.worker_chunks(worker, epoch, start_chunk)
        except DataError as err:  # travels as data: the main process re-raises it as one clean line
            yield {"error": str(err)}


def _join_chunks(chunks: list[dict], pin: bool) -> dict:
    """One batch from consecutive chunks: a single copy, straight into page-locked memory when pinning."""

    def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
        out = torch.empty((sum(len(t) for t in tensors), *tensors[0].shape[1:]), dtype=tensors[0].dtype, pin_memory=pin)
        return torch.cat(tensors, out=out)

    batch = {
        "label": cat([c["label"] for c in chunks]),
        "key": [k for c in chunks for k in c["key"]],
        "skipped": sum(c["skipped"] for c in chunks),
        "retries": sum(c.get("retries", 0) for c in chunks),
    }
    if "jpeg" in chunks[0]:  # data.decode=gpu: one 1-D uint8 tensor per image, decoded on the accelerator
        return batch | {"jpeg": [j for c in chunks for j in c["jpeg"]]}
    return batch | {"image": cat([c["image"] for c in chunks])}


class TrainLoader:
    """Iterate for one epoch of ``len(self)`` full batches; ``set_epoch`` before each epoch.

    The ``DataLoader`` underneath yields chunks; this joins ``chunks_per_batch`` of them per batch.
    ``pin_memory`` applies to the joined batch (pinning each chunk first would copy twice), and
    the per-worker ``prefetch_factor`` (counted in chunks) is raised so that at least that many
    whole batches are in flight.
    """

    def __init__(self, stream: TrainStream, loader_kwargs: dict):
        self.stream = stream
        self.steps_per_epoch = stream.steps
        kwargs = dict(loader_kwargs)
        self.pin = bool(kwargs.pop("pin_memory", False))
        if kwargs.get("num_workers", 0) > 0:
            batches_ahead = kwargs.get("prefetch_factor") or 2
            kwargs["prefetch_factor"] = max(
                batches_ahead, math.ceil(batches_ahead * stream.chunks_per_batch / stream.num_workers)
            )
        # its own generator: drawing the workers' base seed must not consume the global RNG
        self.loader = DataLoader(stream, generator=torch.Generator().manual_seed(stream.seed), **kwargs)
        self.epoch, self.start_step = 0, 0
        self.skipped = 0  # bad samples this rank skipped during the last pass
        self.retries = 0  # remote reads this rank retried during the last pass

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Choose the epoch (new order) and the first batch of the next pass (to resume mid-epoch)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise UsageError(f"start_step {start_step} is outside the epoch's {self.steps_per_epoch} batches")
        self.epoch, self.start_step = epoch, start_step
        self.stream.set_state(epoch, start_step)

    def __iter__(self) -> Iterator[dict]:
        """Batches start_step .. steps_per_epoch - 1 of the epoch."""
        self.skipped, self.retries = 0, 0
        chunks: list[dict] = []
        for chunk in self.loader:
            if "error" in chunk:
                raise DataError(chunk["error"])
            chunks.append(chunk)
            if len(chunks) == self.stream.chunks_per_batch:
                batch = _join_chunks(chunks, self.pin)
                chunks = []
                self.skipped += batch["skipped"]
                self.retries += batch["retries"]
                yield batch
        if chunks:  # cannot happen while every worker fills its quota; never drop samples quietly
            raise RuntimeError(
                f"the loader ended inside a batch ({len(chunks)} of {self.stream.chunks_per_batch} chunks)"
            )


_layout_warned = False


def make_train_loader(
    cfg, info: dict, *, batch_size: int, rank: int, world_size: int, seed: int, epoch: int = 0, start_step: int = 0
) -> TrainLoader:
    """The training loader of this rank; every rank gets the same ``len()``."""
    global _layout_warned
    _check_rank(rank, world_size, batch_size)
    shard_list = split_shards(cfg.shards, "train", info)
    num_samples = num_samples_of(shard_list, info, "train")
    if num_samples < batch_size * world_size:
        raise UsageError(
            f"batch size {batch_size} x {world_size} process(es) = {batch_size * world_size} exceeds the "
            f"{num_samples} training samples; lower the batch size"
        )
    stream = TrainStream(
        shard_list,
        num_samples=num_samples,
        num_classes=len(info.get("classes") or [0, 1]),
        transform=None if cfg.decode == "gpu" else build_train_transform(cfg),
        decode_hint=decode_hint(cfg),
        image_size=cfg.image_size,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=cfg.num_workers,
        seed=seed,
        shuffle_buffer=cfg.shuffle_buffer,
        strict=cfg.strict,
    )
    if stream.sample_level and not _layout_warned and rank == 0 and is_main_process():
        _layout_warned = True
        log.warning(
            "only %d training shard(s) for %d process(es) x %d loader worker(s): every worker reads every "
            "shard and keeps 1/%d of it (slower); re-pack with a smaller --shard-size so there are at least "
            "%d shards",
            len(shard_list),
            world_size,
            stream.num_workers,
            world_size * stream.num_workers,
            world_size * stream.num_workers,
        )
    loader = TrainLoader(stream, _loader_kwargs(cfg, persistent=bool(cfg.persistent_workers)))
    loader.set_epoch(epoch, start_step)
    return loader
