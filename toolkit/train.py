"""The training command: ``accelerate launch toolkit/train.py --config FILE [key=value ...]``.

The loop itself lives in ``toolkit.training.loop``; this file is the documented front door and
also works as a plain script (accelerate launch runs it by path).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `toolkit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.cli import run_cli
from toolkit.training.loop import main

if __name__ == "__main__":
    run_cli(main)
