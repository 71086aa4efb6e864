"""Pack a labelled image dataset into webdataset tar shards that are byte-for-byte reproducible and verified.

Why shards: reading a few large sequential files feeds 8 GPUs x N loader workers far better than
7,000 small ones, and resizing once at pack time (shorter side 288 by default) cuts the JPEG
decode cost every epoch pays. Why so careful: training trusts ``info.json`` blindly (sample
counts for equal per-rank steps, label counts, normalization), so every number in it is exact,
every skipped image is recorded with its reason, and ``--verify`` re-checks it all. What is packed
(Oxford-IIIT Pet by species or breed, or any class-per-folder dataset) comes from ``sources``.

    python -m toolkit.make_shards --source data/oxford-iiit-pet --out shards/
    python -m toolkit.make_shards --synthetic 512 --out shards/       # stand-in data, marked synthetic
    python -m toolkit.make_shards --verify shards/
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import stat
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError
from webdataset import TarWriter

from toolkit.cli import is_main_process, progress
from toolkit.data.dataset_card import CARD_NAME, write_dataset_card
from toolkit.data.listing import Item, Listing
from toolkit.data.sources import assign_splits, read_listing
from toolkit.data.transforms import open_image
from toolkit.errors import DataError, UsageError
from toolkit.fileio import TMP_PREFIX, atomic_write_bytes, fsync_dir
from toolkit.formats import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    SHARD_NAME,
    SPLITS,
    shard_name,
    write_manifest,
)

FOREIGN_OK = {MANIFEST_NAME, "README.md", ".gitignore", ".gitkeep"}  # may sit beside our shards
SIZE_FIELDS = ("width", "height", "orig_width", "orig_height", "source")  # in every sample's json, after the label's

DEFAULTS = {
    "val_fraction": 0.2,
    "seed": 42,
    "split_mode": "stratified",
    "test_fraction": 0.2,  # image folders without a test/ folder only; Oxford has its official test list
    "resize_shorter": 288,
    "quality": 90,
    "shard_size": 64,
    "shard_bytes": 64 << 20,
}
MAX_IMAGE_FILE_BYTES = 64 << 20  # the largest Oxford photo is under 1 MB; a bigger "image" is not read
DEFAULT_SYNTHETIC_ROOT = Path("data/synthetic-pets")


# --------------------------------------------------------------------------------------------
# One image: decode, convert, resize, encode (runs in worker processes)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    split: str
    item: Item
    resize_shorter: int
    quality: int
    want_stats: bool  # pixel sums for the normalization, needed on train only
    max_file_bytes: int = MAX_IMAGE_FILE_BYTES  # a larger file is skipped unread


@dataclass(frozen=True)
class Packed:
    jpeg: bytes
    width: int
    height: int
    orig_width: int
    orig_height: int
    pixel_sum: tuple[int, int, int]  # exact integer sums over the stored pixels, per channel
    pixel_sq_sum: tuple[int, int, int]
    pixels: int


def target_size(size: tuple[int, int], shorter: int) -> Optional[tuple[int, int]]:
    """The size with the shorter side brought down to ``shorter``; None when no resize is needed."""
    width, height = size
    if shorter <= 0 or min(width, height) <= shorter:
        return None  # never upscale
    scale = shorter / min(width, height)
    if width <= height:
        return shorter, max(1, round(height * scale))
    return max(1, round(width * scale)), shorter


def to_rgb(image: Image.Image) -> Image.Image:
    """Plain ``convert("RGB")``, except transparency is composited on white rather than dropped."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """Make Pillow raise on truncated files instead of padding them with grey."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def decode_error(err: Exception) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "undecodable: not an image format Pillow recognises"
    return f"undecodable: {type(err).__name__}: {err}"


def file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a file"


