"""The training command: ``accelerate launch toolkit/train.py --config FILE [key=value ...]``.

The loop itself lives in ``toolkit.training.loop``; this file is the documented front door and
also works as a plain script (accelerate launch runs it by path).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `toolkit` from the repository, not this folder
    here = Path(__file__).resolve().parent  # (its modules would shadow the standard library's)
    sys.path[:] = [str(here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != here]

from toolkit.cli import run_cli
from toolkit.training.loop import main

if __name__ == "__main__":
    run_cli(main)
