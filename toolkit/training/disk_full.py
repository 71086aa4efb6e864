"""A full (or read-only) disk during training: recognised from any writer, reported as one resumable line.

Every file training writes is atomic, so a failed write damages nothing finished; the user needs to
know that, and the command that continues the run.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional

from safetensors import SafetensorError

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


def disk_full_error(err: BaseException, folder: Path, run_name: Optional[str]) -> Optional[TrainingError]:
    """The one line for ``err`` when a full disk caused it (None otherwise): what failed and how to resume."""
    full = disk_full(err, folder)
    if full is None:
        return None
    return TrainingError(
        f"{full}; the last good checkpoint is kept. Free some space, then run the same command with "
        f"train.resume=auto output.run_name={run_name}"
    )
