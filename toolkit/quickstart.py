"""The main job end to end on a built-in default: data -> shards -> training -> test evaluation -> report.

    python -m toolkit.quickstart                         # synthetic stand-in data (no download needed)
    python -m toolkit.quickstart --source DATA_DIR       # a local Oxford-IIIT Pet copy (official layout)
    python -m toolkit.quickstart --download data/pets    # the official download, where the network allows

It trains a small ResNet at low resolution so it finishes in under a minute on a 2-core CPU (GPU if
present); the real recipe is ``configs/oxford_pets_binary_resnet101.yaml``. Any training config
key can be overridden after the flags (``train.epochs=2``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from toolkit.cli import ArgumentParser, run_cli
from toolkit.config import SHIPPED_CONFIGS, load_config, split_config_args, validate_config
from toolkit.data.download import download_dataset
from toolkit.data.oxford import make_synthetic_dataset
from toolkit.data.shards import pack_dataset
from toolkit.errors import UsageError
from toolkit.training.loop import train

DEFAULT_CONFIG = SHIPPED_CONFIGS / "quickstart.yaml"


def main(argv: Optional[Sequence[str]] = None) -> int:
    import sys

    parser = ArgumentParser(
        prog="toolkit.quickstart",
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m toolkit.quickstart --source data/oxford-iiit-pet train.epochs=5",
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--source", type=Path, help="a local Oxford-IIIT Pet folder in the official layout")
    data.add_argument("--download", type=Path, metavar="DIR", help="download the official dataset into DIR first")
    parser.add_argument(
        "--synthetic-images",
        type=int,
        default=600,
        help="size of the synthetic stand-in used when no real data is given (default 600)",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="training config (default configs/quickstart.yaml)"
    )
    parser.add_argument("--shards", type=Path, default=Path("shards/quickstart"), help="where to write the shards")
    flags, overrides = split_config_args(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(flags)

    cfg = validate_config(load_config(args.config, [f"data.shards={args.shards}", *overrides]))
    if args.source is not None:
        source = args.source
        print(f"[1/3] data: local Oxford-IIIT Pet copy at {source}", flush=True)
    elif args.download is not None:
        print(f"[1/3] data: downloading the official Oxford-IIIT Pet into {args.download}", flush=True)
        source = download_dataset(args.download)
    else:
        source = Path("data/synthetic-pets")
        print(
            f"[1/3] data: no real data given, so a SYNTHETIC stand-in of {args.synthetic_images} images in {source} "
            "(pass --source DIR or --download DIR for the real Oxford-IIIT Pet)",
            flush=True,
        )
        make_synthetic_dataset(source, args.synthetic_images, seed=0)
    if not source.exists():
        raise UsageError(f"data folder {str(source)!r} does not exist")

    print(f"[2/3] shards: packing into {args.shards}", flush=True)
    pack_dataset(source, args.shards, resize_shorter=max(64, cfg.data.resize_size))
    print(
        f"[3/3] training {cfg.model.arch} (blocks {cfg.model.blocks_per_stage}, width {cfg.model.base_width}) "
        f"at {cfg.data.image_size} px for {cfg.train.epochs} epochs",
        flush=True,
    )
    train(cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)
