"""Train a ResNet on webdataset shards with Hugging Face Accelerate.

``train`` reads top to bottom: ``setup`` builds everything from the config (and resumes), then
per epoch ``train_one_epoch`` -> ``validate`` -> ``end_epoch`` (log, save), and ``finish_run``
evaluates the best model and writes the report. The same code runs on CPU, one GPU, many GPUs and
many nodes; Accelerate reads the topology from its launcher's environment.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, gather_object

from toolkit.cli import progress
from toolkit.config import Config, resolve_config, to_dict
from toolkit.data import (
    TrainLoader,
    check_shards_exist,
    check_split_has_samples,
    load_info,
    make_train_loader,
    stores,
)
from toolkit.data.device_augment import batch_to_device
from toolkit.data.loader import sample_order
from toolkit.data.locations import is_local, manifest_location
from toolkit.errors import UsageError, usage_errors
from toolkit.evaluation.evaluator import EvalResult, evaluate_split
from toolkit.evaluation.metrics import format_number
from toolkit.formats import EpochRow, RunDir, class_names, dataset_summary, selection_problem
from toolkit.formats.model_file import model_metadata, save_model_file
from toolkit.models import architecture, create_model
from toolkit.models.pretrained import load_pretrained
from toolkit.redaction import redact_secrets
from toolkit.reporting.finish import finish_run
from toolkit.reporting.step_log import StepLog, check_tensorboard, training_step_log
from toolkit.reporting.tracking import Tracker
from toolkit.training.checkpoint import together
from toolkit.training.disk_full import disk_full_error
from toolkit.training.mixing import MixedTargetLoss, Mixer
from toolkit.training.monitor import (
    check_resumed,
    early_stop_line,
    final_fields,
    monitor_value,
    new_state,
    record_epoch,
)
from toolkit.training.norm_slots import NormSlots
from toolkit.training.optim import build_ema, build_optimizer, build_scheduler
from toolkit.training.ranks import (
    RunningLoss,
    agreed_max,
    any_process,
    join_after_elastic_restart,
    lost_peer_error,
    main_process_value,
    rank_weight_checksums,
    sync_norm_statistics,
)
from toolkit.training.run_folder import keep_lease, resolve_run_dir, unlock
from toolkit.training.state import (
    CheckpointTimer,
    StopRequested,
    TrainerState,
    checkpoint_due,
    load_training_state,
    restore_best_model,
    save_training_state,
    saved_order,
)
from toolkit.training.step import TrainStep, training_loss

SHOWN_APART = ("val_top5", "val_balanced_acc")  # monitors the epoch line adds to its usual figures


@dataclasses.dataclass
class Session:
    """Everything one training run holds on to, built once by ``setup``."""

    cfg: Config
    accelerator: Accelerator
    run: RunDir
    info: dict
    loader: TrainLoader
    batches_per_epoch: int
    model: torch.nn.Module  # as prepared (DDP-wrapped, maybe compiled): what trains
    raw_model: torch.nn.Module  # the unwrapped module: what is saved
    eval_model: torch.nn.Module  # the EMA's copy when there is one, else raw_model
    ema: Optional[torch.nn.Module]
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: TrainStep
    tracker: Tracker
    config_dict: dict
    resumed_from: Optional[Path]
    log: Callable[[str], None]
    norms: NormSlots  # BatchNorm statistics per micro-batch slot of the step (norm_slots)
    steps: Optional[StepLog] = None  # made by start(), once the checkpoint's step is known
    mixer: Optional[Mixer] = None  # mixup/cutmix of training micro-batches (train.mixup_alpha, ...); None: off
    timer: CheckpointTimer = dataclasses.field(default_factory=CheckpointTimer)  # train.checkpoint_every_minutes

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


@dataclasses.dataclass
class EpochOutcome:
    seconds: float
    data_wait: float
    batches_done: int
    retries: int = 0  # remote reads retried after a transient fault (this rank)
    stopped_by: Optional[str] = None  # "a stop signal" or "train.max_steps=N": checkpoint and leave


# ---------------------------------------------------------------------------------------------
# Setup


def make_accelerator(cfg: Config) -> Accelerator:
    seconds = cfg.train.collective_timeout_s
    timeout = datetime.timedelta(seconds=seconds) if seconds else None
    join_after_elastic_restart(timeout)
    handlers = [DistributedDataParallelKwargs(broadcast_buffers=False)]
    if timeout is not None:  # a peer that stops answering fails this process instead of hanging it
        handlers.append(InitProcessGroupKwargs(timeout=timeout))
    try:
        accelerator = Accelerator(
            # Without CUDA, cpu=True turns a torchrun-style launch (accelerate launch --multi_gpu) into gloo DDP.
            cpu=not torch.cuda.is_available(),
            mixed_precision=cfg.train.mixed_precision,  # None: whatever the launcher says (else "no")
            kwargs_handlers=handlers,
        )
    except (ValueError, RuntimeError) as err:
        raise UsageError(
            f"cannot start Accelerate with train.mixed_precision={cfg.train.mixed_precision!r}: {err}"
        ) from None
    if accelerator.is_main_process and accelerator.device.type == "cpu":
        print(f"notice: no GPU found; training on CPU with {accelerator.num_processes} process(es)", flush=True)
    return accelerator


def build_model(cfg: Config) -> torch.nn.Module:
    with usage_errors("model"):
        return create_model(
            cfg.model.arch,
            num_classes=cfg.model.num_classes,
            blocks_per_stage=cfg.model.blocks_per_stage,
            block=cfg.model.block,
            base_width=cfg.model.base_width,
            in_chans=cfg.model.in_chans,
            zero_init_residual=cfg.model.zero_init_residual,
        )


def seed_everything(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed)  # same initial weights on every rank


def setup(cfg: Config) -> Session:
    """Data, model, optimizer, schedule, run folder and tracker; resumes when ``train.resume`` says so."""
    accelerator = make_accelerator(cfg)
    log = (lambda msg: print(msg, flush=True)) if accelerator.is_main_process else (lambda msg: None)

    # data: sizes and normalization come from the shards' manifest (checked before any folder is made)
    stores.configure(stores.options_from(cfg.data))
    info = load_info(cfg.data.shards)
    check_shards_exist(cfg.data.shards, info, ["train", "val"] + ([cfg.eval.test_split] if cfg.eval.test_split else []))
    problem = selection_problem(info)
    if problem:
        raise UsageError(f"{cfg.data.shards}: {problem}")
    if cfg.eval.test_split:  # an empty one would end the finished training in a traceback, without a report
        check_split_has_samples(cfg.data.shards, info, cfg.eval.test_split, "eval.test_split", " (null: no final test)")
    check_tensorboard(cfg.tracking.tensorboard)
    # every value decided here, before any folder is made; frozen from now on
    cfg = resolve_config(cfg, info, world_size=accelerator.num_processes)
    order = sample_order(
        cfg.data,
        info,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        global_batch_size=cfg.train.global_batch_size,
        streams=cfg.train.streams,
    )
    run, resumed_from = resolve_run_dir(cfg, accelerator, order)  # decided by the main process, checked by every rank
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, run_name=run.root.name))
    try:
        return build_session(cfg, accelerator, info, run, resumed_from, log)
    except BaseException:
        if accelerator.is_main_process:
            unlock(run)
        raise


def initial_model(
    cfg: Config, accelerator: Accelerator, resumed_from: Optional[Path], log: Callable[[str], None]
) -> torch.nn.Module:
    """The unwrapped model before training: built, ImageNet weights loaded (unless resuming), BN and memory layout set."""
    raw_model = build_model(cfg)
    if cfg.model.init and resumed_from is None:  # a resumed run's checkpoint holds the weights already
        with accelerator.main_process_first():  # every rank loads; rank 0 first, so only it downloads
            with usage_errors():
                kept = load_pretrained(raw_model, cfg.model.init)
        log(f"model.init={cfg.model.init}: loaded; fresh for this dataset: {', '.join(kept) or 'nothing'}")
    if cfg.model.sync_bn:
        if accelerator.device.type != "cuda":
            raise UsageError(
                "model.sync_bn needs CUDA GPUs (SyncBatchNorm runs on NCCL); on CPU keep it false: "
                "train.dist_bn=reduce already gives every rank the same statistics for validation"
            )
        if accelerator.num_processes > 1:  # one process has nothing to sync with
            raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    if cfg.model.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    return raw_model


def build_session(
    cfg: Config,
    accelerator: Accelerator,
    info: dict,
    run: RunDir,
    resumed_from: Optional[Path],
    log: Callable[[str], None],
) -> Session:
    """Everything after the run folder is chosen (and locked): the loader, model, optimizer, tracker."""
    rank, world = accelerator.process_index, accelerator.num_processes
    loader = make_train_loader(
        cfg.data,
        info,
        batch_size=cfg.train.batch_size,
        rank=rank,
        world_size=world,
        seed=cfg.train.seed,
        global_batch_size=cfg.train.global_batch_size,
        streams=cfg.train.streams,
    )
    batches_per_epoch = len(loader)  # this rank's micro-batches: grad_accum_steps per global step
    steps_per_epoch = batches_per_epoch // cfg.train.grad_accum_steps

    # model, optimizer, schedule
    seed_everything(cfg.train.seed, rank)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN time its kernels once
    raw_model = initial_model(cfg, accelerator, resumed_from, log)
    optimizer = build_optimizer(raw_model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps_per_epoch, steps_per_epoch * cfg.train.epochs)
    ema = build_ema(raw_model, cfg.train.ema_decay)  # before prepare(): a copy must not share its patched forward
    model, optimizer = accelerator.prepare(raw_model, optimizer)
    if ema is not None:
        ema.to(accelerator.device)
    if cfg.model.compile:
        model = torch.compile(model)
    criterion = training_loss(cfg.train.class_weights, cfg.train.label_smoothing, accelerator.device)
    mixer = Mixer(cfg.train, num_classes=cfg.model.num_classes) if cfg.train.mixing else None
    step = TrainStep(
        accelerator,
        model,
        optimizer,
        criterion if mixer is None else MixedTargetLoss(criterion),
        scheduler=scheduler,
        ema=ema,
        raw_model=raw_model,
        grad_clip=cfg.train.grad_clip,
        accum_steps=cfg.train.grad_accum_steps,
    )

    config_dict = redact_secrets(to_dict(cfg))
    tracker = Tracker(
        cfg.tracking,
        run,
        config_dict,
        is_main=accelerator.is_main_process,
        run_name=cfg.output.run_name,
        resume=resumed_from is not None,
    )
    return Session(
        cfg=cfg,
        accelerator=accelerator,
        run=run,
        info=info,
        loader=loader,
        batches_per_epoch=batches_per_epoch,
        model=model,
        raw_model=raw_model,
        eval_model=ema.module if ema is not None else raw_model,
        ema=ema,
        scheduler=scheduler,
        step=step,
        tracker=tracker,
        config_dict=config_dict,
        resumed_from=resumed_from,
        log=log,
        norms=NormSlots(raw_model, loader.stream.batches, cfg.train.global_batch_size // cfg.train.batch_size),
        mixer=mixer,
    )


def start(s: Session) -> TrainerState:
    """Resume (or not), record the config and data beside the run, and say what is about to happen."""
    cfg = s.cfg
    state = new_state(cfg.train)
    if s.resumed_from is not None:
        state = load_training_state(s.accelerator, s.resumed_from, s.scheduler, s.ema, s.norms)
        check_resumed(state, cfg.train, str(s.resumed_from))
        position = saved_order(s.resumed_from)
        if position is not None:  # the global position, in this process count's micro-batches
            state.batch_in_epoch = position["step_in_epoch"] * cfg.train.grad_accum_steps
        else:  # saved before the order was recorded (same process count): its loss sums were per process
            state.epoch_loss_sum, state.epoch_loss_count = (
                state.epoch_loss_sum * s.world,
                state.epoch_loss_count * s.world,
            )
        s.log(f"resumed from {s.resumed_from} (epoch {state.epoch + 1}, step {state.global_step})")
    elif cfg.train.resume == "auto":
        s.log("train.resume=auto: no checkpoint found, starting from scratch")
    summary = redact_secrets(dataset_summary(s.info, cfg.data.shards))

    def write_run_files() -> None:
        if s.resumed_from is not None:
            restore_best_model(s.run, s.resumed_from, state)
        s.run.write_config(s.config_dict)
        s.run.write_dataset(summary)
        s.run.keep_history_until(state.epoch)  # rows of epochs after the checkpoint are redone
        s.run.keep_steps_until(state.global_step)  # and so are the steps after it
        s.run.keep_sample_keys_until(state.global_step)

    together(s.accelerator, write_run_files if s.accelerator.is_main_process else None)
    resume_step = state.global_step if s.resumed_from is not None else None
    s.steps = training_step_log(cfg, s.run, s.tracker, s.accelerator, s.batches_per_epoch, resume_step, s.log)
    if resume_step is not None and s.tracker.active:
        s.steps.backfill(s.log)  # the rows a kill kept from reaching W&B
    s.tracker.log_dataset_summary(s.info)
    manifest = manifest_location(cfg.data.shards)
    s.tracker.log_dataset_artifact(summary, manifest=Path(manifest) if is_local(manifest) else None)
    num_params = sum(p.numel() for p in s.raw_model.parameters())
    s.log(
        f"run {s.run.root} | {cfg.model.arch} {num_params / 1e6:.2f}M params | {s.world} process(es) on "
        f"{s.accelerator.device.type} | precision {s.accelerator.mixed_precision} | "
        f"{s.batches_per_epoch // cfg.train.grad_accum_steps} steps of {cfg.train.global_batch_size} "
        f"({cfg.train.batch_size} x {s.world} process(es) x {cfg.train.grad_accum_steps}) per epoch | "
        f"dataset {s.info.get('dataset')}" + (" (SYNTHETIC)" if s.info.get("synthetic") else "")
    )
    s.timer.restart()  # a resumed run's interval counts from here
    return state


def checkpoint(s: Session, state: TrainerState) -> Path:
    """Save the training state (and prune older ones) only while this process holds the run's lease; the W&B
    rows it covers can then go out (a resumed run never logs them again)."""
    keep_lease(s.accelerator, s.run, s.cfg.output.run_name)
    position = {
        "epoch": state.epoch,
        "step_in_epoch": state.batch_in_epoch // s.cfg.train.grad_accum_steps,
        "global_step": state.global_step,
    }
    path = save_training_state(
        s.accelerator,
        s.run,
        state,
        s.scheduler,
        s.ema,
        s.cfg.train.keep_checkpoints,
        s.norms,
        order=s.loader.stream.order.to_dict() | position,
    )
    s.steps.release()
    s.timer.restart()
    return path


# ---------------------------------------------------------------------------------------------
# One epoch, validation, the epoch's end


def train_one_epoch(s: Session, state: TrainerState, stop: StopRequested) -> EpochOutcome:
    """Batches ``state.batch_in_epoch`` .. end of the epoch; returns early (checkpointed) on a stop."""
    cfg, accelerator = s.cfg, s.accelerator
    epoch, first_batch = state.epoch, state.batch_in_epoch
    s.loader.set_epoch(epoch, start_step=first_batch // cfg.train.grad_accum_steps)
    s.model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    running = RunningLoss(accelerator, state)
    batches = iter(s.loader)
    keys: list[list[str]] = []  # this rank's micro-batches of the current step (train.record_sample_keys)
    bar = progress(
        range(first_batch, s.batches_per_epoch),
        total=s.batches_per_epoch,
        initial=first_batch,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        unit="batch",
        lines=False,  # without a terminal, after_step prints one line per logged step instead
    )
    outcome = EpochOutcome(seconds=0.0, data_wait=0.0, batches_done=0)
    s.steps.start_window(state.global_step)
    t_start = time.perf_counter()
    for batch_index in bar:
        t_wait = time.perf_counter()
        batch = next(batches)
        outcome.data_wait += s.steps.waited(time.perf_counter() - t_wait)
        state.epoch_skipped += int(batch.get("skipped", 0))
        outcome.retries += int(batch.get("retries", 0))
        images, labels = training_batch(s, batch)
        s.norms.use(batch["position"][2])  # micro-batch j updates slot j's BatchNorm statistics
        window_closes = (batch_index + 1) % cfg.train.grad_accum_steps == 0
        loss = s.step.forward_backward(images, labels, sync=window_closes, skip_nonfinite=cfg.train.skip_nonfinite)
        state.batch_in_epoch = batch_index + 1
        if loss is None:
            s.log(
                f"warning: non-finite loss at step {state.global_step + 1}; skipping this batch "
                "(train.skip_nonfinite=true)"
            )
            continue
        running.add(state.global_step + 1, loss)
        if cfg.train.record_sample_keys:
            keys.append(batch["key"])
        if not window_closes:
            continue
        s.step.update()
        state.global_step += 1
        if cfg.train.record_sample_keys:
            record_sample_keys(s, state, keys)
            keys = []
        outcome.stopped_by = after_step(s, state, running, bar, stop)
        if outcome.stopped_by:
            break
    running.check()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    outcome.seconds = time.perf_counter() - t_start
    outcome.batches_done = state.batch_in_epoch - first_batch
    if hasattr(bar, "close"):
        bar.close()
    if outcome.stopped_by is None and any_process(accelerator, stop.requested):
        outcome.stopped_by = "a stop signal"
    running.flush()
    return outcome


def training_batch(s: Session, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-batch on the device: augmented there, then mixed (train.mixup_alpha, ...) when mixing is on.

    Its labels are class indices, or soft targets where mixup/cutmix mixed it; validation never comes here.
    """
    cfg, device = s.cfg, s.accelerator.device
    images = batch_to_device(
        batch,
        cfg.data,
        device,
        memory_format=torch.channels_last if cfg.model.channels_last else torch.contiguous_format,
        seed=batch["device_seed"],  # the micro-batch's place in the order, not the rank
    )
    labels = batch["label"].to(device, non_blocking=True)
    if s.mixer is not None:
        images, labels = s.mixer(images, labels, batch["position"])
    return images, labels


