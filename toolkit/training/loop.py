"""Train a ResNet on webdataset shards with Hugging Face Accelerate.

    accelerate launch --config_file accelerate_config.yaml toolkit/train.py --config configs/smoke.yaml [key=value ...]
    python -m toolkit.train --config configs/smoke.yaml train.epochs=2      # one process: GPU if present, else CPU

One loop, top to bottom: build everything from the config, resume if asked, then per epoch
train -> validate -> log -> save. The same code runs on CPU, one GPU, many GPUs and many nodes;
Accelerate reads the topology from its launcher's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import pickle
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


import torch

from toolkit.training.checkpoint import (latest_checkpoint, list_checkpoints, model_metadata,
                                save_checkpoint, save_model_file)
from toolkit.cli import ArgumentParser, DataError, UsageError, progress, run_cli
from toolkit.config import Config, dump_yaml, load_config, split_config_args, to_dict, to_yaml, validate
from toolkit.fileio import TMP_PREFIX, append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from toolkit.data.device_augment import batch_to_device

TRAINER_STATE = "trainer_state.json"
DISK_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
EMA_FILE = "ema.safetensors"


class TrainingError(Exception):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainerState:
    """Where the loop is: saved with every checkpoint as JSON, so resuming never unpickles."""

    epoch: int = 0  # current epoch, 0-based
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    global_step: int = 0  # optimizer steps taken
    best_val_auc: float = -1.0
    best_epoch: int = -1
    epoch_loss_sum: float = 0.0  # partial sums of the current epoch, for mid-epoch resume
    epoch_loss_count: int = 0
    epoch_skipped: int = 0


class StopRequested:
    """SIGTERM / Ctrl-C: finish the current step, save a checkpoint, exit cleanly."""

    def __init__(self):
        self.requested = False
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # second signal: stop now
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Setup


def parse_args(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = ArgumentParser(
        prog="toolkit.train",
        description="Train a ResNet on webdataset shards with Hugging Face Accelerate. "
                    "Override any config key with section.key=value after the flags.",
        epilog="example: accelerate launch toolkit/train.py --config configs/smoke.yaml train.epochs=3 optimizer.lr=3e-4",
    )
    parser.add_argument("--config", required=True, help="YAML config file, e.g. configs/smoke.yaml")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    flags, overrides = split_config_args(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(flags)
    return args, overrides


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    try:
        accelerator = Accelerator(
            # Without CUDA, cpu=True turns a torchrun-style launch (accelerate launch --multi_gpu) into gloo DDP.
            cpu=not torch.cuda.is_available(),
            mixed_precision=cfg.train.mixed_precision,  # None: whatever the launcher says (else "no")
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"cannot start Accelerate with train.mixed_precision={cfg.train.mixed_precision!r}: {err}") from None
    if accelerator.is_main_process and accelerator.device.type == "cpu":
        print(f"notice: no GPU found; training on CPU with {accelerator.num_processes} process(es)", flush=True)
    return accelerator


def resolve_run_dir(cfg: Config, accelerator) -> Path:
    """The run folder, agreed on by every process; ``resume=auto`` without a name picks the newest run."""
    from accelerate.utils import broadcast_object_list

    root = Path(cfg.output.dir)
    name = cfg.output.run_name
    if name is None and cfg.train.resume == "auto":
        candidates = sorted((p for p in root.glob("*/checkpoints") if list_checkpoints(p)),
                            key=lambda p: latest_checkpoint(p).stat().st_mtime)
        if candidates:
            name = candidates[-1].parent.name
    if name is None:
        name = time.strftime("run-%Y%m%d-%H%M%S")
    names = [name]
    if accelerator.num_processes > 1:
        broadcast_object_list(names, from_process=0)
    run_dir = root / names[0]
    if accelerator.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise UsageError(f"output folder {str(run_dir)!r} is not writable ({err.strerror}); set output.dir to a writable folder") from None
        remove_stale_temporaries(run_dir)
    accelerator.wait_for_everyone()
    cfg.output.run_name = names[0]
    return run_dir


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete what a killed run left half-written under temporary names (never read, only in the way)."""
    for stale in (*run_dir.glob(f"{TMP_PREFIX}*"), *run_dir.glob(f"*/{TMP_PREFIX}*"), *run_dir.glob(f"*/*/{TMP_PREFIX}*")):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def build_model(cfg: Config) -> torch.nn.Module:
    from toolkit.models import create_model

    return create_model(
        cfg.model.arch, num_classes=cfg.model.num_classes, blocks_per_stage=cfg.model.blocks_per_stage,
        block=cfg.model.block, base_width=cfg.model.base_width, in_chans=cfg.model.in_chans,
        zero_init_residual=cfg.model.zero_init_residual,
    )


