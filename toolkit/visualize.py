"""Regenerate a finished run's plots, then its HTML report.

    python -m toolkit.visualize --run runs/NAME                      # everything, then report.html
    python -m toolkit.visualize --run runs/NAME --what roc,pr --split val --no-report

ROC, precision-recall, confusion matrix and training curves need only the run folder's files; the
prediction grid, Grad-CAM, feature maps and filters also need the model and the shards' images
(``toolkit.reporting.run_plots``). A plot whose inputs are missing is skipped with one warning line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from toolkit.cli import ArgumentParser, run_cli
from toolkit.errors import UsageError
from toolkit.formats import RunDir
from toolkit.models.sources import load_model
from toolkit.reporting.report import build_report
from toolkit.reporting.run_plots import ALL_PLOTS, make_plots


def parse_what(text: str) -> set[str]:
    names = {part.strip() for part in text.split(",") if part.strip()}
    if not names or "all" in names:
        return set(ALL_PLOTS)
    unknown = names - set(ALL_PLOTS)
    if unknown:
        raise UsageError(
            f"--what: unknown plot(s) {', '.join(sorted(unknown))}; choose from {','.join(ALL_PLOTS)} or all"
        )
    return names


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(
        prog="toolkit.visualize",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + __doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--run", required=True, type=Path, help="run folder written by training (runs/NAME)")
    parser.add_argument(
        "--what",
        default="all",
        help=f"comma-separated plots: {','.join(ALL_PLOTS)} or all (default); "
        "confusion also makes per_class_accuracy_SPLIT.png",
    )
    parser.add_argument("--split", default="test", help="evaluated split to plot (default: test)")
    parser.add_argument(
        "--num-images", type=int, default=8, help="images in the prediction grid and Grad-CAM (default 8)"
    )
    parser.add_argument(
        "--shards", default=None, help="shards folder (default: data.shards from the run's config.yaml)"
    )
    parser.add_argument("--no-report", action="store_true", help="do not rebuild RUN/report.html")
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="the model for the grid, Grad-CAM, feature maps and filters instead of RUN's: a model file, "
        "an exported or timm folder (DIR or local-dir:DIR) or hf-hub:OWNER/NAME",
    )
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        raise UsageError(f"run folder {str(args.run)!r} not found; pass a folder written by a training run (runs/NAME)")
    if args.num_images < 0:
        raise UsageError(f"--num-images {args.num_images} must be >= 0")
    model_and_meta = load_model(args.model) if args.model else None
    run = RunDir(args.run)
    made = make_plots(
        run,
        what=parse_what(args.what),
        split=args.split,
        num_images=args.num_images,
        shards=args.shards,
        model_and_meta=model_and_meta,
    )
    for path in made:
        print(path)
    if not args.no_report:
        print(build_report(run))
    return 0


if __name__ == "__main__":
    run_cli(main)
