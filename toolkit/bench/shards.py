"""Packing throughput: images/s that make_shards packs with 1 and with N worker processes.

Each worker count runs ``--repeats`` times in A-B-B-A order and the best run is reported
(another process on the cores can only slow a run down); every run is in the JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from toolkit.data.shards import DEFAULTS, pack_dataset
from toolkit.data.verify import verify_shards
from toolkit.errors import UsageError
from toolkit.formats import read_manifest

# ../shared/data/oxford-pets-mini beside the repository root (942 real images)
DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared/data/oxford-pets-mini"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="Oxford-layout folder to pack (default: the shared mini data, %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="the parallel run's worker count (default: all %(default)s cores); 1 is always run too",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per worker count, best reported (default: 2)")
    parser.add_argument(
        "--resize-shorter",
        type=int,
        default=DEFAULTS["resize_shorter"],
        help="as make_shards --resize-shorter (default: %(default)s, make_shards' default)",
    )
    parser.add_argument("--quality", type=int, default=DEFAULTS["quality"], help="JPEG quality (default: %(default)s)")


def pack_once(args: argparse.Namespace, out: Path, workers: int) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    info = pack_dataset(
        args.source, out, resize_shorter=args.resize_shorter, quality=args.quality, workers=workers, show_progress=False
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    images = sum(s["num_samples"] for s in info["splits"].values()) + len(info["skipped"])
    shards = [shard for split in info["splits"].values() for shard in split["shards"]]
    result = {
        "workers": workers,
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1),
        "output_mb": round(sum(s["bytes"] for s in shards) / 1e6, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if workers == 1:  # all work in this process: CPU time per image, which other processes barely move
        result["cpu_ms_per_image"] = round(1000 * cpu_seconds / images, 2)
    return result


def run(args: argparse.Namespace) -> dict:
    if not (Path(args.source) / "annotations").is_dir():
        raise UsageError(
            f"--source {args.source} is not an Oxford-layout folder; point it at one "
            f"(e.g. ../shared/data/oxford-pets-mini)"
        )
    if args.workers < 1 or args.repeats < 1:
        raise UsageError("--workers and --repeats must be at least 1")
    counts = sorted({1, args.workers})
    order = [w for r in range(args.repeats) for w in (counts if r % 2 == 0 else counts[::-1])]
    load_before = round(os.getloadavg()[0], 2)  # other processes sharing the cores skew the figures
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        out = Path(tmp) / "shards"
        runs = [pack_once(args, out, workers) for workers in order]
        # Decoding every stored JPEG once (what --verify does) on one core: the floor of what a
        # training loader pays per image per epoch, before any augmentation.
        start = time.perf_counter()
        problems = verify_shards(out, workers=1)
        verify_seconds = time.perf_counter() - start
        samples = sum(s["num_samples"] for s in read_manifest(out)["splits"].values())
    best = {w: max((r for r in runs if r["workers"] == w), key=lambda r: r["images_per_s"]) for w in counts}
    return {
        "benchmark": "shards",
        "source": str(Path(args.source).resolve()),
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": load_before,
        "resize_shorter": args.resize_shorter,
        "quality": args.quality,
        "best": [best[w] for w in counts],
        "speedup": round(best[counts[-1]]["images_per_s"] / best[1]["images_per_s"], 2),
        "verify_1_worker_images_per_s": round(samples / verify_seconds, 1),
        "verify_problems": len(problems),
        "runs": runs,
    }
