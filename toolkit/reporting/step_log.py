"""Per-step logs that need no W&B: ``RUN/steps.csv`` always, TensorBoard event files on request, and,
where no progress bar is drawn, one plain line per logged step.

Every ``train.log_every_steps`` optimizer steps (and at each epoch's last step) the loop hands one row
(step, epoch, loss, lr) to ``StepLog.log``, which adds the throughput and data-wait share of the steps
since the previous row. A resumed run first drops the rows logged after its checkpoint
(``RunDir.keep_steps_until``; TensorBoard's own ``purge_step``), so each step is in the logs once, with
the values of the run that finished it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from toolkit.cli import format_duration
from toolkit.errors import UsageError
from toolkit.formats import RunDir

TENSORBOARD_HINT = 'tracking.tensorboard=true needs the tensorboard package: pip install -e ".[tensorboard]"'


def check_tensorboard(enabled: bool) -> None:
    """Refuse ``tracking.tensorboard=true`` without the package, before a run folder is made."""
    if not enabled:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError(TENSORBOARD_HINT) from None


def wandb_step_row(row: dict) -> dict:
    """A steps.csv row as the W&B (and TensorBoard) keys of a logged step."""
    return {"train/loss": row["loss"], "train/lr": row["lr"], "epoch": row["epoch"]}


def wandb_epoch_row(row: dict) -> dict:
    """A metrics.jsonl row as the ``epoch/*`` keys of an epoch's end."""
    return {f"epoch/{key}": value for key, value in row.items() if value is not None}


def logged_rows(run: RunDir) -> list[tuple[dict, int]]:
    """What the run logged to W&B so far, rebuilt from its own files: (metrics, step), in step order."""
    rows = [(wandb_step_row(row), row["step"]) for row in run.read_steps()]
    rows += [(wandb_epoch_row(row), row["step"]) for row in run.read_history()]
    return sorted(rows, key=lambda pair: pair[1])


class StepLog:
    """steps.csv, TensorBoard and the plain step line of one training run (written by the main process only)."""

    def __init__(
        self,
        run: RunDir,
        *,
        is_main: bool,
        tensorboard: bool,
        images_per_step: int,
        total_steps: int,
        resume_step: Optional[int],
        echo: Optional[Callable[[str], None]],
    ) -> None:
        self.run, self.is_main, self.echo = run, is_main, echo
        self.images_per_step, self.total_steps = images_per_step, total_steps
        self.writer: Any = None
        if is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard's reader drops the events a killed run wrote past the checkpoint
            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(log_dir=str(run.tensorboard), purge_step=purge)
        self.start_window(0)

    def start_window(self, step: int) -> None:
        """Throughput and data wait are measured from here (each epoch's start: validation is not counted)."""
        self._t0, self._step0, self._waited = time.perf_counter(), step, 0.0

    def waited(self, seconds: float) -> None:
        """Time the loop spent waiting for the next batch."""
        self._waited += seconds

    def log(self, step: int, epoch: float, loss: float, lr: float) -> dict:
        """One row for the steps since the previous one: written, plotted, and printed where no bar is drawn."""
        seconds = max(time.perf_counter() - self._t0, 1e-9)
        steps = max(step - self._step0, 0)
        row = {
            "step": step,
            "epoch": epoch,
            "loss": loss,
            "lr": lr,
            "img_per_s": steps * self.images_per_step / seconds,
            "data_wait": min(self._waited / seconds, 1.0),
        }
        if self.is_main:
            self.run.append_steps([row])
            if self.writer is not None:
                for name in ("loss", "lr", "img_per_s", "data_wait"):
                    self.writer.add_scalar(f"train/{name}", row[name], step)
            if self.echo is not None:
                self.echo(self.line(row, seconds / max(steps, 1)))
        self.start_window(step)
        return row

    def line(self, row: dict, seconds_per_step: float) -> str:
        """``step 40/120 | epoch 1.33 | loss 0.6931 | lr 3.00e-03 | 812.5 img/s | data_wait 4% | ETA 1:05``"""
        left = max(self.total_steps - row["step"], 0)
        return (
            f"step {row['step']}/{self.total_steps} | epoch {row['epoch']:.2f} | loss {row['loss']:.4f} | "
            f"lr {row['lr']:.2e} | {row['img_per_s']:.1f} img/s | data_wait {row['data_wait']:.0%} | "
            f"ETA {format_duration(left * seconds_per_step)}"
        )

    def log_epoch(self, row: dict, step: int) -> None:
        """The epoch's numbers (metrics.jsonl's row) as ``epoch/*`` scalars in TensorBoard."""
        if self.writer is None:
            return
        for name, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
