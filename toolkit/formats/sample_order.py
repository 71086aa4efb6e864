"""The sample order of a training run, defined without the process count, and its record in checkpoints.

A global step is ``M = global_batch_size / batch_size`` micro-batches ``j = 0..M-1``; each
micro-batch is ``batch_size / piece`` pieces of ``piece`` samples. Piece ``p`` of micro-batch
``j`` of step ``s`` is the ``g``-th piece of the epoch, ``g = (s * M + j) * pieces + p``, and comes
from stream ``g % streams`` (its ``g // streams``-th piece). ``data.loader`` fills the streams from
the shards by (seed, epoch); none of this depends on the number of processes W or of loader
workers. Rank ``r`` of W runs micro-batches ``r * M/W .. (r + 1) * M/W - 1`` of every step
(gradient accumulation ``M/W``), so W may be any divisor of M.

A checkpoint records the order (``SampleOrder.to_dict``) and where in it the run is; a run resumes
from it only with the same order, on any valid W.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Optional, Sequence

from toolkit.errors import UsageError

MAX_PIECE = 16  # samples per loader-worker task at most


def piece_size(batch_size: int) -> int:
    """Samples per piece: the largest divisor of the micro-batch that is <= ``MAX_PIECE``."""
    return max(d for d in range(1, min(MAX_PIECE, batch_size) + 1) if batch_size % d == 0)


def valid_process_counts(global_batch_size: int, batch_size: int) -> list[int]:
    """The process counts a run can use: the divisors of its micro-batches per step."""
    micro = global_batch_size // batch_size
    return [w for w in range(1, micro + 1) if micro % w == 0]


def accumulation(global_batch_size: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per process and step (gradient accumulation), or one line saying which W would do."""
    if global_batch_size % (batch_size * world_size) == 0:
        return global_batch_size // (batch_size * world_size)
    valid = valid_process_counts(global_batch_size, batch_size) if global_batch_size % batch_size == 0 else []
    hint = (
        f"this run can continue on {', '.join(map(str, valid))} process(es)"
        if valid
        else "make it a multiple of train.batch_size"
    )
    raise UsageError(
        f"train.global_batch_size = {global_batch_size} is not train.batch_size {batch_size} x {world_size} "
        f"process(es) x a whole number of accumulation steps; {hint}"
    )


def default_streams(global_batch_size: int, batch_size: int) -> int:
    """One stream per piece of a global step."""
    return (global_batch_size // batch_size) * (batch_size // piece_size(batch_size))


def shards_fingerprint(shards: Sequence[tuple[str, Optional[int]]]) -> str:
    """The training shards by name (not location, so a moved copy matches) and sample count."""
    names = [[url.rstrip("/").rsplit("/", 1)[-1], n] for url, n in shards]
    return hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class SampleOrder:
    """What the sample order depends on: equal in a checkpoint and the run that resumes it."""

    seed: int
    global_batch_size: int
    batch_size: int
    streams: int
    shards: str  # shards_fingerprint of the training shards

    @property
    def micro_batches(self) -> int:
        return self.global_batch_size // self.batch_size

    @property
    def pieces(self) -> int:
        return self.batch_size // piece_size(self.batch_size)

    def locate(self, step: int, j: int, p: int) -> tuple[int, int]:
        """(stream, piece within the stream) of piece ``p`` of micro-batch ``j`` of ``step`` (within an epoch)."""
        g = (step * self.micro_batches + j) * self.pieces + p
        return g % self.streams, g // self.streams

    def rank_batches(self, rank: int, world_size: int) -> range:
        """The micro-batches ``j`` that rank ``rank`` of ``world_size`` runs in every step."""
        per_rank = accumulation(self.global_batch_size, self.batch_size, world_size)
        return range(rank * per_rank, (rank + 1) * per_rank)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def mismatch(self, saved: dict) -> Optional[str]:
        """The first key in which ``saved`` (a checkpoint's record) differs from this order, said in words."""
        names = {"shards": "training shards (fingerprint)", "seed": "train.seed", "streams": "train.streams"}
        for key, value in self.to_dict().items():
            if saved.get(key) != value:
                name = names.get(key, f"train.{key}")
                return f"{name} is {value!r} but the checkpoint's sample order has {saved.get(key)!r}"
        return None