def record_sample_keys(s: Session, state: TrainerState, keys: list[list[str]]) -> None:
    """One row of RUN/sample_keys.jsonl: the step's keys from every rank, micro-batch j by j (ranks hold
    consecutive micro-batches, so rank order is j order)."""
    mine = [k for batch in keys for k in batch]
    parts = gather_object([mine]) if s.world > 1 else [mine]
    if s.accelerator.is_main_process:
        s.run.append_sample_keys({"epoch": state.epoch, "step": state.global_step, "keys": sum(parts, [])})


def after_step(s: Session, state: TrainerState, running: RunningLoss, bar, stop: StopRequested) -> Optional[str]:
    """Logging, mid-epoch checkpoints and the step limit; why to stop now, or None."""
    cfg = s.cfg
    if state.global_step % cfg.train.log_every_steps == 0 or state.batch_in_epoch == s.batches_per_epoch:
        mean_loss, lr = running.check(), s.scheduler.get_last_lr()[0]
        epoch = state.epoch + state.batch_in_epoch / s.batches_per_epoch
        s.steps.log(state.global_step, epoch, mean_loss, lr)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
    # after every step: "the current step finishes", no more; and the slowest rank's clock, in the same collective
    stop_flag, elapsed_s = agreed_max(s.accelerator, [float(stop.requested), s.timer.elapsed_s()])
    if stop_flag:
        return "a stop signal"
    every_steps, every_minutes = cfg.train.checkpoint_every_steps, cfg.train.checkpoint_every_minutes
    if state.batch_in_epoch < s.batches_per_epoch and checkpoint_due(
        state.global_step, every_steps, elapsed_s, every_minutes
    ):
        running.check()
        running.flush()
        checkpoint(s, state)
    if cfg.train.max_steps and state.global_step >= cfg.train.max_steps:
        return f"train.max_steps={cfg.train.max_steps}"
    return None


