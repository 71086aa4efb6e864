"""Packing throughput: images/s that make_shards packs with 1 and with N worker processes."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from toolkit.cli import UsageError
from toolkit.make_shards import DEFAULTS, pack_dataset, verify_shards

# ../shared/data/oxford-pets-mini beside the repository root (942 real images)
DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared/data/oxford-pets-mini"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="Oxford-layout folder to pack (default: the shared mini data, %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="the parallel run's worker count (default: all %(default)s cores); 1 is always run too")
    parser.add_argument("--resize-shorter", type=int, default=DEFAULTS["resize_shorter"],
                        help="as make_shards --resize-shorter (default: %(default)s, make_shards' default)")
    parser.add_argument("--quality", type=int, default=DEFAULTS["quality"], help="JPEG quality (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    if not (Path(args.source) / "annotations").is_dir():
        raise UsageError(f"--source {args.source} is not an Oxford-layout folder; point it at one "
                         f"(e.g. ../shared/data/oxford-pets-mini)")
    load_before = round(os.getloadavg()[0], 2)  # other processes sharing the cores skew the figures
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        for workers in sorted({1, max(1, args.workers)}):
            out = Path(tmp) / f"workers-{workers}"
            start = time.perf_counter()
            info = pack_dataset(args.source, out, resize_shorter=args.resize_shorter, quality=args.quality,
                                workers=workers, show_progress=False)
            seconds = time.perf_counter() - start
            images = sum(s["num_samples"] for s in info["splits"].values()) + len(info["skipped"])
            shards = [shard for split in info["splits"].values() for shard in split["shards"]]
            runs.append({"workers": workers, "images": images, "seconds": round(seconds, 3),
                         "images_per_s": round(images / seconds, 1),
                         "output_mb": round(sum(s["bytes"] for s in shards) / 1e6, 2)})
        # Decoding the stored JPEGs once each (what --verify does) on one core: the floor of what a
        # training loader pays per image per epoch before any augmentation.
        start = time.perf_counter()
        problems = verify_shards(out, workers=1)
        seconds = time.perf_counter() - start
        samples = sum(s["num_samples"] for s in info["splits"].values())
    return {
        "benchmark": "shards",
        "source": str(Path(args.source).resolve()),
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": load_before,
        "resize_shorter": args.resize_shorter,
        "quality": args.quality,
        "runs": runs,
        "speedup": round(runs[-1]["images_per_s"] / runs[0]["images_per_s"], 2),
        "verify_1_worker_images_per_s": round(samples / seconds, 1),
        "verify_problems": len(problems),
    }
