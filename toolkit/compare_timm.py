"""Prove our hand-written ResNet equal to timm's: same weights in, same numbers out.

Builds timm's model with random weights (no download), copies them into ours with strict=True
(and back), then compares parameter counts, per-stage output shapes, eval-mode outputs, and
one SGD training step (loss, every gradient, outputs afterwards). Finally it times a training
step of both, interleaved in this process. Exit code 1 on any mismatch.

timm's default init zeroes each residual branch's last BatchNorm and leaves every norm at
weight 1, bias 0, mean 0, var 1: a forward pass would then skip every branch and the branch
gradients would all be zero, so a wrong branch could never show. The weights are therefore
perturbed first: random norm affines, and running statistics measured on a calibration batch.

Default input: 224 px on CUDA, 128 px on CPU (a resnet101 step at 224 px takes seconds there),
batch 2; the dtype is float32 throughout, with TF32 turned off on CUDA for the comparisons.

    python -m toolkit.compare_timm --arch resnet101 --image-size 224 --json
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.bench.model import (
    BenchStep,
    bench_accelerator,
    check_input_size,
    device_name,
    synthetic_batch,
    time_interleaved,
)
from toolkit.cli import ArgumentParser, run_cli
from toolkit.device import resolve_device
from toolkit.errors import UsageError
from toolkit.models import MODEL_ARCHS, count_parameters, create_model

STAGES = ("maxpool", "layer1", "layer2", "layer3", "layer4")  # "maxpool" output = the stem's output
SGD_LR = 0.1


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m toolkit.compare_timm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m toolkit.compare_timm --arch resnet101 --device cpu --steps 0",
    )
    parser.add_argument("--arch", default="resnet101", choices=MODEL_ARCHS, help="default: %(default)s")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier width (default: %(default)s)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="input side in px (default: 224 on CUDA, 128 on CPU)"
    )
    parser.add_argument("--batch-size", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    parser.add_argument(
        "--atol",
        type=float,
        default=1e-5,
        help="largest allowed absolute difference of outputs and loss; gradients are allowed "
        "atol x max(1, largest gradient) (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="timed training steps per model; 0 skips timing (default: %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    return parser.parse_args(argv)


@contextmanager
def exact_float32() -> Iterator[None]:
    """No TF32 and deterministic cuDNN kernels, so both models run the very same arithmetic."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        ) = saved


@torch.no_grad()
def perturb_norms(model: nn.Module, calibration: torch.Tensor, generator: torch.Generator) -> None:
    """Random norm affines, then running statistics measured on ``calibration`` (see module doc)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
    model.train()
    model(calibration)
    for m in norms:
        m.momentum = 0.1


def stage_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """Output shape of the stem, each stage and the logits, read by forward hooks."""
    shapes: dict[str, list[int]] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _module, _inputs, out, name=name: shapes.__setitem__(
                "stem" if name == "maxpool" else name, list(out.shape)
            )
        )
        for name in STAGES
    ]
    try:
        with torch.no_grad():
            shapes["logits"] = list(model(x).shape)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def train_step_differences(ours: nn.Module, ref: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One SGD step on both models; how far apart are loss, gradients and the outputs afterwards?

    Not a training step: it stops between backward and update to compare the gradients, which
    ``TrainStep`` (timed below, as the loop runs it) never exposes.
    """
    results = {}
    for name, model in (("ours", ours), ("timm", ref)):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=SGD_LR, momentum=0.9)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        optimizer.step()
        model.eval()
        with torch.no_grad():
            after = model(x)
        results[name] = (logits.detach(), loss.detach(), grads, after)
    (logits_o, loss_o, grads_o, after_o), (logits_t, loss_t, grads_t, after_t) = results["ours"], results["timm"]
    return {
        "loss_ours": loss_o.item(),
        "loss_timm": loss_t.item(),
        "loss_abs_diff": abs(loss_o.double().item() - loss_t.double().item()),
        "train_logits_max_abs_diff": max_abs_diff(logits_o, logits_t),
        "grad_max_abs_diff": max(max_abs_diff(grads_o[n], grads_t[n]) for n in grads_t),
        "grad_max_abs": max(g.abs().max().item() for g in grads_t.values()),
        "after_step_max_abs_diff": max_abs_diff(after_o, after_t),
    }


