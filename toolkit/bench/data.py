"""Input pipeline img/s: the shard loader against one original JPEG file per image.

Both sides decode and apply the same train augmentation (random resized crop, flip, colour
jitter, normalize) with the same worker count and batch size, ending in a normalized float
batch. The baseline is the usual ImageFolder-style Dataset over the ORIGINAL files (PIL open,
convert RGB, torchvision's RandomResizedCrop, RandomHorizontalFlip, ColorJitter, ToImage,
ToDtype, Normalize in the DataLoader workers). The shard loader reads make_shards' pre-resized
JPEGs from a few sequential tars, lets PIL's draft mode decode at 1/2, 1/4 or 1/8 scale when the
stored image is at least twice the target, ships uint8 crops, and finishes each batch with
``batch_to_device`` (colour jitter with ``--jitter-on device``, normalization) in the main
process, on this CPU, where a GPU run would do it on the GPU: that cost is counted here.
Each pair is measured in A-B-B-A order ``--repeats`` times and the best run of each side is
kept, because other processes sharing the cores only ever make a run slower. Per core is
images per CPU second: the user + system time of the main process and its loader workers over the
timed batches (from /proc), which stays fair when workers wait on busy cores. A decode-only
section (one core, no augmentation) shows where the difference comes from.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from toolkit import data
from toolkit.config import DataConfig, resolve_normalization
from toolkit.data.device_augment import batch_to_device
from toolkit.data.oxford import read_source
from toolkit.data.shards import pack_dataset
from toolkit.errors import UsageError

# ../shared/data/oxford-pets-mini beside the repository root (942 real images)
DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared/data/oxford-pets-mini"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards",
        default=None,
        help="packed shards of --source (default: pack it now into a temporary folder with make_shards' defaults)",
    )
    parser.add_argument(
        "--beside",
        default=None,
        metavar="DIR",
        help="a local copy of --shards (e.g. --shards s3://bucket/pets --beside shards/pets): both shard loaders "
        "are timed in the same run, alternated, and the report gives remote / local",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="the Oxford-layout folder of original JPEGs (default: %(default)s)",
    )
    parser.add_argument("--image-size", type=int, default=224, help="training crop size (default: %(default)s)")
    parser.add_argument(
        "--resize-size",
        type=int,
        default=None,
        help="decode hint / eval resize (default: image size x 255/224, i.e. 255 for 224)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument(
        "--workers", default="0,1,2", help="comma-separated loader worker counts (default: %(default)s)"
    )
    parser.add_argument("--num-batches", type=int, default=20, help="timed batches per run (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each side per worker count (default: %(default)s)"
    )
    parser.add_argument(
        "--jitter-on",
        choices=("device", "workers"),
        default="device",
        help="the shard loader's colour jitter: batched on the device (here the CPU main process) "
        "or torchvision's ColorJitter in the workers, as the baseline does (default: %(default)s)",
    )
    parser.add_argument(
        "--no-color-jitter",
        action="store_true",
        help="leave ColorJitter out of the augmentation on both sides; its hue shift alone costs "
        "~2 ms per 224 px image on one core of this CPU, more than decoding a pre-resized JPEG",
    )


class OriginalFiles(Dataset):
    """The file-per-image baseline: what torchvision's ImageFolder does with each item."""

    def __init__(self, paths: list[Path], labels: list[int], transform: Callable):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def baseline_transform(cfg: DataConfig):
    """The usual torchvision train transform, all of it in the loader workers."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), antialias=True)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.color_jitter:
        steps.append(v2.ColorJitter(*cfg.color_jitter))
    return v2.Compose(steps + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)])


def _endless_shards(loader: data.TrainLoader, cfg: DataConfig) -> Iterator[int]:
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        for index, batch in enumerate(loader):
            batch_to_device(batch, cfg, torch.device("cpu"), seed=index)
            yield len(batch["key"])


def _endless_files(loader: DataLoader) -> Iterator[int]:
    while True:
        for images, _ in loader:
            yield len(images)


def _cpu_seconds() -> float:
    """CPU time of this process and its children (the loader workers) so far: user + system, all threads.

    Workers are alive children, so their time is read from /proc (Linux); elsewhere only this process counts.
    """
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == os.getpid():  # fields after the name: state, ppid, ..., utime (12), stime (13)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _images_per_s(batches: Iterator[int], warmup: int, num_batches: int) -> tuple[float, float]:
    """Skip the batches that include worker start-up, then time ``num_batches``: (img/s, img per CPU second)."""
    for _ in range(warmup):
        next(batches)
    start, cpu_start, images = time.perf_counter(), _cpu_seconds(), 0
    for _ in range(num_batches):
        images += next(batches)
    return images / (time.perf_counter() - start), images / max(1e-9, _cpu_seconds() - cpu_start)


def _decode_rate(blobs: list[bytes], hint: int, seconds: float = 2.0) -> float:
    """Images/s of ``decode_jpeg`` alone on this core, cycling over ``blobs`` for about ``seconds``."""
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for blob in blobs:
            data.decode_jpeg(blob, hint)
        done += len(blobs)
    return done / (time.perf_counter() - start)


def _opens(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.convert("RGB")
        return True
    except (OSError, ValueError):
        return False


def _parse_workers(text: str) -> list[int]:
    try:
        counts = sorted({int(w) for w in text.split(",") if w.strip()})
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise UsageError(f"--workers {text!r} must be comma-separated counts >= 0, e.g. 0,1,2")
    return counts


def run(args: argparse.Namespace) -> dict:
    workers = _parse_workers(args.workers)
    if min(args.image_size, args.batch_size, args.num_batches, args.repeats) < 1:
        raise UsageError("--image-size, --batch-size, --num-batches and --repeats must be >= 1")
    if not (Path(args.source) / "annotations").is_dir():
        raise UsageError(
            f"--source {args.source} is not an Oxford-layout folder; point it at one "
            "(e.g. ../shared/data/oxford-pets-mini)"
        )
    source = read_source(Path(args.source))
    entries = [e for e in source.trainval if _opens((source.images / e.filename))]
    unreadable = len(source.trainval) - len(entries)  # an ImageFolder-style loader would crash on these
    paths = [source.images / e.filename for e in entries]
    labels = [e.label for e in entries]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in DataLoader workers; with workers=0 the main process does the work
    try:
        return _measure(args, workers, paths, labels) | {"baseline_unreadable_skipped": unreadable}
    finally:
        torch.set_num_threads(threads)


def _compare_loaders(
    args: argparse.Namespace,
    base: DataConfig,
    info: dict,
    files: Dataset,
    count: int,
) -> dict:
    """Shards vs file-per-image with ``count`` workers, alternated A B B A so drifts in load hit both alike."""
    cfg = dataclasses.replace(base, num_workers=count)
    warmup = max(1, count)

    def shard_run() -> tuple[float, float]:
        loader = data.make_train_loader(cfg, info, batch_size=args.batch_size, rank=0, world_size=1, seed=0)
        return _images_per_s(_endless_shards(loader, cfg), warmup, args.num_batches)

    def file_run() -> tuple[float, float]:
        extra = {"persistent_workers": True, "prefetch_factor": cfg.prefetch_factor} if count else {}
        loader = DataLoader(files, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=count, **extra)
        return _images_per_s(_endless_files(loader), warmup, args.num_batches)

    shard_rates, file_rates = [], []
    for _ in range(args.repeats):
        shard_rates.append(shard_run())
        file_rates += [file_run(), file_run()]
        shard_rates.append(shard_run())
    # ratios of the figures as reported (rounded first), so the report checks out by hand
    best_shards, best_files = (round(max(r[0] for r in rates), 1) for rates in (shard_rates, file_rates))
    per_cpu_shards, per_cpu_files = (round(max(r[1] for r in rates), 1) for rates in (shard_rates, file_rates))
    return {
        "workers": count,
        "shards_img_s": best_shards,
        "files_img_s": best_files,
        "ratio": round(best_shards / best_files, 2),
        "shards_img_per_cpu_s": per_cpu_shards,
        "files_img_per_cpu_s": per_cpu_files,
        "ratio_per_core": round(per_cpu_shards / per_cpu_files, 2),
        "all_shards": [[round(a, 1), round(b, 1)] for a, b in shard_rates],
        "all_files": [[round(a, 1), round(b, 1)] for a, b in file_rates],
    }


def _compare_stores(args: argparse.Namespace, base: DataConfig, info: dict, count: int) -> dict:
    """``--shards`` against the same shards on local disk (``--beside``), alternated A B B A: what the store costs."""
    remote = dataclasses.replace(base, num_workers=count)
    local = dataclasses.replace(remote, shards=args.beside)
    local_info = data.load_info(args.beside)
    warmup = max(1, count)

    def run(cfg: DataConfig, shard_info: dict) -> float:
        loader = data.make_train_loader(cfg, shard_info, batch_size=args.batch_size, rank=0, world_size=1, seed=0)
        return _images_per_s(_endless_shards(loader, cfg), warmup, args.num_batches)[0]

    remote_rates, local_rates = [], []
    for _ in range(args.repeats):
        remote_rates.append(run(remote, info))
        local_rates += [run(local, local_info), run(local, local_info)]
        remote_rates.append(run(remote, info))
    best_remote, best_local = round(max(remote_rates), 1), round(max(local_rates), 1)
    return {
        "workers": count,
        "remote_img_s": best_remote,
        "local_img_s": best_local,
        "remote_over_local": round(best_remote / best_local, 2),
        "all_remote": [round(r, 1) for r in remote_rates],
        "all_local": [round(r, 1) for r in local_rates],
    }


def _decode_rates(paths: list[Path], shards: str, info: dict, resize: int) -> dict:
    """Decoding alone on one core: originals vs stored shard JPEGs, full size vs libjpeg's draft mode."""
    originals = [p.read_bytes() for p in paths[:64]]
    stored = [s["jpg"] for s in itertools.islice(data.raw_samples(shards, "train", info), 64) if "jpg" in s]
    return {
        "originals_full_img_s": round(_decode_rate(originals, 0), 1),
        "originals_draft_img_s": round(_decode_rate(originals, resize), 1),
        "shards_full_img_s": round(_decode_rate(stored, 0), 1),
        "shards_draft_img_s": round(_decode_rate(stored, resize), 1),
        "draft_hint_px": resize,
        "originals_mean_kb": round(sum(map(len, originals)) / len(originals) / 1024, 1),
        "shards_mean_kb": round(sum(map(len, stored)) / len(stored) / 1024, 1),
        "shards_first_stored_size": list(data.decode_jpeg(stored[0]).size),
    }


