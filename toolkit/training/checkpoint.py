"""Full training-state checkpoints, for resuming (model files: ``toolkit.formats.model_file``).

``checkpoints/step-XXXXXXXX/`` holds ``accelerator.save_state`` output (model, optimizer, scaler,
scheduler, RNG, loop position). Written under a temporary name and renamed when complete, so a
kill never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable, Optional, TypeVar

import torch

from toolkit.errors import DataError, on_every_rank
from toolkit.fileio import TMP_PREFIX, fsync_dir

FORMAT_NAME = "pets-toolkit/resnet"
CHECKPOINT_PREFIX = "step-"
_CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Training-state checkpoints


def checkpoint_dir_name(global_step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{global_step:08d}"


def checkpoint_step(path: Path) -> Optional[int]:
    """The step in a ``step-XXXXXXXX`` folder's name (None for any other name)."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(folder: Path) -> Optional[Path]:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(
    accelerator,
    folder: Path,
    global_step: int,
    keep: int,
    write_extras: Optional[Callable[[Path], None]] = None,
    write_rank_extras: Optional[Callable[[Path], None]] = None,
) -> Path:
    """``accelerator.save_state`` into a temporary folder, then rename it into place (all ranks call).

    ``write_extras(folder)`` runs on the main process, ``write_rank_extras(folder)`` on every process,
    to add files of our own before the rename.
    """
    folder = Path(folder)
    final = folder / checkpoint_dir_name(global_step)
    tmp = folder / f"{TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    together(accelerator, lambda: accelerator.save_state(str(tmp), safe_serialization=True))
    if write_rank_extras is not None:
        together(accelerator, lambda: write_rank_extras(tmp))

    def install() -> None:
        if write_extras is not None:
            write_extras(tmp)
        _fsync_tree(tmp)
        previous = folder / f"{TMP_PREFIX}old-{final.name}"
        if final.exists():  # same step saved twice (a stop on an epoch's last batch): keep it until the new one is in
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(final, previous)
        os.replace(tmp, final)
        fsync_dir(folder)
        shutil.rmtree(previous, ignore_errors=True)
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in folder.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    together(accelerator, install if accelerator.is_main_process else None)
    return final


def together(accelerator, work: Optional[Callable[[], T]]) -> Optional[T]:
    """Run ``work`` where there is some, then let every process learn whether any of them failed.

    A process that fails (a full disk while the main process writes) re-raises its own error; the
    others stop too, quietly, instead of waiting at the next collective for one that has left.
    """
    result, error = None, None
    if work is not None:
        try:
            result = work()
        except Exception as err:  # re-raised below, after the others have been told
            error = err
    failed = error is not None
    if accelerator.num_processes > 1:
        flag = torch.tensor([1.0 if failed else 0.0], device=accelerator.device)
        failed = bool(accelerator.reduce(flag, "max").item() > 0)
    if error is not None:
        raise error
    if failed:
        raise on_every_rank(DataError("another process failed while writing the run's files; its error is above"))
    return result


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)
