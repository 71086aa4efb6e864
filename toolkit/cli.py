"""What every command-line entry point shares: one-line errors, exit codes, progress bars.

Users see a single line that says what is wrong and how to fix it, never a traceback:
``UsageError`` (bad arguments, bad config, bad input paths) exits with code 2,
``DataError`` (the data itself is broken, e.g. a failed verification) with code 1. Both live in
``toolkit.errors``; this module imports no torch, so config, formats and the model code can use it
without loading torch.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, NoReturn, Optional, Sequence, TypeVar

from toolkit.errors import DataError, UsageError, on_every_rank  # noqa: F401  (re-exported)
from toolkit.redaction import redact_text

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def program_name(prog: str) -> str:
    """How the user ran a command, for ``--help`` and errors: ``pets-train`` when run as the console script,
    else ``python -m toolkit.train`` (``prog`` names the module, with or without ``python -m``, plus any
    subcommand: ``toolkit.bench model``)."""
    module, *rest = prog.removeprefix("python -m ").split()
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    command = invoked if invoked.startswith("pets-") else f"python -m {module}"
    return " ".join([command, *rest])


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one ``error:`` line (exit 2) instead of usage + error,
    and names the program the way it was run (``program_name``)."""

    def __init__(self, *args, prog: Optional[str] = None, **kwargs):
        super().__init__(*args, prog=program_name(prog) if prog else None, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def single_value_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``parser`` whose action takes exactly one value (``--shards VALUE``)."""
    one_value = [a for a in parser._actions if a.nargs is None and isinstance(a, argparse._StoreAction)]
    return {flag for action in one_value for flag in action.option_strings}


def is_main_process() -> bool:
    """True on the process that should print and write (rank 0), also before Accelerate starts."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") in ("0", "")


def fail(message: str, code: int = EXIT_USAGE, *, quiet: bool = False) -> NoReturn:
    if not quiet:
        print(f"error: {redact_text(message)}", file=sys.stderr, flush=True)
    leave_process_group()
    sys.exit(code)


def leave_process_group() -> None:
    """Shut this process's distributed group down before exiting on an error.

    Left to interpreter shutdown, gloo's threads may still be running when the other ranks have
    already gone, and C++ aborts the process ("terminate called without an active exception",
    exit -6) after its one-line error. Looked up without importing torch: most commands never start one.
    """
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # leaving anyway: the error line is already out
        pass


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Run ``main(argv)`` and turn known failures into one-line messages and exit codes."""
    try:
        code = main(argv)
    except (UsageError, DataError) as err:
        quiet = getattr(err, "on_every_rank", False) and not is_main_process()  # printed once, by rank 0
        fail(str(err), EXIT_USAGE if isinstance(err, UsageError) else EXIT_FAILURE, quiet=quiet)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    if code and code > 128:  # stopped by a signal, checkpoint saved: the rest is leaving
        ignore_sigterm()
    sys.exit(code or EXIT_OK)


PROGRESS_MODES = ("auto", "bar", "log", "none")
_progress_mode = "auto"


def set_progress(mode: str) -> None:
    """How long work shows itself in this process (``--progress``): ``auto`` (bars on a terminal, plain lines
    elsewhere), ``bar``, ``log`` or ``none``."""
    global _progress_mode
    if mode not in PROGRESS_MODES:
        raise UsageError(f"--progress {mode!r}: choose one of {', '.join(PROGRESS_MODES)}")
    _progress_mode = mode


def add_progress_argument(parser: argparse.ArgumentParser, default: Optional[str] = "auto") -> None:
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default=default,
        help="auto (default): progress bars on a terminal, else one plain line per logged step (a SLURM .out "
        "file stays small); bar, log or none to choose",
    )


def add_tta_argument(parser: argparse.ArgumentParser, modes: Sequence[str]) -> None:
    """``--tta``, shared by evaluate and predict; ``modes`` is ``toolkit.evaluation.tta.TTA_MODES`` (torch-free here)."""
    parser.add_argument(
        "--tta",
        choices=modes,
        default="none",
        help="test-time augmentation: none (default), hflip (softmax averaged with the left-right flip) or "
        "hflip_crops (10 views as torchvision's TenCrop: the input and its 4 corner crops, each also flipped; "
        "see docs/config.md eval.tta); recorded in the metrics",
    )


def progress_mode() -> str:
    """``bar``, ``log`` or ``none``: ``auto`` draws bars only when stderr is a terminal, so a SLURM ``.out`` file
    or a pipe gets plain lines instead of every redraw of a bar."""
    if _progress_mode != "auto":
        return _progress_mode
    isatty = getattr(sys.stderr, "isatty", None)
    return "bar" if callable(isatty) and isatty() else "log"


def format_duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03``: an ETA or elapsed time for a log line."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LogProgress:
    """Progress as a few plain lines on stderr (every tenth of the work, and at the end): what a log file keeps."""

    LINES = 10

    def __init__(self, iterable: Iterable[T], total: Optional[int], desc: str, unit: str, initial: int = 0):
        self.iterable, self.desc, self.unit, self.initial = iterable, desc or "progress", unit, initial
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)

    def __iter__(self):
        every = max(1, (self.total or 0) // self.LINES) if self.total else 100
        started, done = time.perf_counter(), self.initial
        for item in self.iterable:
            yield item
            done += 1
            if (done - self.initial) % every == 0 or done == self.total:
                self._line(done, time.perf_counter() - started)

    def _line(self, done: int, elapsed: float) -> None:
        rate = (done - self.initial) / max(elapsed, 1e-9)
        text = (
            f"{self.desc}: {done}"
            + (f"/{self.total}" if self.total else "")
            + f" {self.unit} | {rate:.1f} {self.unit}/s"
        )
        if self.total and rate > 0:
            text += f" | ETA {format_duration((self.total - done) / rate)}"
        print(text, file=sys.stderr, flush=True)


def ignore_sigterm() -> None:
    """Ignore further SIGTERMs while the process exits after a stop.

    Interpreter shutdown puts SIGTERM back to its default action while modules are torn down; a
    repeated TERM (srun, a launcher forwarding it) landing then would kill the process (-15) after
    its checkpoint was saved, and the scheduler would see a crash instead of 128 + 15.
    """
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to protect
        pass


def progress(
    iterable: Iterable[T],
    *,
    total: Optional[int] = None,
    desc: str = "",
    unit: str = "it",
    enabled: Optional[bool] = None,
    lines: bool = True,
    **kwargs,
) -> Iterable[T]:
    """Progress on the main process only: a tqdm bar on a terminal, plain lines (``lines=False``: nothing, the
    caller prints its own) in a log, nothing with ``--progress none``; a plain iterable elsewhere."""
    if enabled is None:
        enabled = is_main_process()
    mode = progress_mode()
    if not enabled or mode == "none" or (mode == "log" and not lines):
        return iterable
    if mode == "log":
        return LogProgress(iterable, total, desc, unit, initial=int(kwargs.get("initial", 0)))
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, **kwargs)
