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

import contextlib
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import random
import re
import shlex
import tarfile
import urllib.request
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from toolkit.cli import DataError, UsageError, is_main_process

log = logging.getLogger(__name__)

INFO_NAME = "info.json"
FORMAT_VERSION = 1
URL_TIMEOUT_S = 60
PACK_HINT = "create them with `python -m toolkit.make_shards --source <Oxford-IIIT Pet folder> --out <shard folder>`"
MAX_WARNINGS = 20  # per process; further bad samples are still counted

Shard = tuple[str, Optional[int]]  # (url, number of samples from info.json if known)


# ---------------------------------------------------------------------------------------------
# Where the shards are: a folder with info.json, or a URL pattern with info.json beside it


def _is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def _is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _is_local(url: str) -> bool:
    return not (_is_pipe(url) or _is_remote(url))


def _is_pattern(shards: str) -> bool:
    """A pattern names tar files (``.../train-{000000..000011}.tar``); anything else is a folder."""
    return _is_pipe(shards) or "{" in shards or shards.rstrip("/").endswith(".tar")


def _location_part(shards: str) -> str:
    """The word of a ``pipe:`` command that names the shards (e.g. the URL given to curl)."""
    if not _is_pipe(shards):
        return shards
    words = [w for w in shlex.split(shards[len("pipe:"):]) if ".tar" in w or "{" in w]
    if not words:
        raise UsageError(f"cannot tell where the shards of {shards!r} are: the pipe: command names no .tar file")
    return words[-1]


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if _is_remote(base) else os.path.join(base, name)


def _base_of(shards: str) -> str:
    """The folder (or URL prefix) holding info.json."""
    if not _is_pattern(shards):
        return shards
    where = _location_part(shards)
    head, sep, _ = where.rpartition("/")
    return head if sep else "."


def _shard_name(url: str) -> str:
    return _location_part(url).rstrip("/").rpartition("/")[2]


def load_info(shards: str) -> dict:
    """Read and check the shards' info.json (local file, or fetched over http(s))."""
    where = _join(_base_of(shards), INFO_NAME)
    try:
        if _is_remote(where):
            with urllib.request.urlopen(where, timeout=URL_TIMEOUT_S) as response:
                text = response.read().decode("utf-8")
        else:
            with open(where, encoding="utf-8") as handle:
                text = handle.read()
    except FileNotFoundError:
        raise UsageError(f"no {INFO_NAME} at {where}: data.shards={shards!r} is not a packed shard folder; "
                         f"{PACK_HINT}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {where} ({err}); check data.shards or {PACK_HINT}") from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where} is not valid JSON ({err}); re-create the shards: {PACK_HINT}") from None
    problem = _info_problem(info)
    if problem:
        raise UsageError(f"{where}: {problem}; re-create the shards: {PACK_HINT}")
    return info


def _info_problem(info: Any) -> Optional[str]:
    if not isinstance(info, dict):
        return "not a JSON object"
    if info.get("format_version") != FORMAT_VERSION:
        return f"format_version is {info.get('format_version')!r}, this toolkit reads {FORMAT_VERSION}"
    splits = info.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "no 'splits'"
    for name, split in splits.items():
        try:
            int(split["num_samples"])
            for shard in split["shards"]:
                str(shard["name"]), int(shard["num_samples"])
        except (KeyError, TypeError, ValueError):
            return f"split {name!r} lacks num_samples or a shard list with name and num_samples"
    return None


def _split_info(info: dict, split: str) -> dict:
    if split not in info["splits"]:
        raise UsageError(f"split {split!r} is not in the shards (they have: {', '.join(info['splits'])})")
    return info["splits"][split]


def split_size(info: dict, split: str) -> int:
    return int(_split_info(info, split)["num_samples"])