def seed_everything(seed: int, rank: int) -> None:
    import random

    import numpy as np

    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed)  # same initial weights on every rank


# ---------------------------------------------------------------------------------------------
# Resume


def save_training_state(accelerator, run_dir: Path, state: TrainerState, scheduler, ema, keep: int) -> Path:
    """Full state for resuming: Accelerate's (model, optimizer, scaler, RNG) + ours as JSON/safetensors."""
    ckpt_dir = run_dir / "checkpoints"

    def extras(folder: Path) -> None:
        atomic_write_json(folder / TRAINER_STATE, {"trainer": dataclasses.asdict(state),
                                                    "scheduler": _scheduler_state(scheduler)})
        if ema is not None:
            from safetensors.torch import save_file
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(folder / EMA_FILE))

    return save_checkpoint(accelerator, ckpt_dir, state.global_step, keep, write_extras=extras)


def _scheduler_state(scheduler) -> dict:
    return {"last_epoch": scheduler.last_epoch, "_step_count": scheduler._step_count,
            "base_lrs": list(scheduler.base_lrs), "_last_lr": list(scheduler.get_last_lr())}


def load_training_state(accelerator, folder: Path, scheduler, ema) -> TrainerState:
    try:  # pickles (optimizer, RNG) are read with weights_only=True: a foreign one fails here, unexecuted
        accelerator.load_state(str(folder))
        saved = json.loads((folder / TRAINER_STATE).read_text())
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError) as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        if isinstance(err, pickle.UnpicklingError):
            detail = "a pickled file in it holds more than tensors and was refused unread"
        raise UsageError(f"cannot resume from {str(folder)!r} ({type(err).__name__}: {detail}); pass another checkpoint "
                         "folder as train.resume, or move this one away to resume from the one before") from None
    sched = saved["scheduler"]
    scheduler.last_epoch = sched["last_epoch"]
    scheduler._step_count = sched["_step_count"]
    scheduler.base_lrs = sched["base_lrs"]
    scheduler._last_lr = sched["_last_lr"]
    for group, lr in zip(scheduler.optimizer.param_groups, sched["_last_lr"]):
        group["lr"] = lr
    if ema is not None:
        from safetensors.torch import load_file
        ema.load_state_dict(load_file(str(folder / EMA_FILE)))
    return TrainerState(**saved["trainer"])


