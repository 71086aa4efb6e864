"""The training command: ``accelerate launch toolkit/train.py --config FILE [key=value ...]``.

    accelerate launch --config_file accelerate_config.yaml --num_processes 2 toolkit/train.py --config configs/smoke.yaml [key=value ...]
    python -m toolkit.train --config configs/smoke.yaml train.epochs=2      # one process: GPU if present, else CPU

Reads the config, runs ``toolkit.training.loop.train`` and turns its failures into one line and an
exit code. Also works as a plain script: ``accelerate launch`` runs it by path.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from toolkit.cli import ArgumentParser, add_progress_argument, run_cli, set_progress
from toolkit.config import load_config, split_config_args, to_yaml, validate_config
from toolkit.errors import DataError, on_every_rank
from toolkit.training.loop import train
from toolkit.training.state import TrainingError


def parse_args(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = ArgumentParser(
        prog="python -m toolkit.train",
        description="Train a ResNet on webdataset shards with Hugging Face Accelerate. "
        "Override any config key with section.key=value after the flags (or --section.key=value, the form "
        "W&B's sweep agent passes: configs/sweep.yaml).",
        epilog="example: accelerate launch toolkit/train.py --config configs/smoke.yaml train.epochs=3 optimizer.lr=3e-4",
    )
    parser.add_argument("--config", help="YAML config file, e.g. configs/smoke.yaml (required to train)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config and exit (without --config: the defaults and the overrides)",
    )
    add_progress_argument(parser)
    flags, overrides = split_config_args(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(flags)
    if args.config is None and not args.print_config:
        parser.error("the following arguments are required: --config (--print-config alone shows the defaults)")
    return args, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = parse_args(argv)
    set_progress(args.progress)
    cfg = validate_config(load_config(args.config, overrides))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    try:
        result = train(cfg)
    except TrainingError as err:
        raise (
            on_every_rank(DataError(str(err))) if getattr(err, "on_every_rank", False) else DataError(str(err))
        ) from None
    if result.get("stopped") and result.get("signal"):  # checkpointed, not finished: 128 + signal, as a shell does
        return 128 + int(result["signal"])
    return 0


if __name__ == "__main__":
    run_cli(main)