def validate(s: Session) -> EvalResult:
    """The model that would be saved (the EMA's when there is one), on the whole val split.

    Its BatchNorm statistics are merged first (``norm_slots``, ``train.dist_bn``): the same on every rank,
    so the logged val metrics are those of the model file the main process writes, whatever the process count.
    """
    if s.ema is None:
        s.norms.merge(s.accelerator, s.cfg.train.dist_bn)
    elif s.world > 1 and s.cfg.train.dist_bn != "none":  # the EMA's own statistics (averaged from the model's)
        sync_norm_statistics(s.accelerator, s.eval_model, s.cfg.train.dist_bn)
    cfg = s.cfg
    return evaluate_split(
        s.accelerator,
        s.eval_model,
        cfg.data,
        s.info,
        "val",
        batch_size=cfg.eval.batch_size,
        channels_last=cfg.model.channels_last,
    )


def epoch_row(s: Session, state: TrainerState, outcome: EpochOutcome, val: EvalResult) -> EpochRow:
    """The epoch's metrics.jsonl row; the counts are summed over every process."""
    accelerator = s.accelerator
    skipped = int(accelerator.reduce(torch.tensor(state.epoch_skipped, device=accelerator.device), "sum").item())
    retries = int(accelerator.reduce(torch.tensor(outcome.retries, device=accelerator.device), "sum").item())
    seconds = max(outcome.seconds, 1e-9)
    return EpochRow(
        epoch=state.epoch + 1,
        step=state.global_step,
        lr=s.scheduler.get_last_lr()[0],
        train_loss=state.epoch_loss_sum / max(1, state.epoch_loss_count),
        val_loss=val.loss,
        val_acc=val.accuracy,
        val_auc=val.auc,
        img_per_s=outcome.batches_done * s.cfg.train.batch_size * s.world / seconds,
        data_wait_frac=outcome.data_wait / seconds,
        epoch_seconds=outcome.seconds,
        peak_mem_gib=(torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None,
        skipped_samples=skipped,
        val_skipped_samples=val.skipped,
        read_retries=retries,
        val_top5=val.top5,
        val_balanced_acc=val.balanced_accuracy,
    )


def epoch_line(cfg: Config, row: EpochRow, improved: bool) -> str:
    """The log's one line per epoch; the monitored metric is added when the line would not show it."""
    monitor = cfg.train.monitor
    return (
        f"epoch {row.epoch}/{cfg.train.epochs} | train_loss {row.train_loss:.4f} | val_loss {row.val_loss:.4f} | "
        f"val_acc {row.val_acc:.4f} | val_auc {format_number(row.val_auc)} | lr {row.lr:.2e} | "
        f"{row.img_per_s:.1f} img/s | data_wait {row.data_wait_frac:.0%}"
        + (f" | skipped {row.skipped_samples}" if row.skipped_samples else "")
        + (f" | retries {row.read_retries}" if row.read_retries else "")
        + (f" | {monitor} {format_number(monitor_value(row, monitor))}" if monitor in SHOWN_APART else "")
        + (" | best" if improved else "")
    )


def end_epoch(s: Session, state: TrainerState, outcome: EpochOutcome, val: EvalResult) -> None:
    """Log the epoch's row, keep the best (by ``train.monitor``) and the last model, checkpoint when due."""
    cfg, accelerator, epoch = s.cfg, s.accelerator, state.epoch
    row = epoch_row(s, state, outcome, val)
    improved = record_epoch(state, row, cfg.train)  # the same gathered numbers on every rank: the same decision
    if cfg.train.early_stop_patience:  # and the main process's word makes it certain (no rank stops alone)
        state.stopped_early_at = main_process_value(accelerator, state.stopped_early_at or 0) or None
    state.start_next_epoch()

    def write_epoch() -> None:
        s.run.append_history(row)
        meta = model_metadata(
            architecture(s.eval_model),
            class_names=class_names(s.info),
            image_size=cfg.data.image_size,
            resize_size=cfg.data.resize_size,
            mean=cfg.data.mean,
            std=cfg.data.std,
            extra={
                "epoch": epoch + 1,
                "val_metrics": {"loss": val.loss, "acc": val.accuracy, "auc": val.auc},
                "config": s.config_dict,
            },
        )
        save_model_file(s.eval_model, s.run.last_model, meta)
        if improved or not s.run.model.exists():
            save_model_file(s.eval_model, s.run.model, meta)

    keep_lease(s.accelerator, s.run, s.cfg.output.run_name)
    together(accelerator, write_epoch if accelerator.is_main_process else None)  # a full disk stops every rank
    s.steps.log_epoch(dataclasses.asdict(row), state.global_step)
    s.log(epoch_line(cfg, row, improved))
    if state.stopped_early_at is not None:
        s.log(early_stop_line(state, cfg.train))
    every = cfg.train.checkpoint_every_epochs
    last = state.epoch == cfg.train.epochs or state.stopped_early_at is not None
    minutes = cfg.train.checkpoint_every_minutes  # due at the epoch's last step: saved here, after validation
    by_time = bool(minutes) and checkpoint_due(
        state.global_step, 0, agreed_max(accelerator, [s.timer.elapsed_s()])[0], minutes
    )
    if (every and (state.epoch % every == 0 or last)) or by_time:
        checkpoint(s, state)


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: Config) -> dict:
    """Train, evaluate and report one run; a stop signal or ``train.max_steps`` leaves it checkpointed."""
    try:
        s = setup(cfg)
    except Exception as err:  # a full disk while the run folder is made
        full = disk_full_error(err, Path(cfg.output.dir), cfg.output.run_name)
        if full is None:
            raise
        raise full from None
    try:
        state = start(s)
        with StopRequested() as stop:
            while state.epoch < s.cfg.train.epochs and state.stopped_early_at is None:
                outcome = train_one_epoch(s, state, stop)
                if outcome.stopped_by is not None:
                    return leave_early(s, state, outcome.stopped_by, stop.signum)
                end_epoch(s, state, outcome, validate(s))
                if any_process(s.accelerator, stop.requested):  # a stop during validation: no test, no report
                    return leave_early(s, state, "a stop signal", stop.signum)
        return finish(s, state)
    except Exception as err:  # a full disk mid-run: every file is written atomically, nothing finished is damaged
        full = disk_full_error(err, s.run.root, s.run.root.name) or lost_peer_error(err, cfg.train.collective_timeout_s)
        if full is None:
            raise
        raise full from None
    finally:
        if s.accelerator.is_main_process:
            unlock(s.run)


