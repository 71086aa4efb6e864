"""Pack a labelled image dataset into webdataset tar shards that are byte-for-byte reproducible and verified.

    python -m toolkit.make_shards --source data/oxford-iiit-pet --out shards/                 # cat vs dog
    python -m toolkit.make_shards --source data/oxford-iiit-pet --labels breed --out shards/breeds
    python -m toolkit.make_shards --source my_images/ --out shards/mine      # my_images/<class name>/*.jpg
    python -m toolkit.make_shards --synthetic 512 --out shards/       # stand-in data, marked synthetic
    python -m toolkit.make_shards --verify shards/

The layouts are read by ``toolkit.data.sources``, the packing lives in ``toolkit.data.shards``, the
checks in ``toolkit.data.verify``, the manifest's schema in ``toolkit.formats``; this module is the
command line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from toolkit.cli import ArgumentParser, run_cli
from toolkit.data import stores
from toolkit.data.download import download_dataset
from toolkit.data.oxford import make_synthetic_dataset
from toolkit.data.publish import pack_to_store
from toolkit.data.shards import DEFAULT_SYNTHETIC_ROOT, DEFAULTS, pack_dataset
from toolkit.data.sources import LAYOUTS, OXFORD_LABELS
from toolkit.data.verify import read_shard_manifest, verify_shards
from toolkit.errors import DataError, UsageError
from toolkit.formats import SPLITS, class_names, label_field
from toolkit.redaction import redact_text


def parse_bytes(text: str) -> int:
    """``67108864``, ``64M``, ``1.5G``: a byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 67108864, 64M or 1G)")
    return int(float(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " "))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m toolkit.make_shards",
        description="Pack Oxford-IIIT Pet (official folder layout; cat/dog or 37 breeds) or any class-per-folder "
        "image dataset into reproducible webdataset shards plus an info.json manifest, or verify "
        "shards made before.",
        epilog="Every decodable image is kept (as RGB; transparency composited on white); undecodable, "
        "missing or mislabelled ones are skipped and listed in info.json with the reason. "
        "Same input and options give byte-identical shards, whatever --workers. "
        "examples: python -m toolkit.make_shards --source data/oxford-iiit-pet --out shards/pets; "
        "... --source data/oxford-iiit-pet --labels breed --out shards/pets-breeds; "
        "... --source my_images/ --out shards/mine (my_images/<class>/*.jpg, or my_images/train/<class>/... "
        "with optional val/ and test/)",
    )
    what = parser.add_argument_group("what to do (pick one)")
    what.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="Oxford-IIIT Pet folder with images/ and annotations/ (or torchvision's root above it), "
        "or an image folder: DIR/<class name>/<images> or DIR/train|val|test/<class name>/<images>; "
        f"with --synthetic, where the synthetic set is written (default {DEFAULT_SYNTHETIC_ROOT})",
    )
    what.add_argument(
        "--download",
        type=Path,
        metavar="DIR",
        help="download with torchvision into DIR/oxford-iiit-pet (about 800 MB; fails after a "
        "5 s check when offline), then pack it",
    )
    what.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="generate a synthetic stand-in of N images (96 px, seed 0, with odd files) in the "
        "official layout, then pack it; everything made from it is marked synthetic",
    )
    what.add_argument(
        "--verify",
        metavar="DIR",
        help="re-read the shards in DIR (a folder or an object store prefix) against its info.json; exit 1 on any problem",
    )

    task = parser.add_argument_group("what the labels are")
    task.add_argument(
        "--labels",
        choices=OXFORD_LABELS,
        default=None,
        help="Oxford-IIIT Pet only: species (cat/dog, the default) or breed (37 classes). The choice is "
        "made here, so a shard folder holds one task and its manifest names the classes",
    )
    task.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="auto (default): Oxford when --source has annotations/, else an image folder whose "
        "class folders name the classes (sorted)",
    )

    pack = parser.add_argument_group("packing")
    pack.add_argument(
        "--out",
        default="shards",
        metavar="DIR",
        help="output folder (default: shards/), or an object store prefix (s3://BUCKET/PREFIX, gs://..., "
        "hf://...: each shard is uploaded, info.json last); the previous run's shards there are replaced",
    )
    pack.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULTS["val_fraction"],
        help="share of trainval held out as val, between 0 and 1 exclusive: training keeps the best epoch "
        "by val ROC-AUC (default: %(default)s); test is the official list",
    )
    pack.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="image folders without a test/ folder: share of the images held out as test, between 0 "
        f"and 1 exclusive (default: {DEFAULTS['test_fraction']}); Oxford uses its official test list, "
        "so it is an error there",
    )
    pack.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="split seed (default: %(default)s)")
    pack.add_argument(
        "--split-mode",
        choices=("stratified", "seed"),
        default=DEFAULTS["split_mode"],
        help="stratified: keep each class's share in train, val (and a held-out test) (default); seed: "
        "the seed experiment's plain random split (2,944/736 on the full dataset)",
    )
    pack.add_argument(
        "--resize-shorter",
        type=int,
        default=DEFAULTS["resize_shorter"],
        metavar="PX",
        help="shrink images so the shorter side is PX (never upscale; 0 keeps the original size). "
        "Default %(default)s: the training pipeline resizes to 255 then crops 224, so 288 keeps "
        "every pixel it uses with headroom, and decoding is ~1.7x cheaper than at 500x375",
    )
    pack.add_argument(
        "--quality",
        type=int,
        default=DEFAULTS["quality"],
        help="JPEG quality for re-encoded images (default: %(default)s); clean RGB JPEGs that need "
        "no resize are copied unchanged",
    )
    pack.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULTS["shard_size"],
        metavar="N",
        help="max samples per shard (default: %(default)s, so the full train split makes 46 "
        "shards: enough for 8 GPUs x 4 loader workers)",
    )
    pack.add_argument(
        "--shard-bytes",
        type=parse_bytes,
        default=DEFAULTS["shard_bytes"],
        metavar="SIZE",
        help="max bytes per shard, e.g. 64M (default: 64M)",
    )
    pack.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes that decode and encode images (default: all %(default)s cores)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    modes = [
        flag
        for flag, value in (("--download", args.download), ("--synthetic", args.synthetic), ("--verify", args.verify))
        if value is not None
    ]
    if (
        len(modes) > 1
        or (args.verify is not None and args.source is not None)
        or (args.download is not None and args.source is not None)
    ):
        raise UsageError(
            "give one of --source DIR, --download DIR, --synthetic N or --verify DIR "
            "(--source may only accompany --synthetic, as its target folder)"
        )
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")

    if args.verify is not None:
        return run_verify(args.verify, args.workers)
    pack = pack_to_store if check_out_location(args.out) else pack_dataset  # refused before any work
    if args.download is not None:
        source = download_dataset(args.download)
    elif args.synthetic is not None:
        source = make_synthetic_dataset(args.source or DEFAULT_SYNTHETIC_ROOT, args.synthetic)
        print(f"wrote a synthetic dataset of {args.synthetic} images to {source}")
    elif args.source is not None:
        source = args.source
    else:
        raise UsageError("nothing to do: give --source DIR, --download DIR, --synthetic N or --verify DIR (see --help)")

    info = pack(
        source,
        args.out,
        layout=args.layout,
        labels=args.labels,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        split_mode=args.split_mode,
        resize_shorter=args.resize_shorter,
        quality=args.quality,
        shard_size=args.shard_size,
        shard_bytes=args.shard_bytes,
        workers=args.workers,
    )
    for item in info["skipped"]:
        print(f"skipped {item['split']}/{item['name']}: {item['reason']}")
    if info["unlisted"]["count"]:
        names = info["unlisted"]["names"]
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        print(f"unlisted (on disk, in no split list, not packed): {', '.join(names[:10])}{more}")
    print(packing_summary(info, args.out))
    return 0


