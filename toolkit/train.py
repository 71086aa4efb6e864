"""The training command: ``accelerate launch toolkit/train.py --config FILE [key=value ...]``.

    accelerate launch --config_file accelerate_config.yaml --num_processes 2 toolkit/train.py --config configs/smoke.yaml [key=value ...]
    python -m toolkit.train --config configs/smoke.yaml train.epochs=2      # one process: GPU if present, else CPU

Reads the config, runs ``toolkit.training.loop.train`` and turns its failures into one line and an
exit code. Also works as a plain script: ``accelerate launch`` runs it by path.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: import `toolkit` from the repository, not this folder
    here = Path(__file__).resolve().parent  # (its modules would shadow the standard library's)
    sys.path[:] = [str(here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != here]

from safetensors import SafetensorError

from toolkit.cli import ArgumentParser, add_progress_argument, run_cli, set_progress
from toolkit.config import load_config, split_config_args, to_yaml, validate_config
from toolkit.errors import DataError, on_every_rank
from toolkit.training.loop import train
from toolkit.training.state import TrainingError

DISK_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# How the writers that are not Python's say it: torch.save (RuntimeError), safetensors (SafetensorError).
DISK_FULL_WORDS = {code: os.strerror(code) for code in DISK_FULL_ERRORS}
NEARLY_FULL_BYTES = 256 << 20  # less free than this after a failed write: the disk is what failed


def disk_full(err: BaseException, folder: Path) -> Optional[str]:
    """What a full (or read-only) disk error says, from any writer in the chain of causes; None otherwise.

    Python's writers give an errno and safetensors its text; torch.save only says "iostream error",
    so a failed write while ``folder``'s disk is (nearly) full counts as full too.
    """
    seen, writer_failed = set(), False
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRORS:
            return f"{err.strerror}" + (f" writing {err.filename}" if err.filename else "")
        for code, words in DISK_FULL_WORDS.items():
            if words in str(err) or f"os error {code})" in str(err):
                return words
        writer_failed = writer_failed or isinstance(err, (RuntimeError, SafetensorError, OSError))
        err = err.__cause__ or err.__context__
    free = free_bytes(folder)
    if writer_failed and free is not None and free < NEARLY_FULL_BYTES:
        return f"{DISK_FULL_WORDS[errno.ENOSPC]} ({free >> 10} KiB left where {folder} is)"
    return None


def free_bytes(folder: Path) -> Optional[int]:
    for path in (folder, *folder.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return None


def parse_args(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = ArgumentParser(
        prog="python -m toolkit.train",
        description="Train a ResNet on webdataset shards with Hugging Face Accelerate. "
        "Override any config key with section.key=value after the flags.",
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
    except Exception as err:  # disk full mid-run: files are written atomically, so nothing finished is damaged
        full = disk_full(err, Path(cfg.output.dir) / str(cfg.output.run_name))
        if full is None:
            raise
        raise DataError(
            f"{full}; the last good checkpoint is kept. Free some space, then run the same command with "
            f"train.resume=auto output.run_name={cfg.output.run_name}"
        ) from None
    if result.get("stopped") and result.get("signal"):  # checkpointed, not finished: 128 + signal, as a shell does
        return 128 + int(result["signal"])
    return 0


if __name__ == "__main__":
    run_cli(main)
