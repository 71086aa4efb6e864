"""Where the per-step and per-epoch rows go: ``RUN/steps.csv`` always, TensorBoard on request, W&B, and,
where no progress bar is drawn, one plain line per logged step.

Every ``train.log_every_steps`` optimizer steps (and at each epoch's last step) the loop hands one row
(step, epoch, loss, lr) to ``StepLog.log``, which adds the throughput and data-wait share of the steps
since the previous row. Each step must be in every log once, with the values of the run that finished it,
also after a kill between checkpoints and a resume:

- steps.csv: the resumed run cuts it back to its checkpoint's step (``RunDir.keep_steps_until``);
- TensorBoard: ``purge_step`` makes its reader drop what the killed run wrote past the checkpoint;
- W&B keeps the first value it gets for a step and drops a step it has seen (wandb #4482), so the rows are
  held until a checkpoint covers them (``release``): a killed run never sent a step its resumed run redoes.
  A SIGKILL also loses what W&B had not yet written (offline, ``run-ID.wandb`` is written in 32 KiB
  blocks); ``backfill`` sends the resumed run's missing rows from steps.csv and metrics.jsonl.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, Protocol

from toolkit.cli import format_duration, progress_mode
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


class Tracker(Protocol):  # toolkit.reporting.tracking.Tracker
    def log(self, metrics: dict, step: int) -> None: ...
    def last_received_step(self) -> int: ...


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


def training_step_log(
    cfg, run: RunDir, tracker: Tracker, accelerator, batches_per_epoch: int, resume_step, log
) -> "StepLog":
    """The step log of a training run (``resume_step``: the checkpoint's step when resuming, else None)."""
    accum, world = cfg.train.grad_accum_steps, accelerator.num_processes
    total = (batches_per_epoch // accum) * cfg.train.epochs
    return StepLog(
        run,
        tracker,
        hold=bool(
            cfg.train.checkpoint_every_steps or cfg.train.checkpoint_every_epochs or cfg.train.checkpoint_every_minutes
        ),  # nothing to resume: no hold
        is_main=accelerator.is_main_process,
        tensorboard=cfg.tracking.tensorboard,
        images_per_step=cfg.train.batch_size * world * accum,
        total_steps=min(total, cfg.train.max_steps) if cfg.train.max_steps else total,
        resume_step=resume_step,
        echo=log if progress_mode() == "log" else None,
    )


class StepLog:
    """steps.csv, TensorBoard and the plain step line of one training run (written by the main process only)."""

    def __init__(
        self,
        run: RunDir,
        tracker: Tracker,
        *,
        hold: bool,
        is_main: bool,
        tensorboard: bool,
        images_per_step: int,
        total_steps: int,
        resume_step: Optional[int],
        echo: Optional[Callable[[str], None]],
    ) -> None:
        self.run, self.is_main, self.echo = run, is_main, echo
        self.tracker, self.hold, self.held = tracker, hold, []
        self.lost = 0  # rows steps.csv could not take
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

    def waited(self, seconds: float) -> float:
        """Time the loop spent waiting for the next batch (returned, for the epoch's own sum)."""
        self._waited += seconds
        return seconds

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
            self._append(row)
            if self.writer is not None:
                for name in ("loss", "lr", "img_per_s", "data_wait"):
                    self.writer.add_scalar(f"train/{name}", row[name], step)
            if self.echo is not None:
                self.echo(self.line(row, seconds / max(steps, 1)))
        self.start_window(step)
        self._to_wandb(wandb_step_row(row), step)
        return row

    def _append(self, row: dict) -> None:
        """Add the row to steps.csv; a full disk costs rows (said once, counted at the end), never the run: only the
        main process writes, and raising here while the other ranks go on would leave them waiting."""
        try:
            self.run.append_steps([row])
        except OSError as err:
            self.lost += 1
            if self.lost == 1:
                print(
                    f"warning: cannot append to {self.run.steps} ({err}); training continues",
                    file=sys.stderr,
                    flush=True,
                )

    def _to_wandb(self, metrics: dict, step: int) -> None:
        if self.hold:
            self.held.append((metrics, step))
        else:
            self.tracker.log(metrics, step=step)

    def release(self) -> None:
        """Send the held W&B rows: a checkpoint now covers them, or the run is complete."""
        held, self.held = self.held, []
        for metrics, step in held:
            self.tracker.log(metrics, step=step)

    def backfill(self, log: Callable[[str], None]) -> int:
        """After a resume: send the rows up to the checkpoint that W&B never received; returns how many."""
        have = self.tracker.last_received_step()
        missing = [(metrics, step) for metrics, step in logged_rows(self.run) if step > have]
        for metrics, step in missing:
            self.tracker.log(metrics, step=step)
        if missing:
            log(f"W&B: sent {len(missing)} row(s) up to the checkpoint that the interrupted run had not delivered")
        return len(missing)

    def line(self, row: dict, seconds_per_step: float) -> str:
        """``step 40/120 | epoch 1.33 | loss 0.6931 | lr 3.00e-03 | 812.5 img/s | data_wait 4% | ETA 1:05``"""
        left = max(self.total_steps - row["step"], 0)
        return (
            f"step {row['step']}/{self.total_steps} | epoch {row['epoch']:.2f} | loss {row['loss']:.4f} | "
            f"lr {row['lr']:.2e} | {row['img_per_s']:.1f} img/s | data_wait {row['data_wait']:.0%} | "
            f"ETA {format_duration(left * seconds_per_step)}"
        )

    def log_epoch(self, row: dict, step: int) -> None:
        """The epoch's numbers (metrics.jsonl's row) as ``epoch/*`` in W&B and TensorBoard."""
        self._to_wandb(wandb_epoch_row(row), step)
        if self.writer is None:
            return
        for name, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.lost:
            print(
                f"warning: {self.lost} step row(s) could not be written to {self.run.steps}",
                file=sys.stderr,
                flush=True,
            )
        self.lost = 0
        if self.writer is not None:
            self.writer.close()
            self.writer = None