def read_listed_file(path: Path, cap: int) -> Union[bytes, str]:
    """A listed file's bytes, or why it must not be packed: missing, not a regular file (a FIFO blocks
    the packer forever, a link to /dev/zero never ends), or larger than any photo (``cap`` bytes).

    The file is opened once, without blocking (a FIFO opens at once), and judged by ``fstat`` of the
    open file: a link swapped to a FIFO or a device after the listing is caught, not followed later.
    At most ``cap + 1`` bytes are read, so a file that grows meanwhile cannot take the memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return f"missing: {path.parent.name}/{path.name} does not exist (or is a broken link)"
    except OSError as err:
        return f"unreadable: {type(err).__name__}: {err.strerror or err}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return f"not a regular file: {path.name} is {file_kind(info.st_mode)}, never read"
        if info.st_size > cap:
            return f"too large: {info.st_size:,} bytes, over the {cap:,}-byte cap for one image"
        chunks, left = [], cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as err:
        return f"unreadable: {type(err).__name__}: {err.strerror or err}"
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:
        return f"too large: over the {cap:,}-byte cap for one image (it grew while being read)"
    return data


def process_image(job: Job) -> Union[Packed, str]:
    """Turn one listed image into stored JPEG bytes, or return why it must be skipped."""
    path = Path(job.item.path)
    data = read_listed_file(path, job.max_file_bytes)
    if isinstance(data, str):
        return data
    with strict_decoding():
        try:
            with open_image(data) as image:
                original_size, source_format = image.size, image.format
                target = target_size(original_size, job.resize_shorter)
                if target is not None and source_format == "JPEG":
                    image.draft("RGB", target)  # DCT-domain downscale by up to 8x: far cheaper decode
                image.load()
                clean_jpeg = source_format == "JPEG" and image.mode == "RGB" and target is None
                rgb = to_rgb(image)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for broken files
            return decode_error(err)
        if clean_jpeg:
            stored, jpeg = rgb, data  # copied unchanged: no generation loss, and decodes to exactly rgb
        else:
            if target is not None:
                rgb = rgb.resize(target, Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            rgb.save(buffer, "JPEG", quality=job.quality)
            jpeg = buffer.getvalue()
            stored = open_image(jpeg).convert("RGB") if job.want_stats else rgb
    sums, squares, pixels = (0, 0, 0), (0, 0, 0), 0
    if job.want_stats:  # from the 3 x 256-bin histogram: exact integers, and far cheaper than summing pixels
        histogram = np.asarray(stored.histogram(), dtype=np.int64).reshape(3, 256)
        values = np.arange(256, dtype=np.int64)
        sums = tuple(int(v) for v in histogram @ values)
        squares = tuple(int(v) for v in histogram @ (values * values))
        pixels = stored.width * stored.height
    return Packed(
        jpeg=jpeg,
        width=stored.width,
        height=stored.height,
        orig_width=original_size[0],
        orig_height=original_size[1],
        pixel_sum=sums,
        pixel_sq_sum=squares,
        pixels=pixels,
    )


def map_ordered(fn: Callable, items: Sequence, workers: int) -> Iterator:
    """``map`` over a process pool, results in input order; in-process for one worker."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    # Not fork: forking a process that runs threads (tqdm, torch, a logger) can deadlock the child.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(workers, len(items))) as pool:
        yield from pool.imap(fn, items, chunksize=max(1, min(16, len(items) // (workers * 8))))


# --------------------------------------------------------------------------------------------
# Splits and shards
# --------------------------------------------------------------------------------------------


def tar_bytes(member_bytes: int) -> int:
    """Size of a tar holding members of ``member_bytes`` (headers included): end blocks, record padding."""
    return math.ceil((member_bytes + 2 * tarfile.BLOCKSIZE) / tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class SplitShardWriter:
    """Collects one split's samples and writes ``{split}-{index:06d}.tar`` whenever a shard is full."""

    def __init__(self, folder: Path, split: str, max_samples: int, max_bytes: int):
        self.folder, self.split = folder, split
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.samples: list[tuple[str, dict[str, bytes]]] = []
        self.member_bytes = 0
        self.shards: list[dict] = []

    def add(self, key: str, members: dict[str, bytes]) -> None:
        size = sum(
            tarfile.BLOCKSIZE + math.ceil(len(d) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for d in members.values()
        )
        if self.samples and (
            len(self.samples) >= self.max_samples or tar_bytes(self.member_bytes + size) > self.max_bytes
        ):
            self.flush()
        self.samples.append((key, members))
        self.member_bytes += size

    def flush(self) -> None:
        if not self.samples:
            return
        buffer = io.BytesIO()
        # nothing that varies between runs or machines: fixed mtime, owner and mode; members sorted by extension
        with TarWriter(buffer, encoder=False, user="", group="", mode=0o444, mtime=0) as tar:
            for key, members in self.samples:
                tar.write({"__key__": key, **members})
        data = buffer.getvalue()
        name = shard_name(self.split, len(self.shards))
        atomic_write_bytes(self.folder / name, data)
        self.shards.append(
            {
                "name": name,
                "num_samples": len(self.samples),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        self.samples, self.member_bytes = [], 0


def sample_members(item: Item, packed: Packed) -> dict[str, bytes]:
    meta = {
        **dict(item.fields),
        "width": packed.width,
        "height": packed.height,
        "orig_width": packed.orig_width,
        "orig_height": packed.orig_height,
        "source": item.source,
    }
    return {
        "cls": str(item.label).encode("ascii"),
        "jpg": packed.jpeg,
        "json": json.dumps(meta, separators=(",", ":")).encode("utf-8"),
    }


def normalization(sums: list[int], squares: list[int], pixels: int, num_images: int) -> dict:
    """Mean/std per channel in [0, 1], from exact integer sums (so any worker count gives the same floats)."""
    if pixels == 0:
        raise DataError("no train image could be packed, so there is nothing to compute the normalization on")
    mean = [s / (255 * pixels) for s in sums]
    std = [math.sqrt(max(0, q * pixels - s * s)) / (255 * pixels) for s, q in zip(sums, squares)]
    return {"mean": mean, "std": std, "computed_on": "train", "num_images": num_images}


# --------------------------------------------------------------------------------------------
# Output folder: safe replacement of a previous run
# --------------------------------------------------------------------------------------------


def check_out_folder(out: Path, listing: Listing) -> None:
    if out == listing.root:
        raise UsageError(f"--out {out} is the dataset folder itself; choose a separate folder, e.g. shards/")
    for inside in listing.forbidden_outputs:
        if out == inside or inside in out.parents:
            raise UsageError(f"--out {out} is inside the dataset's {inside.name}/ folder; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if out.is_dir():  # sub-folders (e.g. shards/quickstart/) are left alone and allowed
        foreign = sorted(p.name for p in out.iterdir() if not p.is_dir() and not is_ours(p.name))
        if foreign:
            raise UsageError(
                f"--out {out} holds files make_shards did not write (e.g. {foreign[0]!r}); "
                f"choose a new or empty folder, or remove them"
            )


def is_ours(name: str) -> bool:
    return bool(SHARD_NAME.match(name)) or name in FOREIGN_OK or name.startswith(TMP_PREFIX)


def remove_leftovers(out: Path) -> None:
    """Temporary files and folders of runs that were killed before they could clean up."""
    for path in out.glob(TMP_PREFIX + "*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def install(staging: Path, out: Path, info: dict) -> None:
    """Replace the previous output: old manifest away first, shards in, new manifest last.

    A crash in between leaves a folder without info.json, which readers reject, never a
    manifest that points at shards of another run.
    """
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    fsync_dir(out)
    new = {shard["name"] for split in info["splits"].values() for shard in split["shards"]}
    for stale in out.iterdir():
        if SHARD_NAME.match(stale.name) and stale.name not in new:
            stale.unlink()
    for name in sorted(new):
        os.replace(staging / name, out / name)
    fsync_dir(out)
    if not write_dataset_card(out, info):
        print(f"note: {out / CARD_NAME} is not a dataset card written by make_shards; kept as it is", flush=True)
    write_manifest(out, info)


# --------------------------------------------------------------------------------------------
# Pack
# --------------------------------------------------------------------------------------------


class Packing:
    """What packing one dataset accumulates: the shard writers, class counts, train pixel sums, skips."""

    def __init__(self, staging: Path, classes: Sequence[str], shard_size: int, shard_bytes: int, skipped: list[dict]):
        self.classes = list(classes)
        self.writers = {split: SplitShardWriter(staging, split, shard_size, shard_bytes) for split in SPLITS}
        self.counts = {split: [0] * len(self.classes) for split in SPLITS}
        self.sums, self.squares, self.pixels = [0, 0, 0], [0, 0, 0], 0
        self.skipped = skipped

    def add(self, job: Job, result: Union[Packed, str]) -> None:
        if isinstance(result, str):
            self.skipped.append({"name": job.item.key, "split": job.split, "reason": result})
            return
        self.writers[job.split].add(job.item.key, sample_members(job.item, result))
        self.counts[job.split][job.item.label] += 1
        if job.split == "train":
            self.sums = [a + b for a, b in zip(self.sums, result.pixel_sum)]
            self.squares = [a + b for a, b in zip(self.squares, result.pixel_sq_sum)]
            self.pixels += result.pixels

    def finish(self) -> None:
        for writer in self.writers.values():
            writer.flush()


def plan_jobs(listed: dict[str, list[Item]], resize_shorter: int, quality: int) -> tuple[list[Job], list[dict]]:
    """One job per image to decode, and the images skipped before decoding (label conflicts)."""
    jobs, skipped = [], []
    for split in SPLITS:
        for item in listed[split]:
            if item.problem:
                skipped.append({"name": item.key, "split": split, "reason": item.problem})
            else:
                jobs.append(Job(split, item, resize_shorter, quality, want_stats=split == "train"))
    return jobs, skipped


def build_manifest(listing: Listing, listed: dict[str, list[Item]], packing: Packing, options: dict) -> dict:
    """info.json for the packed shards; skips in list order, and packed + skipped = listed per split."""
    order = {split: {item.key: i for i, item in enumerate(listed[split])} for split in SPLITS}
    skipped = sorted(packing.skipped, key=lambda s: (SPLITS.index(s["split"]), order[s["split"]][s["name"]]))
    info = {
        "format_version": MANIFEST_VERSION,
        "dataset": listing.dataset,
        "synthetic": listing.synthetic,
        "classes": list(listing.classes),
        "label_field": listing.label_field,
        "created_by": "toolkit.make_shards",
        "source": str(listing.root),
        "splits": {
            split: {
                "num_samples": sum(packing.counts[split]),
                "class_counts": dict(zip(listing.classes, packing.counts[split])),
                "shards": packing.writers[split].shards,
            }
            for split in SPLITS
        },
        "normalization": normalization(packing.sums, packing.squares, packing.pixels, sum(packing.counts["train"])),
        "skipped": skipped,
        "unlisted": {"count": len(listing.unlisted), "names": listing.unlisted},
        "options": options,
    }
    for split in SPLITS:  # the invariant the whole manifest rests on
        packed = info["splits"][split]["num_samples"]
        assert packed + sum(s["split"] == split for s in skipped) == len(listed[split]), split
    return info


def pack_dataset(
    source: Path,
    out: Path,
    *,
    layout: str = "auto",
    labels: Optional[str] = None,
    val_fraction: float = DEFAULTS["val_fraction"],
    test_fraction: Optional[float] = None,
    seed: int = DEFAULTS["seed"],
    split_mode: str = DEFAULTS["split_mode"],
    resize_shorter: int = DEFAULTS["resize_shorter"],
    quality: int = DEFAULTS["quality"],
    shard_size: int = DEFAULTS["shard_size"],
    shard_bytes: int = DEFAULTS["shard_bytes"],
    workers: Optional[int] = None,
    show_progress: bool = True,
) -> dict:
    """Pack a dataset folder (see ``sources``) into ``out`` and return the info.json dict written there.

    ``test_fraction`` (default 0.2) is for a source without a test split; giving it for one that has
    one (Oxford's official list, a folder's test/) is an error rather than silently ignored.
    """
    workers = workers or os.cpu_count() or 1
    asked_test_fraction = test_fraction is not None
    test_fraction = DEFAULTS["test_fraction"] if test_fraction is None else test_fraction
    check_options(
        {
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "split_mode": split_mode,
            "resize_shorter": resize_shorter,
            "quality": quality,
            "shard_size": shard_size,
            "shard_bytes": shard_bytes,
            "workers": workers,
        }
    )
    listing = read_listing(Path(source), layout=layout, labels=labels)
    if asked_test_fraction and "test" in listing.pools:
        where = "its official test list" if "trainval" in listing.pools else "a test/ folder"
        raise UsageError(
            f"--test-fraction applies to an image folder without a test/ folder; {listing.root} has "
            f"{where}, which is the test split: leave --test-fraction out"
        )
    options = {
        "labels": listing.label_field,
        "val_fraction": val_fraction,
        "test_fraction": None if "test" in listing.pools else test_fraction,
        "seed": seed,
        "split_mode": split_mode,
        "resize_shorter": resize_shorter,
        "quality": quality,
        "shard_size": shard_size,
        "shard_bytes": shard_bytes,
        "workers": workers,
    }
    out = Path(out).expanduser().resolve()
    check_out_folder(out, listing)
    if is_main_process():
        for warning in listing.warnings:
            print(f"warning: {warning}", file=sys.stderr)

    listed = assign_splits(
        listing, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, split_mode=split_mode
    )
    jobs, skipped = plan_jobs(listed, resize_shorter, quality)
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    staging = out / f"{TMP_PREFIX}make_shards-{os.getpid()}"
    staging.mkdir()
    try:
        packing = Packing(staging, listing.classes, shard_size, shard_bytes, skipped)
        with contextlib.closing(map_ordered(process_image, jobs, workers)) as ordered:  # closing stops the pool
            for job, result in progress(
                zip(jobs, ordered),
                total=len(jobs),
                desc="packing",
                unit="img",
                enabled=show_progress and is_main_process(),
            ):
                packing.add(job, result)
        packing.finish()
        info = build_manifest(listing, listed, packing, options)
        install(staging, out, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def check_options(options: dict) -> None:
    if not 0 < options["val_fraction"] < 1:
        raise UsageError(
            f"--val-fraction must be in (0, 1), got {options['val_fraction']}: training keeps the best "
            "epoch by its val ROC-AUC, so val needs images of both classes"
        )
    if not 0 < options["test_fraction"] < 1:
        raise UsageError(
            f"--test-fraction must be in (0, 1), got {options['test_fraction']}: it is the share of an "
            "image folder without a test/ folder that is held out for the final test"
        )
    if options["split_mode"] not in ("stratified", "seed"):
        raise UsageError(f"--split-mode must be 'stratified' or 'seed', got {options['split_mode']!r}")
    if options["resize_shorter"] < 0:
        raise UsageError(f"--resize-shorter must be >= 0 (0 keeps the original size), got {options['resize_shorter']}")
    if not 1 <= options["quality"] <= 100:
        raise UsageError(f"--quality must be in 1..100, got {options['quality']}")
    for name in ("shard_size", "shard_bytes", "workers"):
        if options[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {options[name]}")