def _split_shards(shards: str, split: str, info: dict) -> list[Shard]:
    """The split's shard URLs in their packed order, with their sizes from info.json.

    A folder lists info.json's shards. A pattern is brace-expanded (``{split}`` stands for the
    split's name) and keeps the tars named ``<split>-*``; a pattern naming none of them (say, a
    train pattern asked for ``val``) falls back to info.json's shards in the pattern's folder.
    """
    entries = _split_info(info, split)["shards"]
    if not _is_pattern(shards):
        return [(_join(shards, e["name"]), int(e["num_samples"])) for e in entries]
    from braceexpand import braceexpand

    sizes = {e["name"]: int(e["num_samples"]) for e in entries}
    urls = [u for u in braceexpand(shards.replace("{split}", split)) if _shard_name(u).startswith(f"{split}-")]
    if urls:
        return [(u, sizes.get(_shard_name(u))) for u in urls]
    if _is_pipe(shards):
        raise UsageError(f"data.shards={shards!r} names no {split}-*.tar shard; put {{split}} in the pattern, "
                         f"e.g. 'pipe:curl -s https://host/pets/{{split}}-{{000000..000003}}.tar'")
    return [(_join(_base_of(shards), e["name"]), int(e["num_samples"])) for e in entries]


def split_urls(shards: str, split: str, info: dict) -> list[str]:
    return [url for url, _ in _split_shards(shards, split, info)]


def _num_samples(shard_list: Sequence[Shard], info: dict, split: str) -> int:
    """Samples in the chosen shards: a pattern may pick a subset of the split."""
    if all(n is not None for _, n in shard_list):
        return sum(n for _, n in shard_list)
    return split_size(info, split)


def check_shards_exist(shards: str, info: dict, splits: Sequence[str]) -> None:
    """Fail before training starts, not hours in, when local shard files are missing."""
    missing = [url for split in splits for url in split_urls(shards, split, info)
               if _is_local(url) and not os.path.isfile(url)]
    if missing:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(f"{len(missing)} shard file(s) listed in {INFO_NAME} are missing: {listed}; "
                         f"point data.shards at a complete shard folder or {PACK_HINT}")


def resolve_normalization(cfg, info: dict) -> tuple[list[float], list[float]]:
    """The config's mean/std if given, else the train-split statistics stored with the shards."""
    stats = info.get("normalization") or {}
    mean = cfg.mean if cfg.mean is not None else stats.get("mean")
    std = cfg.std if cfg.std is not None else stats.get("std")
    if mean is None or std is None:
        raise UsageError(f"{INFO_NAME} has no normalization statistics; set data.mean and data.std "
                         "(three numbers each) or re-create the shards")
    try:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
    except (TypeError, ValueError):
        raise UsageError(f"normalization mean={mean!r} std={std!r} must be lists of three numbers") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UsageError(f"normalization mean={mean} std={std} needs three numbers each, std > 0")
    return mean, std


# ---------------------------------------------------------------------------------------------
# Decoding and augmentation


def decode_jpeg(data: bytes, min_side_hint: int = 0) -> Image.Image:
    """Decode image bytes to RGB, letting libjpeg shrink by 2/4/8 while decoding when allowed.

    JPEG's draft mode scales in the DCT domain, so decoding a large image for a small target
    costs a fraction of a full decode; the shorter side stays >= ``min_side_hint`` (0: full size).
    Raises on truncated or corrupt data (the caller decides to skip or fail).
    """
    image = Image.open(io.BytesIO(data))
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
        raise UsageError(f"data.color_jitter={cfg.color_jitter} must be 4 numbers "
                         "(brightness, contrast, saturation, hue) or null")


def build_train_transform(cfg):
    """PIL image -> uint8 [3, S, S] crop: random crop, flip, and the augmentation that needs PIL.

    Float conversion, normalization, random erasing and (with ``data.jitter_on=device``) colour
    jitter happen on the whole batch on the training device: ``toolkit.device_augment.batch_to_device``.
    """
    from torchvision.transforms import v2

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


