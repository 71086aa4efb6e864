"""Read the packed webdataset shards into batches for training, evaluation and pictures.

Why not a plain ``wds.WebDataset(...).batched(...)``: with several processes it hands ranks
different numbers of batches and distributed training deadlocks at the next collective
(webdataset #225, #194), it cannot resume mid-epoch (#177, #271), and evaluation over an
iterable dataset duplicates or drops samples. So the splitting is explicit here:

* the order of training samples is defined without the process count W and the worker count
  (``formats.sample_order``): each epoch the shards are dealt to ``streams`` streams by (seed,
  epoch) (fewer shards than streams: every stream reads every shard and keeps every n-th sample);
  each stream is shuffled with its own seed; piece p of micro-batch j of global step s is the next
  ``piece`` samples of stream ``g % streams``, ``g = (s * M + j) * pieces + p``;
* rank r runs micro-batches ``j = r * M/W .. (r + 1) * M/W - 1`` of every step, so every rank runs
  ``steps_per_epoch = train samples // global_batch_size`` steps and any W dividing M sees the same
  micro-batches; loader worker ``w`` makes the rank's pieces ``w, w + workers, ...`` (the order in
  which ``DataLoader`` collects them), reading past the positions it does not own without decoding;
* augmentation is seeded by the sample's place (epoch, step, j, index), the device's by (epoch,
  step, j): a resumed run (``start_step=k``, any W or worker count) gets the same batches.

Bad samples (undecodable JPEG, missing ``jpg``/``cls``, truncated or missing shard) are skipped,
warned about and counted in ``batch["skipped"]`` (once: by the piece whose position comes next); with
``strict`` they raise ``DataError``.
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
from toolkit.formats.sample_order import SampleOrder, default_streams, shards_fingerprint

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
# Training: the sample order of formats.sample_order, equal steps on every rank, resumable


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


class _Cursor:
    """One stream as a worker reads it: usable samples that open as images, at positions 0, 1, 2, ...

    Positions that other workers or ranks own are read past quietly (not decoded, not counted: their
    owner counts them), so every worker that reads a stream agrees on which sample sits where.
    """

    def __init__(self, samples: Iterator[dict], skips: Skips):
        self.samples, self.skips, self.position = samples, skips, 0

    def take(self, start: int, count: int) -> tuple[list[dict], int]:
        """The samples at positions ``start .. start + count - 1`` and the bad samples met on the way to them."""
        self.skips.quiet = True
        while self.position < start:
            next(self.samples)
            self.position += 1
        self.skips.quiet = False
        taken = [next(self.samples) for _ in range(count)]
        self.position += count
        return taken, self.skips.take()


class TrainStream(_ShardStream):
    """The pieces of this rank's micro-batches (runs inside the loader workers): worker ``w`` of ``n``
    produces the rank's pieces ``w, w + n, ...`` of the pass, the order in which ``DataLoader`` collects them."""

    def __init__(self, shards: Sequence[Shard], order: SampleOrder, *, num_samples: int, shuffle_buffer: int, **kw):
        super().__init__(shards, batch_size=order.batch_size, **kw)
        self.order, self.shuffle_buffer = order, shuffle_buffer
        self.steps = num_samples // order.global_batch_size
        self.batches = order.rank_batches(self.rank, self.world_size)
        self.piece = order.batch_size // order.pieces
        self.sample_level = len(self.shards) < order.streams
        self.sizes = _sizes(self.shards, num_samples)
        # (epoch, start_step) in shared memory: persistent workers hold a copy of this object
        self._state = multiprocessing.RawArray("q", 2)

    def set_state(self, epoch: int, start_step: int) -> None:
        self._state[0], self._state[1] = epoch, start_step

    def plan(self, epoch: int) -> Optional[list[list[int]]]:
        """Shard indices per stream for ``epoch`` (seed and epoch only); None means sample-level splitting."""
        if self.sample_level:
            return None
        order = list(range(len(self.shards)))
        random.Random(_seed(self.order.seed, "shards", epoch)).shuffle(order)
        pieces = self.steps * self.order.micro_batches * self.order.pieces
        targets = [len(range(k, pieces, self.order.streams)) * self.piece for k in range(self.order.streams)]
        return _assign_shards(self.sizes, order, targets)

    def _raw(self, epoch: int, stream: int, skips: Skips) -> Iterator[dict]:
        """The stream's usable raw samples, shuffled, endless: it cycles over its shards as needed."""
        seed, streams = self.order.seed, self.order.streams
        plan = self.plan(epoch)
        buffer_rng = random.Random(_seed(seed, "buffer", epoch, stream))
        for cycle in range(1 << 62):
            if plan is not None:
                mine = [self.shards[i] for i in plan[stream]]
                if cycle > 0:
                    random.Random(_seed(seed, "cycle", epoch, stream, cycle)).shuffle(mine)
                raw = read_shards(mine, skips)
            else:  # every stream reads every shard in the same order and keeps its own indices
                mine = list(self.shards)
                random.Random(_seed(seed, "shards", epoch, cycle)).shuffle(mine)
                raw = read_shards(mine, skips, owner=lambda i: i % streams == stream)
            got = 0
            for sample in _shuffled(usable(raw, skips, self.num_classes), self.shuffle_buffer, buffer_rng):
                got += 1
                yield sample
            if got == 0:
                raise DataError(
                    f"training stream {stream} found no readable sample in "
                    f"{', '.join(url for url, _ in mine[:3])}{' ...' if len(mine) > 3 else ''}; "
                    "check the shards with `python -m toolkit.make_shards --verify`"
                )

    def cursor(self, epoch: int, stream: int) -> _Cursor:
        skips = Skips(self.strict)
        return _Cursor((s for s in self._raw(epoch, stream, skips) if header_ok(s, skips)), skips)

    def pieces(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, int, int]]:
        """(step, j, piece) of this rank from ``start_step`` to the epoch's end, in the order the rank uses them."""
        for step in range(start_step, self.steps):
            for j in self.batches:
                for p in range(self.order.pieces):
                    yield step, j, p

    def make_piece(self, cursors: dict, epoch: int, step: int, j: int, p: int) -> dict:
        """Piece ``p`` of micro-batch ``j`` of ``step``; augmentation seeded by each sample's place in the order."""
        stream, q = self.order.locate(step, j, p)
        if stream not in cursors:
            cursors[stream] = self.cursor(epoch, stream)
        samples, skipped = cursors[stream].take(q * self.piece, self.piece)
        skips = Skips(self.strict)  # a sample that opens but does not decode: the piece is one short, counted
        images, labels, keys = [], [], []
        with torch.random.fork_rng(devices=[]):  # with num_workers=0 this is the main process
            for i, sample in enumerate(samples):
                if self.transform is None:  # data.decode=gpu: ship the bytes, the accelerator decodes
                    image = torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8)
                else:
                    # the CPU generator only: torch.manual_seed also queues a CUDA seeding with a stack trace per call
                    torch.default_generator.manual_seed(
                        _seed(self.order.seed, "augment", epoch, step, j, p * self.piece + i)
                    )
                    image = decode_sample(sample, self.decode_hint, skips)
                    image = None if image is None else self.transform(image)
                if image is not None:
                    images.append(image)
                    labels.append(sample["__label__"])
                    keys.append(sample["__key__"])
        retries = sum(c.skips.take_retries() for c in cursors.values())
        return _collate(images, labels, keys, skipped + skips.take(), self.image_size) | {"retries": retries}

    def worker_pieces(self, worker: int, num_workers: int, epoch: int, start_step: int = 0) -> Iterator[dict]:
        cursors: dict[int, _Cursor] = {}
        for t, (step, j, p) in enumerate(self.pieces(epoch, start_step)):
            if t % num_workers == worker:
                yield self.make_piece(cursors, epoch, step, j, p) | {"position": (epoch, step, j)}

    def __iter__(self) -> Iterator[dict]:
        self._enter_worker()
        worker, num_workers = _worker()
        if num_workers != self.num_workers:
            raise RuntimeError(f"TrainStream was planned for {self.num_workers} workers, runs in {num_workers}")
        epoch, start_step = int(self._state[0]), int(self._state[1])
        try:
            yield from self.worker_pieces(worker, num_workers, epoch, start_step)
        except DataError as err:  # travels as data: the main process re-raises it as one clean line
            yield {"error": str(err)}