def compare(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    image_size = args.image_size or (224 if device.type == "cuda" else 128)
    check_input_size(args.batch_size, image_size)
    if args.num_classes < 1:
        raise UsageError(f"--num-classes must be at least 1, got {args.num_classes}")
    if args.steps < 0 or args.warmup < 0:
        raise UsageError(f"--steps and --warmup must be 0 or more, got {args.steps} and {args.warmup}")
    import timm  # slow to import (it pulls in torchvision): only once the arguments are known good

    torch.manual_seed(args.seed)
    ref = timm.create_model(args.arch, pretrained=False, num_classes=args.num_classes)
    ours = create_model(args.arch, num_classes=args.num_classes)
    report: dict = {
        "arch": args.arch,
        "num_classes": args.num_classes,
        "batch_size": args.batch_size,
        "image_size": image_size,
        "dtype": "float32",
        "device": device.type,
        "device_name": device_name(device),
        "seed": args.seed,
        "atol": args.atol,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "params": {"ours": count_parameters(ours), "timm": count_parameters(ref)},
    }
    checks = report["checks"] = {"param_count": report["params"]["ours"] == report["params"]["timm"]}
    try:
        ours.load_state_dict(ref.state_dict(), strict=True)
        ref.load_state_dict(ours.state_dict(), strict=True)
        checks["strict_load_both_ways"] = True
    except RuntimeError as err:
        checks["strict_load_both_ways"] = False
        report["load_error"] = str(err).splitlines()[:6]
        report["ok"] = False
        return report  # nothing below means anything without the same weights

    generator = torch.Generator().manual_seed(args.seed)
    calibration = torch.randn(max(args.batch_size, 8), 3, image_size, image_size, generator=generator)
    perturb_norms(ref, calibration, generator)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.to(device)
    ref.to(device)
    x, y = synthetic_batch(args.batch_size, image_size, args.num_classes, device, seed=args.seed + 1)

    with exact_float32():
        ours.eval()
        ref.eval()
        report["stage_shapes"] = {"ours": stage_shapes(ours, x), "timm": stage_shapes(ref, x)}
        checks["stage_shapes"] = report["stage_shapes"]["ours"] == report["stage_shapes"]["timm"]
        with torch.no_grad():
            logits_ours, logits_ref = ours(x), ref(x)
        report["eval_max_abs_diff"] = max_abs_diff(logits_ours, logits_ref)
        report["eval_logits_max_abs"] = logits_ref.abs().max().item()
        checks["eval_outputs"] = report["eval_max_abs_diff"] <= args.atol
        train = report["train_step"] = train_step_differences(ours, ref, x, y)
        checks["train_loss"] = train["loss_abs_diff"] <= args.atol
        checks["train_outputs"] = train["train_logits_max_abs_diff"] <= args.atol
        checks["gradients"] = train["grad_max_abs_diff"] <= args.atol * max(1.0, train["grad_max_abs"])
        checks["outputs_after_step"] = train["after_step_max_abs_diff"] <= args.atol

    report["throughput"] = None
    if args.steps > 0:
        accelerator = bench_accelerator("fp32", device)
        timed = time_interleaved(
            {"ours": BenchStep(accelerator, ours, x, y), "timm": BenchStep(accelerator, ref, x, y)},
            images_per_step=args.batch_size,
            iters=args.steps,
            warmup=args.warmup,
            device=device,
            desc=f"timing {args.arch}",
        )
        report["throughput"] = {
            "what": "train step (forward, backward, SGD update), fp32, interleaved; img/s from the median step",
            "steps": args.steps,
            "warmup": args.warmup,
            "ours_img_per_s": timed["ours"]["img_per_s"],
            "timm_img_per_s": timed["timm"]["img_per_s"],
            "ours_img_per_s_mean": timed["ours"]["img_per_s_mean"],
            "timm_img_per_s_mean": timed["timm"]["img_per_s_mean"],
            "ratio_ours_over_timm": round(timed["ours"]["img_per_s"] / timed["timm"]["img_per_s"], 4),
        }
    report["ok"] = all(checks.values())
    return report


def print_report(r: dict) -> None:
    def status(check: str) -> str:
        return "OK" if r["checks"].get(check) else "MISMATCH"

    print(
        f"compare_timm: {r['arch']} ({r['num_classes']} classes), batch {r['batch_size']} x {r['image_size']} px, "
        f"{r['dtype']} on {r['device']} ({r['device_name']}); torch {r['torch_version']}, timm {r['timm_version']}"
    )
    print(f"parameters        ours {r['params']['ours']:,}  timm {r['params']['timm']:,}  {status('param_count')}")
    print(f"strict load       timm -> ours and ours -> timm  {status('strict_load_both_ways')}")
    if "load_error" in r:
        print("\n".join("    " + line for line in r["load_error"]))
        return
    for stage in r["stage_shapes"]["timm"]:
        ours, timm_shape = r["stage_shapes"]["ours"].get(stage), r["stage_shapes"]["timm"][stage]
        print(
            f"  {stage:<8} ours {str(ours):<20} timm {str(timm_shape):<20} {'OK' if ours == timm_shape else 'MISMATCH'}"
        )
    t = r["train_step"]
    print(
        f"eval outputs      max |diff| {r['eval_max_abs_diff']:.3e} (logits up to {r['eval_logits_max_abs']:.3g})  "
        f"{status('eval_outputs')}"
    )
    print(
        f"train loss        ours {t['loss_ours']:.6f}  timm {t['loss_timm']:.6f}  |diff| {t['loss_abs_diff']:.3e}  "
        f"{status('train_loss')}"
    )
    print(f"train outputs     max |diff| {t['train_logits_max_abs_diff']:.3e}  {status('train_outputs')}")
    print(
        f"gradients         max |diff| {t['grad_max_abs_diff']:.3e} (largest gradient {t['grad_max_abs']:.3g})  "
        f"{status('gradients')}"
    )
    print(f"after SGD step    max |diff| {t['after_step_max_abs_diff']:.3e}  {status('outputs_after_step')}")
    if r["throughput"]:
        tp = r["throughput"]
        print(
            f"throughput        {tp['what']}, {tp['steps']} steps after {tp['warmup']} warmup: "
            f"ours {tp['ours_img_per_s']:.2f} img/s, timm {tp['timm_img_per_s']:.2f} img/s, "
            f"ratio ours/timm {tp['ratio_ours_over_timm']:.3f}"
        )
    print(f"result            {'OK: identical to timm' if r['ok'] else 'MISMATCH'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    report = compare(args)
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        print_report(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    run_cli(main)
