"""Build a W&B Report from local training runs: ``python -m toolkit.wandb_report --help``."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `toolkit` from the repository, not this folder
    here = Path(__file__).resolve().parent  # (its modules would shadow the standard library's)
    sys.path[:] = [str(here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != here]

from toolkit.cli import run_cli
from toolkit.reporting.wandb_report import main

if __name__ == "__main__":
    run_cli(main)