def build_eval_transform(cfg, mean: Sequence[float], std: Sequence[float]):
    """PIL image -> normalized float tensor: resize the shorter side, center crop."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(cfg.resize_size, antialias=True), v2.CenterCrop(cfg.image_size),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)),
                       v2.ToPureTensor()])


def _decode_hint(cfg) -> int:
    return max(cfg.resize_size, cfg.image_size)


# ---------------------------------------------------------------------------------------------
# Reading tars: raw samples (bytes), counting what cannot be read


_warnings_given = 0


class _Skips:
    """Counts bad samples (or, in strict mode, stops at the first one)."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.count = 0

    def report(self, url: str, key: str, reason: str, n: int = 1) -> None:
        global _warnings_given
        message = f"{url}: sample {key}: {reason}"
        if self.strict:
            raise DataError(f"{message} (data.strict=true; set it to false to skip and count bad samples)")
        self.count += n
        _warnings_given += 1
        if _warnings_given <= MAX_WARNINGS:
            log.warning("skipping %d bad sample(s): %s", n, message)
        elif _warnings_given == MAX_WARNINGS + 1:
            log.warning("more bad samples: counted in the skipped totals, no longer warned about one by one")

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def _open(url: str):
    if _is_pipe(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    if _is_remote(url):
        return urllib.request.urlopen(url, timeout=URL_TIMEOUT_S)
    return open(url, "rb")


# webdataset's convention: the key is the member path up to the first dot of its file name
_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def _tar_samples(stream) -> Iterator[dict]:
    """Group consecutive tar members sharing a key into ``{"__key__": key, ext: bytes}``.

    Member names are only ever used as strings, never as paths on disk.
    """
    current: Optional[dict] = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            match = _MEMBER.match(member.name) if member.isfile() else None
            if match is None:
                continue
            key, ext = match.groups()
            data = tar.extractfile(member).read()
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext] = data
    if current is not None:
        yield current


def _read_shards(shards: Sequence[Shard], skips: _Skips,
                 owner: Optional[Callable[[int], bool]] = None) -> Iterator[dict]:
    """Raw samples of ``shards`` in order, tagged with ``__url__``; with ``owner``, only indices it accepts.

    A shard that cannot be opened or ends early loses the samples info.json says it still
    had; they count as skipped (for their owner), so sample indices stay the same in every slot.
    """
    index = 0
    for url, expected in shards:
        read, last_key, error = 0, None, None
        stream = None
        try:
            stream = _open(url)
            for sample in _tar_samples(stream):
                read, last_key = read + 1, sample["__key__"]
                index += 1
                if owner is None or owner(index - 1):
                    sample["__url__"] = url
                    yield sample
        except (OSError, tarfile.TarError, EOFError) as err:
            error = f"shard unreadable ({type(err).__name__}: {err})"
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):  # a pipe closed early reports SIGPIPE
                    stream.close()
        if error is None and expected is not None and read < expected:
            error = f"shard ends early (a tar cut inside a header reads as a clean end), {read} of {expected} read"
        if error is None:
            continue
        lost = max(expected - read, 0) if expected is not None else 1
        mine = sum(1 for i in range(index, index + lost) if owner is None or owner(i))
        index += lost
        if mine or skips.strict:
            where = f"after {last_key}" if last_key is not None else "(whole shard)"
            skips.report(url, where, f"{error}; {lost} of its samples lost", n=mine)


