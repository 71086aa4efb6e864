"""Evaluate a model on one split of the shards, exactly, on any number of processes.

    python -m toolkit.evaluate --model RUN/model.safetensors --shards shards --split test [--out DIR]
    accelerate launch --num_processes 2 -m toolkit.evaluate --model ... --split test
    python -m toolkit.evaluate --model ... --split test --tta hflip   # test-time augmentation

Each process predicts its share of the split; one gather collects them, duplicates are dropped by
sample key and the count is checked against ``info.json`` (``toolkit.evaluation.evaluator``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from toolkit.cli import ArgumentParser, add_tta_argument, run_cli
from toolkit.errors import UsageError
from toolkit.evaluation.evaluator import evaluate_model
from toolkit.evaluation.tta import TTA_MODES


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(
        prog="toolkit.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m toolkit.evaluate --model runs/NAME/model.safetensors "
        "--shards shards/pets --split test",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a model.safetensors from a training run, a run folder, an "
        "exported or other timm model folder (DIR or local-dir:DIR), or hf-hub:OWNER/NAME",
    )
    parser.add_argument("--shards", required=True, help="shards folder (with info.json) or URL pattern")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--tuning-split",
        default="val",
        help="split on which the balanced-accuracy threshold is found, reported beside (default: val; "
        "'none' to skip; two-class models only)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: MODEL_DIR/eval/SPLIT)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="decision threshold on P(class 1) of a two-class model (default 0.5); a model of more "
        "than two classes predicts its most probable class instead",
    )
    parser.add_argument("--num-workers", type=int, default=2)
    add_tta_argument(parser, TTA_MODES)
    args = parser.parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold} must be between 0 and 1")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be >= 1")

    tuning_split = None if args.tuning_split.lower() == "none" else args.tuning_split
    if args.num_workers < 0:
        raise UsageError(f"--num-workers {args.num_workers} must be >= 0")
    evaluate_model(
        str(args.model),
        args.shards,
        args.split,
        tuning_split=tuning_split,
        out=args.out,
        batch_size=args.batch_size,
        threshold=args.threshold,
        num_workers=args.num_workers,
        tta=args.tta,
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