def _join_pieces(pieces: list[dict], pin: bool, seed: int) -> dict:
    """One micro-batch from its pieces: a single copy, straight into page-locked memory when pinning."""

    def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
        out = torch.empty((sum(len(t) for t in tensors), *tensors[0].shape[1:]), dtype=tensors[0].dtype, pin_memory=pin)
        return torch.cat(tensors, out=out)

    epoch, step, j = pieces[0]["position"]
    batch = {
        "label": cat([c["label"] for c in pieces]),
        "key": [k for c in pieces for k in c["key"]],
        "skipped": sum(c["skipped"] for c in pieces),
        "retries": sum(c.get("retries", 0) for c in pieces),
        "position": (epoch, step, j),  # the micro-batch's place in the order: (epoch, step in epoch, j)
        "device_seed": _seed(seed, "device", epoch, step, j),  # device_augment's draws for this micro-batch
    }
    if "jpeg" in pieces[0]:  # data.decode=gpu: one 1-D uint8 tensor per image, decoded on the accelerator
        return batch | {"jpeg": [j for c in pieces for j in c["jpeg"]]}
    return batch | {"image": cat([c["image"] for c in pieces])}


class TrainLoader:
    """Iterate for one epoch of ``len(self)`` micro-batches of this rank; ``set_epoch`` before each epoch.

    The ``DataLoader`` underneath yields pieces; this joins ``order.pieces`` of them per micro-batch.
    ``pin_memory`` applies to the joined batch (pinning each piece first would copy twice), and
    the per-worker ``prefetch_factor`` (counted in pieces) is raised so that at least that many
    whole micro-batches are in flight.
    """

    def __init__(self, stream: TrainStream, loader_kwargs: dict):
        self.stream = stream
        self.steps_per_epoch = stream.steps * len(stream.batches)  # micro-batches of this rank
        kwargs = dict(loader_kwargs)
        self.pin = bool(kwargs.pop("pin_memory", False))
        pieces = stream.order.pieces
        if kwargs.get("num_workers", 0) > 0:
            batches_ahead = kwargs.get("prefetch_factor") or 2
            kwargs["prefetch_factor"] = max(batches_ahead, math.ceil(batches_ahead * pieces / stream.num_workers))
        # its own generator: drawing the workers' base seed must not consume the global RNG
        self.loader = DataLoader(stream, generator=torch.Generator().manual_seed(stream.order.seed), **kwargs)
        self.epoch, self.start_step = 0, 0
        self.skipped = 0  # bad samples this rank skipped during the last pass
        self.retries = 0  # remote reads this rank retried during the last pass

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Choose the epoch (new order) and its first global step of the next pass (to resume mid-epoch)."""
        if not 0 <= start_step <= self.stream.steps:
            raise UsageError(f"start_step {start_step} is outside the epoch's {self.stream.steps} steps")
        self.epoch, self.start_step = epoch, start_step
        self.stream.set_state(epoch, start_step)

    def __iter__(self) -> Iterator[dict]:
        """This rank's micro-batches of steps start_step .. steps - 1 of the epoch."""
        self.skipped, self.retries = 0, 0
        pieces: list[dict] = []
        for piece in self.loader:
            if "error" in piece:
                raise DataError(piece["error"])
            pieces.append(piece)
            if len(pieces) == self.stream.order.pieces:
                batch = _join_pieces(pieces, self.pin, self.stream.order.seed)
                pieces = []
                self.skipped += batch["skipped"]
                self.retries += batch["retries"]
                yield batch
        if pieces:  # cannot happen while every worker makes its pieces; never drop samples quietly
            raise RuntimeError(f"the loader ended inside a batch ({len(pieces)} of {self.stream.order.pieces} pieces)")