def _bad_reason(sample: dict, num_classes: int) -> Optional[str]:
    """Why a raw sample cannot be used (checks that need no decoding), or None; sets ``__label__``."""
    if "jpg" not in sample:
        return "no jpg"
    if "cls" not in sample:
        return "no cls"
    try:
        label = int(sample["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return f"cls {sample['cls'][:16]!r} is not an integer"
    if not 0 <= label < num_classes:
        return f"label {label} outside 0..{num_classes - 1}"
    sample["__label__"] = label
    return None


def _usable(samples: Iterator[dict], skips: _Skips, num_classes: int) -> Iterator[dict]:
    for sample in samples:
        reason = _bad_reason(sample, num_classes)
        if reason is None:
            yield sample
        else:
            skips.report(sample["__url__"], sample["__key__"], reason)


def _decode(sample: dict, hint: int, skips: _Skips) -> Optional[Image.Image]:
    try:
        return decode_jpeg(sample["jpg"], hint)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... on broken files
        skips.report(sample["__url__"], sample["__key__"], f"cannot decode jpg ({type(err).__name__}: {err})")
        return None


def _header_ok(sample: dict, skips: _Skips) -> bool:
    """What a skipped (not decoded) batch can check cheaply: that the bytes open as an image."""
    try:
        Image.open(io.BytesIO(sample["jpg"]))
        return True
    except Exception as err:
        skips.report(sample["__url__"], sample["__key__"], f"cannot decode jpg ({type(err).__name__}: {err})")
        return False


def _shuffled(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer of ``size`` raw samples: each incoming sample swaps out a random resident."""
    if size <= 1:  # no buffer: the shards' own (seeded, shuffled) order
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
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
    return batch | {"image": torch.stack(images) if images else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)}


def _loader_kwargs(cfg, persistent: bool) -> dict:
    kwargs = {"batch_size": None, "num_workers": cfg.num_workers,
              "pin_memory": bool(cfg.pin_memory and torch.cuda.is_available())}
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

    def __init__(self, shards: Sequence[Shard], *, num_classes: int, transform, decode_hint: int, image_size: int,
                 batch_size: int, rank: int, world_size: int, num_workers: int, strict: bool):
        self.shards = list(shards)
        self.num_classes = num_classes
        self.transform = transform
        self.decode_hint = decode_hint
        self.image_size = image_size
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(1, num_workers)
        self.strict = strict


class TrainStream(_ShardStream):
    """The per-worker chunk generator behind ``TrainLoader`` (runs inside the loader workers)."""

    def __init__(self, shards: Sequence[Shard], *, num_samples: int, num_classes: int, transform, decode_hint: int,
                 image_size: int, batch_size: int, rank: int, world_size: int, num_workers: int, seed: int,
                 shuffle_buffer: int, strict: bool):
        super().__init__(shards, num_classes=num_classes, transform=transform, decode_hint=decode_hint,
                         image_size=image_size, batch_size=batch_size, rank=rank, world_size=world_size,
                         num_workers=num_workers, strict=strict)
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
        targets = [self.quota(slot % self.num_workers) * self.chunk_size
                   for slot in range(self.world_size * self.num_workers)]
        return _assign_shards(self.sizes, order, targets)

    def _raw(self, epoch: int, worker: int, skips: _Skips) -> Iterator[dict]:
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
                raw = _read_shards(mine, skips)
            else:  # every slot reads every shard in the same order and keeps its own indices
                mine = list(self.shards)
                random.Random(_seed(self.seed, "shards", epoch, cycle)).shuffle(mine)
                raw = _read_shards(mine, skips, owner=lambda i: i % n_slots == slot)
            got = 0
            for sample in _shuffled(_usable(raw, skips, self.num_classes), self.shuffle_buffer, buffer_rng):
                got += 1
                yield sample
            if got == 0:
                raise DataError(f"rank {self.rank} loader worker {worker} found no readable training sample in "
                                f"{', '.join(url for url, _ in mine[:3])}{' ...' if len(mine) > 3 else ''}; "
                                "check the shards with `python -m toolkit.make_shards --verify`")

    def worker_chunks(self, worker: int, epoch: int, start_chunk: int = 0) -> Iterator[dict]:
        """Global chunks c = worker, worker + W, ... with c >= start_chunk, each exactly full."""
        skips = _Skips(self.strict)
        raw = self._raw(epoch, worker, skips)
        resumed = False
        for c in range(worker, self.chunks, self.num_workers):
            if c < start_chunk:  # consume the same raw samples without decoding them
                taken = 0
                while taken < self.chunk_size:
                    taken += _header_ok(next(raw), skips)
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
                        image = torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8) \
                            if _header_ok(sample, skips) else None
                    else:
                        image = _decode(sample, self.decode_hint, skips)
                        image = None if image is None else self.transform(image)
                    if image is not None:
                        images.append(image)
                        labels.append(sample["__label__"])
                        keys.append(sample["__key__"])
            yield _collate(images, labels, keys, skips.take(), self.image_size)

    def __iter__(self) -> Iterator[dict]:
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
        out = torch.empty((sum(len(t) for t in tensors), *tensors[0].shape[1:]), dtype=tensors[0].dtype,
                          pin_memory=pin)
        return torch.cat(tensors, out=out)

    batch = {"label": cat([c["label"] for c in chunks]), "key": [k for c in chunks for k in c["key"]],
             "skipped": sum(c["skipped"] for c in chunks)}
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
            kwargs["prefetch_factor"] = max(batches_ahead,
                                            math.ceil(batches_ahead * stream.chunks_per_batch / stream.num_workers))
        # its own generator: drawing the workers' base seed must not consume the global RNG
        self.loader = DataLoader(stream, generator=torch.Generator().manual_seed(stream.seed), **kwargs)
        self.epoch, self.start_step = 0, 0
        self.skipped = 0  # bad samples this rank skipped during the last pass

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
        self.skipped = 0
        chunks: list[dict] = []
        for chunk in self.loader:
            if "error" in chunk:
                raise DataError(chunk["error"])
            chunks.append(chunk)
            if len(chunks) == self.stream.chunks_per_batch:
                batch = _join_chunks(chunks, self.pin)
                chunks = []
                self.skipped += batch["skipped"]
                yield batch
        if chunks:  # cannot happen while every worker fills its quota; never drop samples quietly
            raise RuntimeError(f"the loader ended inside a batch ({len(chunks)} of "
                               f"{self.stream.chunks_per_batch} chunks)")


ShardLoader = TrainLoader  # the name used in the design notes

_layout_warned = False


def make_train_loader(cfg, info: dict, *, batch_size: int, rank: int, world_size: int, seed: int,
                      epoch: int = 0, start_step: int = 0) -> TrainLoader:
    """The training loader of this rank; every rank gets the same ``len()``."""
    global _layout_warned
    _check_rank(rank, world_size, batch_size)
    shard_list = _split_shards(cfg.shards, "train", info)
    num_samples = _num_samples(shard_list, info, "train")
    if num_samples < batch_size * world_size:
        raise UsageError(f"batch size {batch_size} x {world_size} process(es) = {batch_size * world_size} exceeds the "
                         f"{num_samples} training samples; lower the batch size")
    stream = TrainStream(shard_list, num_samples=num_samples, num_classes=len(info.get("classes") or [0, 1]),
                         transform=None if cfg.decode == "gpu" else build_train_transform(cfg),
                         decode_hint=_decode_hint(cfg),
                         image_size=cfg.image_size, batch_size=batch_size, rank=rank, world_size=world_size,
                         num_workers=cfg.num_workers, seed=seed, shuffle_buffer=cfg.shuffle_buffer,
                         strict=cfg.strict)
    if stream.sample_level and not _layout_warned and rank == 0 and is_main_process():
        _layout_warned = True
        log.warning("only %d training shard(s) for %d process(es) x %d loader worker(s): every worker reads every "
                    "shard and keeps 1/%d of it (slower); re-pack with a smaller --shard-size so there are at least "
                    "%d shards", len(shard_list), world_size, stream.num_workers,
                    world_size * stream.num_workers, world_size * stream.num_workers)
    loader = TrainLoader(stream, _loader_kwargs(cfg, persistent=bool(cfg.persistent_workers)))
    loader.set_epoch(epoch, start_step)
    return loader


# ---------------------------------------------------------------------------------------------
# Evaluation: every sample exactly once over all ranks and workers


class EvalStream(_ShardStream):
    """The per-worker batch generator behind ``EvalLoader``."""

    def __init__(self, shards: Sequence[Shard], *, num_samples: int, num_classes: int, transform, decode_hint: int,
                 image_size: int, batch_size: int, rank: int, world_size: int, num_workers: int, strict: bool):
        super().__init__(shards, num_classes=num_classes, transform=transform, decode_hint=decode_hint,
                         image_size=image_size, batch_size=batch_size, rank=rank, world_size=world_size,
                         num_workers=num_workers, strict=strict)
        n_slots = world_size * self.num_workers
        self.sizes = _sizes(self.shards, num_samples)
        self.num_samples = num_samples
        self.plan = (None if len(self.shards) < n_slots else
                     _assign_shards(self.sizes, range(len(self.shards)), [math.ceil(num_samples / n_slots)] * n_slots))

    def slot_samples(self, worker: int) -> int:
        """Samples slot (rank, worker) reads if no sample is bad."""
        slot, n_slots = self.rank * self.num_workers + worker, self.world_size * self.num_workers
        if self.plan is None:
            return len(range(slot, self.num_samples, n_slots))
        return sum(self.sizes[i] for i in self.plan[slot])

    def worker_batches(self, worker: int) -> Iterator[dict]:
        slot, n_slots = self.rank * self.num_workers + worker, self.world_size * self.num_workers
        skips = _Skips(self.strict)
        if self.plan is None:
            raw = _read_shards(self.shards, skips, owner=lambda i: i % n_slots == slot)
        else:
            raw = _read_shards([self.shards[i] for i in self.plan[slot]], skips)
        pending: Optional[dict] = None  # held back one batch so skips after the last sample land in it
        images, labels, keys, breeds = [], [], [], []
        for sample in _usable(raw, skips, self.num_classes):
            image = _decode(sample, self.decode_hint, skips)
            if image is None:
                continue
            images.append(self.transform(image))
            labels.append(sample["__label__"])
            keys.append(sample["__key__"])
            breeds.append(_breed(sample))
            if len(images) == self.batch_size:
                if pending is not None:
                    yield pending
                pending = _collate(images, labels, keys, skips.take(), self.image_size) | {"breed": breeds}
                images, labels, keys, breeds = [], [], [], []
        if images or (pending is None and skips.count):
            if pending is not None:
                yield pending
            # the last, partial batch; empty only when this worker found nothing but bad samples
            yield _collate(images, labels, keys, skips.take(), self.image_size) | {"breed": breeds}
        elif pending is not None:
            pending["skipped"] += skips.take()
            yield pending

    def __iter__(self) -> Iterator[dict]:
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

    def __len__(self) -> int:
        """Batches when no sample is bad (a skipped sample can only make it smaller)."""
        return sum(math.ceil(self.stream.slot_samples(w) / self.stream.batch_size)
                   for w in range(self.stream.num_workers))

    def __iter__(self) -> Iterator[dict]:
        self.skipped = 0
        for batch in self.loader:
            if "error" in batch:
                raise DataError(batch["error"])
            self.skipped += batch["skipped"]
            yield batch


def make_eval_loader(cfg, info: dict, split: str, *, batch_size: int, rank: int, world_size: int) -> EvalLoader:
    """Evaluation batches of ``split`` for this rank: over all ranks, every sample exactly once."""
    _check_rank(rank, world_size, batch_size)
    shard_list = _split_shards(cfg.shards, split, info)
    mean, std = resolve_normalization(cfg, info)
    stream = EvalStream(shard_list, num_samples=_num_samples(shard_list, info, split),
                        num_classes=len(info.get("classes") or [0, 1]), transform=build_eval_transform(cfg, mean, std),
                        decode_hint=_decode_hint(cfg), image_size=cfg.image_size, batch_size=batch_size, rank=rank,
                        world_size=world_size, num_workers=cfg.num_workers, strict=cfg.strict)
    return EvalLoader(stream, _loader_kwargs(cfg, persistent=False))  # one pass: idle workers would only hold memory


# ---------------------------------------------------------------------------------------------
# Pictures and synthetic input


def raw_samples(shards: str, split: str, info: Optional[dict] = None) -> Iterator[dict]:
    """Undecoded samples ``{"__key__", "__url__", "jpg", "cls", "json": bytes}`` in packed order.

    Unreadable shards are warned about and skipped.
    """
    info = info if info is not None else load_info(shards)
    yield from _read_shards(_split_shards(shards, split, info), _Skips(strict=False))


def read_samples(shards: str, split: str, keys: Optional[set[str]] = None,
                 limit: Optional[int] = None) -> Iterator[dict]:
    """Decoded samples ``{"key", "label", "image": PIL RGB, "meta"}`` in packed order, for pictures.

    ``keys`` keeps only those samples (and stops once all are found); ``limit`` stops after that many.
    Bad samples are skipped with a warning.
    """
    info = load_info(shards)
    wanted = set(keys) if keys is not None else None
    if limit is not None and limit <= 0 or wanted is not None and not wanted:
        return
    num_classes = len(info.get("classes") or [0, 1])
    skips = _Skips(strict=False)
    given = 0
    for sample in raw_samples(shards, split, info):
        if wanted is not None and sample["__key__"] not in wanted:
            continue
        reason = _bad_reason(sample, num_classes)
        if reason is not None:
            skips.report(sample["__url__"], sample["__key__"], reason)
            continue
        image = _decode(sample, 0, skips)
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
            yield {"image": self.image, "label": self.label, "skipped": 0,
                   "key": [f"synthetic-{step}-{i}" for i in range(len(self.label))]}


def synthetic_batches(batch_size: int, image_size: int, steps: int, num_classes: int = 2) -> SyntheticBatches:
    return SyntheticBatches(batch_size, image_size, steps, num_classes)
