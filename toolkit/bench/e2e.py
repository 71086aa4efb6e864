"""Training img/s reading real shards against synthetic in-memory input, same model, same run.

The ratio says whether the input pipeline starves the model: 1.0 means the loader keeps up;
0.6 means the accelerator waits for data 40% of the time. ``data_wait_frac`` is the share of
wall time the loop spent waiting for the next batch, as the training loop logs it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from typing import Iterator

import torch

from toolkit.bench.model import (
    AUTOCAST_DTYPES,
    BenchStep,
    bench_accelerator,
    check_dtype,
    check_input_size,
    device_name,
    synchronize,
    synthetic_batch,
)
from toolkit.cli import progress
from toolkit.config import DataConfig, resolve_normalization
from toolkit.data import load_info, make_train_loader
from toolkit.data.device_augment import batch_to_device
from toolkit.device import resolve_device
from toolkit.errors import UsageError, usage_errors
from toolkit.formats import class_names
from toolkit.models import MODEL_ARCHS, create_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", default="shards", help="shards folder with info.json (default: %(default)s)")
    parser.add_argument("--split", default="train", help="split to read (default: %(default)s)")
    parser.add_argument("--arch", default="resnet101", choices=MODEL_ARCHS, help="default: %(default)s")
    parser.add_argument("--blocks-per-stage", type=int, nargs=4, default=None, help="override the preset's depth")
    parser.add_argument("--base-width", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    parser.add_argument("--dtype", default="fp32", choices=tuple(AUTOCAST_DTYPES), help="default: %(default)s")
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and input")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warmup absorbs compile time)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 8 on CPU")
    parser.add_argument("--image-size", type=int, default=224, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: all cores)")
    parser.add_argument(
        "--decode",
        default="cpu",
        choices=("cpu", "gpu"),
        help="cpu: workers decode + augment; gpu: workers ship JPEG bytes, nvJPEG decodes (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per input (default: 30 on CUDA, 4 on CPU)")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help="also profile 10 real-input steps with torch.profiler and write the top ops table to FILE",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 1 on CPU)")


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (256 if cuda else 8)
    steps = args.steps or (30 if cuda else 4)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    check_input_size(batch_size, args.image_size)
    check_dtype(args.dtype, device)
    if steps < 1 or warmup < 0 or workers < 0:
        raise UsageError("--steps must be >= 1, --warmup and --workers >= 0")
    if cuda:
        torch.backends.cudnn.benchmark = True

    info = load_info(args.shards)
    cfg = resolve_normalization(
        DataConfig(
            shards=args.shards,
            image_size=args.image_size,
            resize_size=max(args.image_size, round(args.image_size * 255 / 224)),
            num_workers=workers,
            persistent_workers=True,
            decode=args.decode,
        ),
        info,
    )
    loader = make_train_loader(cfg, info, batch_size=batch_size, rank=0, world_size=1, seed=0)

    torch.manual_seed(0)
    num_classes = len(class_names(info))
    with usage_errors("--blocks-per-stage/--base-width"):
        model = create_model(
            args.arch, num_classes=num_classes, blocks_per_stage=args.blocks_per_stage, base_width=args.base_width
        )
    images, labels = synthetic_batch(batch_size, args.image_size, num_classes, device)
    step = BenchStep(
        bench_accelerator(args.dtype, device),
        model,
        images,
        labels,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    synthetic_s = time_synthetic(step, device, warmup, steps)
    batches = endless(loader)
    real_s, wait, done = time_real(step, batches, cfg, device, warmup, steps)
    if args.profile:
        profile_steps(step, batches, cfg, device, step.memory_format, args.profile)

    synthetic_ips = steps * batch_size / synthetic_s
    real_ips = done * batch_size / real_s
    return {
        "benchmark": "e2e",
        "arch": args.arch,
        "real_img_per_s": round(real_ips, 2),
        "synthetic_img_per_s": round(synthetic_ips, 2),
        "ratio_real_over_synthetic": round(real_ips / synthetic_ips, 4),
        "data_wait_frac": round(wait / real_s, 4),
        "steps_per_epoch": len(loader),
        "batch_size": batch_size,
        "image_size": args.image_size,
        "workers": workers,
        "decode": args.decode,
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "steps": steps,
        "warmup": warmup,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None,
        "shards": args.shards,
        "dataset": info.get("dataset"),
        "device": device.type,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def time_synthetic(step: BenchStep, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` steps on the same batch, already on the device (warmup untimed)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in progress(range(steps), desc="synthetic input", unit="step"):
        step()
    synchronize(device)
    return time.perf_counter() - start


def endless(loader) -> Iterator[dict]:
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_real(
    step: BenchStep, batches: Iterator[dict], cfg, device: torch.device, warmup: int, steps: int
) -> tuple[float, float, int]:
    """(seconds, of which waiting for data, steps timed): decode and augment in the loader, the loop's copy."""
    wait, done, start = 0.0, 0, time.perf_counter()
    for index in progress(range(warmup + steps), desc="real shards", unit="step"):
        if index == warmup:
            synchronize(device)
            start, wait = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        step.images = batch_to_device(batch, cfg, device, memory_format=step.memory_format, seed=index)
        step.labels = batch["label"].to(device, non_blocking=True)
        step()
        done += index >= warmup
    synchronize(device)
    return time.perf_counter() - start, wait, done


def profile_steps(
    step: BenchStep, batches, cfg, device: torch.device, memory_format, path: str, num_steps: int = 10
) -> None:
    """Where a real-input step spends its time: loader wait, copies, kernels (torch.profiler table)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for index in range(num_steps):
            with record_function("wait_for_batch"):
                batch = next(batches)
            with record_function("batch_to_device"):
                step.images = batch_to_device(batch, cfg, device, memory_format=memory_format, seed=index)
                step.labels = batch["label"].to(device, non_blocking=True)
            with record_function("train_step"):
                step()
        synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(prof.key_averages().table(sort_by=sort, row_limit=40))
