"""Training-step throughput of our ResNet against timm's, same arch, in the same process.

Both models get timm's weights, the same synthetic batch, dtype, memory format and optimizer,
and their steps are interleaved (ours, timm, timm, ours, ...) so that clock boosts, thermal
throttling or another process on the machine hit both alike. img/s comes from the median step
time, which a stall caused by another process does not move; the mean over all steps is
reported too. The timing helpers here are also used by ``python -m toolkit.compare_timm``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from toolkit.cli import progress
from toolkit.device import resolve_device
from toolkit.errors import UsageError
from toolkit.models import MODEL_ARCHS, count_parameters, create_model
from toolkit.training.step import TrainStep

AUTOCAST_DTYPES: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SGD_LR = 0.01
SGD_MOMENTUM = 0.9

# Defaults that finish in a minute or two: a GPU step of resnet101 at batch 256 takes a fraction
# of a second, a CPU step at batch 8 several seconds.
DEVICE_DEFAULTS = {
    "cuda": {"batch_size": 256, "steps": 20, "warmup": 5},
    "cpu": {"batch_size": 8, "steps": 5, "warmup": 2},
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_input_size(batch_size: int, image_size: int) -> None:
    """Reject sizes that cannot train: BatchNorm needs more than one value per channel at layer4."""
    if batch_size < 1 or image_size < 1:
        raise UsageError(f"batch size and image size must be positive, got {batch_size} and {image_size}")
    side = -(-image_size // 32)  # every one of the five stride-2 ops rounds up
    if batch_size * side * side < 2:
        raise UsageError(
            f"batch {batch_size} at {image_size} px leaves one value per channel at layer4, "
            "which BatchNorm cannot train on; use --batch-size 2 or more, or --image-size 33 or more"
        )


def check_dtype(dtype: str, device: torch.device) -> None:
    if dtype not in AUTOCAST_DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of: {', '.join(AUTOCAST_DTYPES)}")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("bf16 needs an Ampere or newer GPU; use --dtype fp16 or fp32")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # our --dtype names -> Accelerate's


def bench_accelerator(dtype: str, device: torch.device) -> Accelerator:
    """The Accelerator a training run on ``device`` would have (mixed precision, fp16 loss scaling)."""
    return Accelerator(mixed_precision=PRECISION[dtype], cpu=device.type == "cpu")


class BenchStep:
    """The training loop's own ``TrainStep`` (SGD here) on a batch that can be swapped between calls.

    Callable with no arguments so that several models can be timed by the same loop.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(images.device, memory_format=self.memory_format).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM)
        prepared, optimizer = accelerator.prepare(model, optimizer)
        forward = torch.compile(prepared) if compile else prepared
        self.step = TrainStep(accelerator, forward, optimizer, F.cross_entropy)
        self.images, self.labels = images.contiguous(memory_format=self.memory_format), labels

    def __call__(self) -> None:
        self.step(self.images, self.labels)


def synthetic_batch(
    batch_size: int, image_size: int, num_classes: int, device: torch.device, in_chans: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, in_chans, image_size, image_size, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def time_interleaved(
    steps: Mapping[str, Callable[[], None]],
    *,
    images_per_step: int,
    iters: int,
    warmup: int,
    device: torch.device,
    desc: str = "timing",
) -> dict[str, dict]:
    """Time each step function ``iters`` times after ``warmup`` untimed calls, alternating the order.

    Round i runs the steps in order, round i+1 in reverse, so neither side always goes first.
    Returns, per name: img/s from the median step time (robust to a stall caused by another
    process on a shared machine), img/s over the total time, the median step time, and (on CUDA)
    the peak memory allocated during that model's steps, which includes the other models' weights.
    """
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = {name: 0 for name in names}
    cuda = device.type == "cuda"
    for round_index in progress(range(warmup + iters), total=warmup + iters, desc=desc, unit="round"):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
                if cuda:
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
    return {
        name: {
            "img_per_s": round(images_per_step / statistics.median(times[name]), 3),
            "img_per_s_mean": round(images_per_step * len(times[name]) / sum(times[name]), 3),
            "step_ms_median": round(1000 * statistics.median(times[name]), 3),
            "peak_gpu_mem_gib": round(peaks[name] / 2**30, 3) if cuda else None,
        }
        for name in names
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", default="resnet101", choices=MODEL_ARCHS, help="model to compare (default: %(default)s)"
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier width (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=tuple(AUTOCAST_DTYPES),
        help="fp32, or autocast to bf16/fp16 (fp16 is very slow on CPU) (default: %(default)s)",
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile both models (warmup absorbs compile time)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: 256 on CUDA, 8 on CPU)")
    parser.add_argument(
        "--image-size", type=int, default=224, help="square input side in pixels (default: %(default)s)"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default: 20 on CUDA, 5 on CPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per model first (default: 5 on CUDA, 2 on CPU)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights and the synthetic batch (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> dict:
    import timm

    device = resolve_device(args.device)
    defaults = DEVICE_DEFAULTS[device.type]
    batch_size = defaults["batch_size"] if args.batch_size is None else args.batch_size
    steps = defaults["steps"] if args.steps is None else args.steps
    warmup = defaults["warmup"] if args.warmup is None else args.warmup
    check_input_size(batch_size, args.image_size)
    check_dtype(args.dtype, device)
    if steps < 1 or warmup < 0:
        raise UsageError(f"--steps must be at least 1 and --warmup at least 0, got {steps} and {warmup}")
    if args.num_classes < 1:
        raise UsageError(f"--num-classes must be at least 1, got {args.num_classes}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(args.seed)
    reference = timm.create_model(args.arch, pretrained=False, num_classes=args.num_classes)
    ours = create_model(args.arch, num_classes=args.num_classes)
    ours.load_state_dict(reference.state_dict(), strict=True)  # same weights, same numerics
    images, labels = synthetic_batch(batch_size, args.image_size, args.num_classes, device, seed=args.seed)
    accelerator = bench_accelerator(args.dtype, device)
    step_options = {"channels_last": args.channels_last, "compile": args.compile}
    results = time_interleaved(
        {
            "ours": BenchStep(accelerator, ours, images, labels, **step_options),
            "timm": BenchStep(accelerator, reference, images, labels, **step_options),
        },
        images_per_step=batch_size,
        iters=steps,
        warmup=warmup,
        device=device,
        desc=f"bench model {args.arch}",
    )
    return {
        "benchmark": "model",
        "arch": args.arch,
        "ours_img_per_s": results["ours"]["img_per_s"],
        "timm_img_per_s": results["timm"]["img_per_s"],
        "ratio_ours_over_timm": round(results["ours"]["img_per_s"] / results["timm"]["img_per_s"], 4),
        "ours_img_per_s_mean": results["ours"]["img_per_s_mean"],
        "timm_img_per_s_mean": results["timm"]["img_per_s_mean"],
        "ours_step_ms_median": results["ours"]["step_ms_median"],
        "timm_step_ms_median": results["timm"]["step_ms_median"],
        "peak_gpu_mem_gib": (
            {name: r["peak_gpu_mem_gib"] for name, r in results.items()} if device.type == "cuda" else None
        ),
        "num_params": count_parameters(ours),
        "num_classes": args.num_classes,
        "batch_size": batch_size,
        "image_size": args.image_size,
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "optimizer": f"SGD(lr={SGD_LR}, momentum={SGD_MOMENTUM})",
        "steps": steps,
        "warmup": warmup,
        "seed": args.seed,
        "device": device.type,
        "device_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32) if device.type == "cuda" else None,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