def _measure(args: argparse.Namespace, workers: list[int], paths: list[Path], labels: list[int]) -> dict:
    resize = args.resize_size or round(args.image_size * 255 / 224)
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        shards = args.shards
        pack_seconds = None
        if shards is None:
            shards, start = str(Path(tmp) / "shards"), time.perf_counter()
            pack_dataset(args.source, Path(shards), show_progress=False)
            pack_seconds = round(time.perf_counter() - start, 1)
        info = data.load_info(shards)
        data.check_shards_exist(shards, info, ["train"])
        base = DataConfig(
            shards=shards,
            image_size=args.image_size,
            resize_size=resize,
            pin_memory=False,
            persistent_workers=True,
            jitter_on=args.jitter_on,
            color_jitter=None if args.no_color_jitter else DataConfig().color_jitter,
        )
        base = resolve_normalization(base, info)
        files = OriginalFiles(paths, labels, baseline_transform(base))

        runs = [_compare_loaders(args, base, info, files, count) for count in workers]
        beside = [_compare_stores(args, base, info, count) for count in workers] if args.beside else None

        decode = _decode_rates(paths, shards, info, resize)  # where the difference comes from

    return {
        "benchmark": "data",
        "source": str(Path(args.source).resolve()),
        "shards": args.shards or f"packed into a temporary folder with make_shards defaults ({pack_seconds} s)",
        "train_samples": data.split_size(info, "train"),
        "baseline_files": len(paths),
        "image_size": args.image_size,
        "color_jitter": None if args.no_color_jitter else DataConfig().color_jitter,
        "jitter_on": args.jitter_on,
        "resize_size": resize,
        "batch_size": args.batch_size,
        "num_batches": args.num_batches,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "torch_threads_per_process": 1,
        "load_average_1min_before": load_before,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "runs": runs,
        **({"beside": args.beside, "store_runs": beside} if beside else {}),
        "decode_one_core": decode,
    }