def find_resume_checkpoint(cfg: Config, run_dir: Path) -> Optional[Path]:
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        return latest_checkpoint(run_dir / "checkpoints")
    return Path(cfg.train.resume)


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: Config) -> dict:
    from toolkit.data.loader import check_shards_exist, load_info, make_train_loader, resolve_normalization
    from toolkit.evaluation.evaluate import evaluate_split, finish_run_evaluation
    from toolkit.training.optim import build_ema, build_optimizer, build_scheduler
    from toolkit.reporting.tracking import Tracker, redact_secrets

    accelerator = make_accelerator(cfg)
    main_process = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    log = (lambda msg: print(msg, flush=True)) if main_process else (lambda msg: None)

    # data: sizes and normalization come from the shards' manifest (checked before any folder is made)
    info = load_info(cfg.data.shards)
    splits = ["train", "val"] + ([cfg.eval.test_split] if cfg.eval.test_split else [])
    check_shards_exist(cfg.data.shards, info, splits)
    run_dir = resolve_run_dir(cfg, accelerator)
    mean, std = resolve_normalization(cfg.data, info)
    cfg.data.mean, cfg.data.std = list(mean), list(std)
    train_loader = make_train_loader(cfg.data, info, batch_size=cfg.train.batch_size, rank=rank, world_size=world,
                                     seed=cfg.train.seed)
    batches_per_epoch = (len(train_loader) // cfg.train.grad_accum_steps) * cfg.train.grad_accum_steps
    if batches_per_epoch == 0:
        raise UsageError(f"train.grad_accum_steps = {cfg.train.grad_accum_steps} exceeds the {len(train_loader)} batches "
                         "per epoch; lower it or train.batch_size")
    steps_per_epoch = batches_per_epoch // cfg.train.grad_accum_steps
    total_steps = steps_per_epoch * cfg.train.epochs

    # model, optimizer, schedule
    seed_everything(cfg.train.seed, rank)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN time its kernels once
    model = build_model(cfg)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps_per_epoch, total_steps)
    raw_model = model  # the unwrapped module: what we save and evaluate
    ema = build_ema(raw_model, cfg.train.ema_decay)  # before prepare(): a copy must not share its patched forward
    model, optimizer = accelerator.prepare(model, optimizer)
    if ema is not None:
        ema.to(accelerator.device)
    if cfg.model.compile:
        model = torch.compile(model)

    state = TrainerState()
    resume_from = find_resume_checkpoint(cfg, run_dir)
    if resume_from is not None:
        state = load_training_state(accelerator, resume_from, scheduler, ema)
        log(f"resumed from {resume_from} (epoch {state.epoch + 1}, step {state.global_step})")
    elif cfg.train.resume == "auto":
        log("train.resume=auto: no checkpoint found, starting from scratch")

    config_dict = redact_secrets(to_dict(cfg))
    metrics_path = run_dir / "metrics.jsonl"
    if main_process:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(config_dict))
        atomic_write_json(run_dir / "dataset.json", _dataset_summary(info, cfg.data.shards))
        # keep only rows of completed epochs that the resumed state knows about
        rows = read_jsonl(metrics_path) if metrics_path.exists() else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= state.epoch))
    tracker = Tracker(cfg.tracking, run_dir, config_dict, is_main=main_process, run_name=cfg.output.run_name,
                      resume=resume_from is not None)
    tracker.log_dataset_summary(info)

    num_params = sum(p.numel() for p in raw_model.parameters())
    log(f"run {run_dir} | {cfg.model.arch} {num_params / 1e6:.2f}M params | {world} process(es) on "
        f"{accelerator.device.type} | precision {accelerator.mixed_precision} | {batches_per_epoch} batches x "
        f"{cfg.train.batch_size} x {world} per epoch | dataset {info.get('dataset')}"
        + (" (SYNTHETIC)" if info.get("synthetic") else ""))

    eval_model = ema.module if ema is not None else raw_model
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    accum = cfg.train.grad_accum_steps
    device = accelerator.device
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    stop = StopRequested()

    with stop:
        while state.epoch < cfg.train.epochs:
            epoch = state.epoch
            train_loader.set_epoch(epoch, start_step=state.batch_in_epoch)
            model.train()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            data_wait, pending_losses = 0.0, []
            loss_sum = torch.zeros((), device=device)
            first_batch = state.batch_in_epoch
            interrupted: Optional[str] = None
            batches = iter(train_loader)
            bar = progress(range(first_batch, batches_per_epoch), total=batches_per_epoch, initial=first_batch,
                           desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch")
            t_start = time.perf_counter()
            for batch_index in bar:
                t_wait = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - t_wait
                state.epoch_skipped += int(batch.get("skipped", 0))
                images = batch_to_device(batch, cfg.data, mean, std, device, memory_format=memory_format,
                                         seed=hash((cfg.train.seed, epoch, rank, batch_index)) % 2**63)
                labels = batch["label"].to(device, non_blocking=True)
                sync_now = (batch_index + 1) % accum == 0
                with contextlib.nullcontext() if sync_now else accelerator.no_sync(model):
                    logits = model(images)
                    loss = criterion(logits.float(), labels)
                    if cfg.train.skip_nonfinite and not _all_finite(accelerator, loss):
                        log(f"warning: non-finite loss at step {state.global_step + 1}; skipping this batch "
                            "(train.skip_nonfinite=true)")
                        optimizer.zero_grad(set_to_none=True)
                        state.batch_in_epoch = batch_index + 1
                        continue
                    accelerator.backward(loss / accum)
                loss_sum += loss.detach()
                pending_losses.append((state.global_step + 1, loss.detach()))
                state.epoch_loss_count += 1
                state.batch_in_epoch = batch_index + 1
                if not sync_now:
                    continue
                if cfg.train.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the LR where it was
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(raw_model)
                state.global_step += 1

                if state.global_step % cfg.train.log_every_steps == 0 or state.batch_in_epoch == batches_per_epoch:
                    mean_loss = _check_losses(pending_losses)
                    pending_losses = []
                    lr = scheduler.get_last_lr()[0]
                    tracker.log({"train/loss": mean_loss, "train/lr": lr, "epoch": epoch + state.batch_in_epoch / batches_per_epoch},
                                step=state.global_step)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    if _any_process(accelerator, stop.requested):
                        interrupted = "a stop signal"
                        break
                if (cfg.train.checkpoint_every_steps and state.global_step % cfg.train.checkpoint_every_steps == 0
                        and state.batch_in_epoch < batches_per_epoch):
                    _check_losses(pending_losses)
                    pending_losses = []
                    state.epoch_loss_sum += float(accelerator.reduce(loss_sum.clone(), "sum").item()) / world
                    loss_sum.zero_()
                    save_training_state(accelerator, run_dir, state, scheduler, ema, cfg.train.keep_checkpoints)
                if cfg.train.max_steps and state.global_step >= cfg.train.max_steps:
                    interrupted = f"train.max_steps={cfg.train.max_steps}"
                    break
            _check_losses(pending_losses)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            train_seconds = time.perf_counter() - t_start
            if hasattr(bar, "close"):
                bar.close()

            if interrupted is None and _any_process(accelerator, stop.requested):
                interrupted = "a stop signal"
            if interrupted is not None:  # checkpoint where we are and leave; resume continues exactly here
                state.epoch_loss_sum += float(accelerator.reduce(loss_sum.clone(), "sum").item()) / world
                path = save_training_state(accelerator, run_dir, state, scheduler, ema, cfg.train.keep_checkpoints)
                log(f"stopped by {interrupted} at epoch {epoch + 1}, step {state.global_step}; checkpoint {path}. "
                    f"Resume with the same command plus train.resume=auto output.run_name={cfg.output.run_name}")
                tracker.finish()
                accelerator.end_training()
                return {"run_dir": str(run_dir), "stopped": interrupted, "global_step": state.global_step,
                        "signal": stop.signum}

            # epoch summary: train loss and skips summed over processes, then full validation
            batches_done = state.batch_in_epoch - first_batch
            state.epoch_loss_sum += float(accelerator.reduce(loss_sum.clone(), "sum").item()) / world
            train_loss = state.epoch_loss_sum / max(1, state.epoch_loss_count)
            skipped = int(accelerator.reduce(torch.tensor(state.epoch_skipped, device=device), "sum").item())
            images_seen = batches_done * cfg.train.batch_size * world
            val = evaluate_split(accelerator, eval_model, cfg, info, "val", mean, std)
            row = {
                "epoch": epoch + 1, "step": state.global_step, "lr": scheduler.get_last_lr()[0],
                "train_loss": train_loss, "val_loss": val.loss, "val_acc": val.accuracy, "val_auc": val.auc,
                "img_per_s": images_seen / max(train_seconds, 1e-9),
                "data_wait_frac": data_wait / max(train_seconds, 1e-9), "epoch_seconds": train_seconds,
                "peak_mem_gib": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None,
                "skipped_samples": skipped, "val_skipped_samples": val.skipped,
            }
            improved = val.auc is not None and val.auc > state.best_val_auc
            if improved:
                state.best_val_auc, state.best_epoch = val.auc, epoch + 1
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            state.epoch_loss_sum, state.epoch_loss_count, state.epoch_skipped = 0.0, 0, 0
            if main_process:
                append_jsonl(metrics_path, row)
                meta = model_metadata(cfg, mean=mean, std=std, class_names=info.get("classes", ["cat", "dog"]),
                                      extra={"epoch": epoch + 1, "val_metrics": {"loss": val.loss, "acc": val.accuracy,
                                                                                  "auc": val.auc},
                                             "config": config_dict})
                save_model_file(eval_model, run_dir / "last.safetensors", meta)
                if improved or not (run_dir / "model.safetensors").exists():
                    save_model_file(eval_model, run_dir / "model.safetensors", meta)
            tracker.log({f"epoch/{k}": v for k, v in row.items() if v is not None}, step=state.global_step)
            log(f"epoch {epoch + 1}/{cfg.train.epochs} | train_loss {train_loss:.4f} | val_loss {val.loss:.4f} | "
                f"val_acc {val.accuracy:.4f} | val_auc {_fmt(val.auc)} | lr {row['lr']:.2e} | "
                f"{row['img_per_s']:.1f} img/s | data_wait {row['data_wait_frac']:.0%}"
                + (f" | skipped {skipped}" if skipped else "") + (" | best" if improved else ""))
            last_epoch = state.epoch == cfg.train.epochs
            if cfg.train.checkpoint_every_epochs and (state.epoch % cfg.train.checkpoint_every_epochs == 0 or last_epoch):
                save_training_state(accelerator, run_dir, state, scheduler, ema, cfg.train.keep_checkpoints)

    # the end: check the ranks agree, evaluate the best model on val (threshold tuning) and test, report
    checksums = rank_weight_checksums(accelerator, raw_model)
    if len(set(checksums)) > 1:
        log(f"warning: model weights differ across processes (checksums {checksums}); distributed training diverged")
    if main_process:
        atomic_write_json(run_dir / "final.json", {"global_step": state.global_step, "best_val_auc": state.best_val_auc,
                                                   "best_epoch": state.best_epoch, "num_processes": world,
                                                   "rank_weight_checksums": checksums})
    summary = finish_run_evaluation(accelerator, cfg, info, run_dir, mean, std, tracker)
    tracker_info = tracker.finish()
    if main_process:
        _print_final(run_dir, state, summary, tracker_info)
    accelerator.end_training()
    return {"run_dir": str(run_dir), "best_val_auc": state.best_val_auc, "best_epoch": state.best_epoch, **summary}


def rank_weight_checksums(accelerator, model: torch.nn.Module) -> list[float]:
    """One number per process summarising its weights: equal on every rank unless DDP went wrong."""
    from accelerate.utils import gather_object

    with torch.no_grad():
        total = sum(float(p.detach().double().sum()) + 1e-3 * float(p.detach().double().abs().sum())
                    for p in model.parameters())
    return gather_object([total]) if accelerator.num_processes > 1 else [total]


def _all_finite(accelerator, loss: torch.Tensor) -> bool:
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, "min")
    return bool(flag.item() > 0)