def leave_early(s: Session, state: TrainerState, why: str, signum: Optional[int]) -> dict:
    """Checkpoint where the loop is and stop; resuming continues exactly here."""
    path = checkpoint(s, state)
    s.steps.close()
    s.log(
        f"stopped by {why} at epoch {min(state.epoch + 1, s.cfg.train.epochs)}, step {state.global_step}; checkpoint {path}. "
        f"Resume with the same command plus train.resume=auto output.run_name={s.cfg.output.run_name}"
    )
    s.tracker.finish()
    if s.accelerator.is_main_process:
        unlock(s.run)
    s.accelerator.wait_for_everyone()  # leave together: a launcher may end the others when the first one exits
    s.accelerator.end_training()
    return {"run_dir": str(s.run.root), "stopped": why, "global_step": state.global_step, "signal": signum}


def finish(s: Session, state: TrainerState) -> dict:
    """Check the ranks agree, then evaluate the best model on val and test and report."""
    checksums = rank_weight_checksums(s.accelerator, s.raw_model)
    if len(set(checksums)) > 1:
        s.log(f"warning: model weights differ across processes (checksums {checksums}); distributed training diverged")
    keep_lease(s.accelerator, s.run, s.cfg.output.run_name)
    if s.accelerator.is_main_process:
        best_row = next((r for r in s.run.read_history() if r.get("epoch") == state.best_epoch), {})
        s.run.write_final(
            {
                "global_step": state.global_step,
                "best_val_auc": best_row.get("val_auc"),  # the chosen model's, whatever chose it
                **final_fields(state, s.cfg.train),
                "num_processes": s.world,
                "rank_weight_checksums": checksums,
            }
        )
    s.tracker.summary({f"best/{state.monitor}": state.best_value, "best/epoch": state.best_epoch})
    if state.stopped_early_at is not None:
        s.tracker.summary({"early_stop/epoch": state.stopped_early_at})
    s.steps.release()  # the run is complete: every held row is final
    s.steps.close()
    summary = finish_run(s.accelerator, s.cfg, s.info, s.run, s.tracker)
    tracker_info = s.tracker.finish()
    if s.accelerator.is_main_process:
        print_final(s.run, state, summary, tracker_info)
    s.accelerator.end_training()
    return {"run_dir": str(s.run.root), **final_fields(state, s.cfg.train), **summary}


def print_final(run: RunDir, state: TrainerState, summary: dict, tracker_info: dict) -> None:
    print(f"done: best {state.monitor} {format_number(state.best_value)} at epoch {state.best_epoch}", flush=True)
    if state.stopped_early_at is not None:
        print(f"  stopped early at epoch {state.stopped_early_at}, best at {state.best_epoch}", flush=True)
    for split, metrics in summary.get("splits", {}).items():
        print(
            f"  {split}: n={metrics.get('num_samples')} acc {format_number(metrics.get('accuracy'))} "
            f"auc {format_number(metrics.get('roc_auc'))}",
            flush=True,
        )
    print(f"  model:  {run.model}", flush=True)
    if run.report.exists():
        print(f"  report: {run.report}", flush=True)
    if tracker_info.get("run_dir"):
        print(f"  W&B run: {tracker_info['run_dir']}", flush=True)
    if tracker_info.get("sync_command"):
        print(f"  upload it with: {tracker_info['sync_command']}", flush=True)
    if tracker_info.get("url"):
        print(f"  W&B: {tracker_info['url']}", flush=True)
