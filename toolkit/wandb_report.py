"""Build a W&B Report from local training runs: ``python -m toolkit.wandb_report --help``."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `toolkit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.cli import run_cli
from toolkit.reporting.wandb_report import main

if __name__ == "__main__":
    run_cli(main)