def _any_process(accelerator, value: bool) -> bool:
    if accelerator.num_processes == 1:
        return value
    flag = torch.tensor([1.0 if value else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "max").item() > 0)


def _check_losses(pending: list) -> float:
    """Mean of the pending per-step losses; stop on the first non-finite one, naming its step."""
    if not pending:
        return float("nan")
    values = torch.stack([loss for _, loss in pending]).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        step = pending[int(bad[0])][0]
        raise TrainingError(f"loss became {values[int(bad[0])].item()} at step {step}; lower optimizer.lr, set "
                            "train.grad_clip, or set train.skip_nonfinite=true. The last good checkpoint is untouched.")
    return float(values.mean())


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _dataset_summary(info: dict, shards: str) -> dict:
    return {
        "shards": shards,
        "dataset": info.get("dataset"),
        "synthetic": bool(info.get("synthetic")),
        "classes": info.get("classes"),
        "splits": {name: {"num_samples": s.get("num_samples"), "class_counts": s.get("class_counts"),
                          "num_shards": len(s.get("shards", []))} for name, s in info.get("splits", {}).items()},
        "normalization": info.get("normalization"),
        "skipped": info.get("skipped", []),
        "unlisted": info.get("unlisted"),
    }


def _print_final(run_dir: Path, state: TrainerState, summary: dict, tracker_info: dict) -> None:
    print(f"done: best val_auc {_fmt(state.best_val_auc)} at epoch {state.best_epoch}", flush=True)
    for split, metrics in summary.get("splits", {}).items():
        print(f"  {split}: n={metrics.get('num_samples')} acc {_fmt(metrics.get('accuracy'))} "
              f"auc {_fmt(metrics.get('roc_auc'))}", flush=True)
    print(f"  model:  {run_dir / 'model.safetensors'}", flush=True)
    if (run_dir / "report.html").exists():
        print(f"  report: {run_dir / 'report.html'}", flush=True)
    if tracker_info.get("run_dir"):
        print(f"  W&B run: {tracker_info['run_dir']}", flush=True)
    if tracker_info.get("sync_command"):
        print(f"  upload it with: {tracker_info['sync_command']}", flush=True)
    if tracker_info.get("url"):
        print(f"  W&B: {tracker_info['url']}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = parse_args(argv)
    cfg = validate(load_config(args.config, overrides))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    try:
        result = train(cfg)
    except TrainingError as err:
        raise DataError(str(err)) from None
    except OSError as err:  # disk full mid-run: files are written atomically, so nothing finished is damaged
        if err.errno not in DISK_FULL_ERRORS:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        raise DataError(f"{err.strerror}{where}; the last good checkpoint is kept. Free some space, then run the same "
                        f"command with train.resume=auto output.run_name={cfg.output.run_name}") from None
    if result.get("stopped") and result.get("signal"):  # checkpointed, not finished: 128 + signal, as a shell does
        return 128 + int(result["signal"])
    return 0