_layout_warned = False


def sample_order(
    cfg, info: dict, *, batch_size: int, seed: int, global_batch_size: int, streams: Optional[int] = None
) -> SampleOrder:
    """The run's sample order (what a checkpoint records and a resumed run must match)."""
    return SampleOrder(
        seed=seed,
        global_batch_size=global_batch_size,
        batch_size=batch_size,
        streams=streams or default_streams(global_batch_size, batch_size),
        shards=shards_fingerprint(split_shards(cfg.shards, "train", info)),
    )


def make_train_loader(
    cfg,
    info: dict,
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int = 0,
    start_step: int = 0,
    global_batch_size: Optional[int] = None,
    streams: Optional[int] = None,
) -> TrainLoader:
    """The training loader of this rank; every rank gets the same ``len()``.

    ``global_batch_size`` defaults to ``batch_size x world_size`` (no accumulation), ``streams`` to
    ``sample_order.default_streams``; ``start_step`` counts global steps of the epoch.
    """
    _check_rank(rank, world_size, batch_size)
    shard_list = split_shards(cfg.shards, "train", info)
    num_samples = num_samples_of(shard_list, info, "train")
    global_batch = global_batch_size or batch_size * world_size
    order = sample_order(cfg, info, batch_size=batch_size, seed=seed, global_batch_size=global_batch, streams=streams)
    order.rank_batches(rank, world_size)  # a process count that does not divide the step: one line
    if num_samples < global_batch:
        raise UsageError(
            f"the global batch ({batch_size} x {world_size} process(es) x {global_batch // (batch_size * world_size)} "
            f"accumulation = {global_batch}) exceeds the {num_samples} training samples; lower the batch size"
        )
    stream = TrainStream(
        shard_list,
        order,
        num_samples=num_samples,
        shuffle_buffer=cfg.shuffle_buffer,
        num_classes=len(info.get("classes") or [0, 1]),
        transform=None if cfg.decode == "gpu" else build_train_transform(cfg),
        decode_hint=decode_hint(cfg),
        image_size=cfg.image_size,
        rank=rank,
        world_size=world_size,
        num_workers=cfg.num_workers,
        strict=cfg.strict,
    )
    _warn_layout(stream, len(shard_list), rank)
    loader = TrainLoader(stream, _loader_kwargs(cfg, persistent=bool(cfg.persistent_workers)))
    loader.set_epoch(epoch, start_step)
    return loader


def _warn_layout(stream: TrainStream, shards: int, rank: int) -> None:
    global _layout_warned
    if stream.sample_level and not _layout_warned and rank == 0 and is_main_process():
        _layout_warned = True
        streams = stream.order.streams
        log.warning(
            "only %d training shard(s) for %d sample stream(s): every stream reads every shard and keeps 1/%d of it "
            "(slower); re-pack with a smaller --shard-size so there are at least %d shards",
            shards,
            streams,
            streams,
            streams,
        )
