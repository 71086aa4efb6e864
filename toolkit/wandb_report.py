"""Build a Weights & Biases Report from local training runs, for review in W&B.

    python -m toolkit.wandb_report --project pets-toolkit --group strong --runs-dir runs/compare/runs
    python -m toolkit.wandb_report --project pets-toolkit --runs 1a2b3c4d 5e6f7g8h --dry-run
    python -m toolkit.wandb_report --publish runs/wandb-report.json

With an API key and a network the report is saved and its URL printed; otherwise its specification
is written as JSON with the commands that upload the runs and publish it later (``--publish FILE``).
How runs are found and which panels are made: ``toolkit.reporting.wandb_spec``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

from toolkit.cli import ArgumentParser, run_cli
from toolkit.errors import UsageError
from toolkit.reporting.wandb_spec import MAX_TITLE_LEN, SPEC_FILE, check_project, make_report, publish


def parse_args(argv: Optional[Sequence[str]]) -> Any:
    parser = ArgumentParser(
        prog="toolkit.wandb_report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + __doc__.split("\n\n")[1],
    )
    parser.add_argument("--project", metavar="P", help="W&B project the runs are (or will be synced) in")
    parser.add_argument("--entity", default=None, metavar="E", help="W&B entity (default: the logged-in user's)")
    parser.add_argument(
        "--group",
        nargs="+",
        default=None,
        metavar="G",
        help="recipe name(s): the runs named <group>-seed<N> (compare_recipes) or named <group>",
    )
    parser.add_argument("--runs", nargs="+", default=None, metavar="ID", help="W&B run ids or run folder names")
    parser.add_argument("--title", default=None, metavar="T", help="report title (default: model, data and groups)")
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), metavar="DIR", help="where the run folders are (default: runs)"
    )
    parser.add_argument("--dry-run", action="store_true", help="write the report spec, do not contact W&B")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help=f"spec file (default: DIR/{SPEC_FILE})")
    parser.add_argument(
        "--publish",
        type=Path,
        default=None,
        metavar="FILE",
        help="save a report spec written earlier to W&B (after `wandb sync` of its runs)",
    )
    args = parser.parse_args(argv)
    if args.publish is not None:
        if args.group or args.runs or args.dry_run:
            raise UsageError("--publish FILE saves a spec as it is; drop --group/--runs/--dry-run")
    else:
        if args.project is None:
            raise UsageError("--project is required (the W&B project of the runs)")
        if bool(args.group) == bool(args.runs):
            raise UsageError("give exactly one of --group G or --runs ID ... (see --help)")
    if args.project is not None:
        check_project(args.project)
    if args.title is not None and not 0 < len(args.title) <= MAX_TITLE_LEN:
        raise UsageError(f"--title must have 1 to {MAX_TITLE_LEN} characters")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.publish is not None:
        publish(args.publish, args.project, args.entity)
        return 0
    make_report(
        args.runs_dir,
        project=args.project,
        group=args.group,
        run_ids=args.runs,
        entity=args.entity,
        title=args.title,
        out=args.out,
        dry_run=args.dry_run,
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