def check_out_location(out: str) -> bool:
    """True for an object store prefix; a local folder is False; other locations are refused in one line."""
    scheme = stores.scheme_of(out)
    if scheme in ("local", *stores.OBJECT_STORES):
        return scheme != "local"
    raise UsageError(f"--out {redact_text(out)}: give a local folder or an object store prefix (s3://, gs://, hf://)")


def run_verify(folder: str, workers: int) -> int:
    if stores.scheme_of(folder) not in ("local", *stores.OBJECT_STORES):
        raise UsageError(f"--verify {redact_text(folder)}: give a local folder or an object store prefix")
    problems = verify_shards(folder, workers=workers, show_progress=True)
    info = read_shard_manifest(folder)
    if problems:
        for problem in problems[:50]:
            print(problem, file=sys.stderr)
        if len(problems) > 50:
            print(f"... and {len(problems) - 50} more", file=sys.stderr)
        raise DataError(f"{len(problems)} problem(s) in {folder}; rebuild it with python -m toolkit.make_shards")
    splits = info["splits"]
    shards = sum(len(s["shards"]) for s in splits.values())
    tag = " [SYNTHETIC data]" if info["synthetic"] else ""
    print(
        f"OK {folder}{tag} ({len(class_names(info))} classes by {label_field(info)}): "
        + ", ".join(f"{split} {splits[split]['num_samples']}" for split in SPLITS)
        + f" samples in {shards} shards; sha256, counts, labels and every JPEG checked"
    )
    return 0


def packing_summary(info: dict, out) -> str:
    skipped = {split: sum(s["split"] == split for s in info["skipped"]) for split in SPLITS}
    splits = info["splits"]
    per_split = ", ".join(
        f"{split} {splits[split]['num_samples']} packed + {skipped[split]} skipped" for split in SPLITS
    )
    shards = [shard for split in splits.values() for shard in split["shards"]]
    size_mb = sum(shard["bytes"] for shard in shards) / 1e6
    tag = " [SYNTHETIC data]" if info["synthetic"] else ""
    task = f" ({len(class_names(info))} classes by {label_field(info)})"
    return (
        f"{info['dataset']}{tag}{task}: {per_split}; {len(shards)} shards, {size_mb:.1f} MB in {out}; "
        f"{info['unlisted']['count']} unlisted file(s) ignored"
    )


if __name__ == "__main__":
    run_cli(main)
