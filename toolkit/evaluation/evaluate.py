"""Exact evaluation of a model on one split, on any number of processes.

    python -m toolkit.evaluate --model RUN/model.safetensors --shards shards --split test [--out DIR]
    accelerate launch --num_processes 2 -m toolkit.evaluate --model ... --split test

Each process predicts its share of the split and keeps the results locally; one gather at the
end collects them, duplicates are dropped by sample key, and the count is checked against
``info.json``. So 1 and N processes give identical numbers, and a sample that went missing or
was counted twice is an error, not a silently wrong metric.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


import numpy as np
import torch
import torch.nn.functional as F

from toolkit.cli import ArgumentParser, DataError, UsageError, progress, run_cli
from toolkit.fileio import atomic_write_json, atomic_write_text

PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"


@dataclass
class EvalResult:
    split: str
    keys: list[str]
    labels: np.ndarray
    logits: np.ndarray
    breeds: list[str]
    skipped: int = 0
    loss: float = float("nan")
    accuracy: float = float("nan")
    auc: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def prob_dog(self) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits), dim=1)[:, 1].numpy()


@torch.no_grad()
def evaluate_split(accelerator, model: torch.nn.Module, cfg, info: dict, split: str, mean, std) -> EvalResult:
    """Predict every sample of ``split`` once across all processes; every process gets the result."""
    from accelerate.utils import gather_object
    from sklearn.metrics import roc_auc_score

    from toolkit.data.loader import make_eval_loader, split_size

    data_cfg = dataclasses.replace(cfg.data, mean=list(mean), std=list(std))  # the model's own normalization
    loader = make_eval_loader(data_cfg, info, split, batch_size=cfg.eval.batch_size,
                              rank=accelerator.process_index, world_size=accelerator.num_processes)
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    keys, labels, logits, breeds, skipped = [], [], [], [], 0
    try:
        with accelerator.autocast():
            for batch in progress(loader, desc=f"eval {split}", unit="batch", leave=False):
                skipped += int(batch.get("skipped", 0))
                if len(batch["key"]) == 0:
                    continue
                images = batch["image"].to(accelerator.device, non_blocking=True).contiguous(memory_format=memory_format)
                logits.append(model(images).float().cpu())
                labels.append(batch["label"].cpu())
                keys.extend(batch["key"])
                breeds.extend(batch.get("breed", [""] * len(batch["key"])))
    finally:
        model.train(was_training)
    local = {
        "keys": keys, "breeds": breeds, "skipped": skipped,
        "labels": torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64),
        "logits": torch.cat(logits).numpy() if logits else np.zeros((0, cfg.model.num_classes), dtype=np.float32),
    }
    parts = gather_object([local]) if accelerator.num_processes > 1 else [local]
    result = merge_predictions(split, parts, expected=split_size(info, split))
    logits_t = torch.from_numpy(result.logits)
    labels_t = torch.from_numpy(result.labels).long()
    result.loss = float(F.cross_entropy(logits_t, labels_t)) if len(labels_t) else float("nan")
    result.accuracy = float((logits_t.argmax(1) == labels_t).float().mean()) if len(labels_t) else float("nan")
    result.auc = float(roc_auc_score(result.labels, result.prob_dog)) if len(set(result.labels.tolist())) == 2 else None
    return result


def merge_predictions(split: str, parts: list[dict], expected: int) -> EvalResult:
    """Concatenate per-process results, drop duplicate keys, and check nothing is missing."""
    seen: dict[str, int] = {}
    keys, labels, logits, breeds = [], [], [], []
    skipped = sum(int(p["skipped"]) for p in parts)
    for part in parts:
        for i, key in enumerate(part["keys"]):
            if key in seen:
                continue
            seen[key] = len(keys)
            keys.append(key)
            labels.append(part["labels"][i])
            logits.append(part["logits"][i])
            breeds.append(part["breeds"][i])
    if len(keys) + skipped != expected:
        raise DataError(f"evaluation of split {split!r} counted {len(keys)} samples + {skipped} skipped, but info.json "
                        f"lists {expected}; the shards do not match their manifest (run python -m toolkit.make_shards --verify)")
    order = np.argsort(np.array(keys, dtype=object)) if keys else np.zeros(0, dtype=np.int64)
    return EvalResult(
        split=split,
        keys=[keys[i] for i in order],
        labels=np.array([labels[i] for i in order], dtype=np.int64),
        logits=np.stack([logits[i] for i in order]) if keys else np.zeros((0, 2), dtype=np.float32),
        breeds=[breeds[i] for i in order],
        skipped=skipped,
    )


def predictions_csv(result: EvalResult, threshold: float) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "label", "prob_dog", "pred", "breed"])
    for key, label, prob, breed in zip(result.keys, result.labels, result.prob_dog, result.breeds):
        writer.writerow([key, int(label), f"{prob:.6f}", int(prob >= threshold), breed])
    return buffer.getvalue()


def write_evaluation(result: EvalResult, out_dir: Path, *, threshold: float, class_names,
                     tuning: Optional[EvalResult] = None, extra: Optional[dict] = None) -> dict:
    """``metrics.json`` + ``predictions.csv`` for one split (main process only)."""
    from toolkit.evaluation.metrics import compute_metrics

    metrics = compute_metrics(
        result.labels, result.prob_dog, threshold=threshold, breeds=result.breeds, loss=result.loss,
        class_names=tuple(class_names),
        tuning_labels=None if tuning is None else tuning.labels,
        tuning_probs=None if tuning is None else tuning.prob_dog,
    )
    metrics["split"] = result.split
    metrics["skipped_samples"] = result.skipped
    if tuning is not None:
        metrics["threshold_tuned_on"] = tuning.split
    metrics.update(extra or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / PREDICTIONS_FILE, predictions_csv(result, threshold))
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    return metrics


def finish_run_evaluation(accelerator, cfg, info: dict, run_dir: Path, mean, std, tracker) -> dict:
    """After training: the best model on val (for the threshold) and test, then plots, report, W&B."""
    from toolkit.training.checkpoint import load_model_file

    model, meta = load_model_file(run_dir / "model.safetensors")
    model.to(accelerator.device)
    class_names = meta.get("class_names", ["cat", "dog"])
    splits = {"val": evaluate_split(accelerator, model, cfg, info, "val", mean, std)}
    if cfg.eval.test_split:
        splits[cfg.eval.test_split] = evaluate_split(accelerator, model, cfg, info, cfg.eval.test_split, mean, std)
    summary: dict = {"splits": {}}
    if not accelerator.is_main_process:
        return summary
    for name, result in splits.items():
        tuning = splits["val"] if name != "val" else None
        metrics = write_evaluation(result, run_dir / "eval" / name, threshold=cfg.eval.threshold,
                                   class_names=class_names, tuning=tuning,
                                   extra={"model_epoch": meta.get("epoch"), "synthetic": bool(info.get("synthetic"))})
        summary["splits"][name] = metrics
        tracker.log_curves(result.labels, result.prob_dog, class_names, name)
        tracker.summary({f"{name}/{k}": metrics.get(k) for k in ("accuracy", "roc_auc", "average_precision", "loss")})
    plots = []
    if cfg.eval.plots:
        from toolkit.reporting.visualize import make_plots

        plots = make_plots(run_dir, split=cfg.eval.test_split or "val", num_images=cfg.eval.num_images,
                           shards=cfg.data.shards)
        tracker.log_images({p.stem: p for p in plots})
    _log_prediction_table(tracker, cfg, splits.get(cfg.eval.test_split or "val"))
    from toolkit.reporting.report import build_report

    summary["report"] = str(build_report(run_dir))
    tracker.log_model(run_dir / "model.safetensors", {k: v for k, v in meta.items() if k != "config"})
    return summary


def _log_prediction_table(tracker, cfg, result: Optional[EvalResult], limit: int = 64) -> None:
    if result is None or not len(result.keys):
        return
    from toolkit.data.loader import read_samples

    wanted = set(result.keys[:limit])
    images = {s["key"]: s["image"] for s in read_samples(cfg.data.shards, result.split, keys=wanted)}
    rows, pictures = [], []
    for key, label, prob, breed in zip(result.keys[:limit], result.labels, result.prob_dog, result.breeds):
        if key in images:
            rows.append({"key": key, "label": int(label), "prob_dog": float(prob),
                         "pred": int(prob >= cfg.eval.threshold), "breed": breed})
            pictures.append(images[key])
    tracker.log_predictions_table(rows, pictures)


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="toolkit.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a model.safetensors from a training run")
    parser.add_argument("--shards", required=True, help="shards folder (with info.json) or URL pattern")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--tuning-split", default="val",
                        help="split on which the balanced-accuracy threshold is found, reported beside (default: val; 'none' to skip)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: MODEL_DIR/eval/SPLIT)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold on P(dog) (default 0.5)")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold} must be between 0 and 1")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be >= 1")

    from accelerate import Accelerator

    from toolkit.training.checkpoint import load_model_file
    from toolkit.config import load_config
    from toolkit.data.loader import check_shards_exist, load_info

    model, meta = load_model_file(args.model)
    cfg = load_config(None, [f"data.shards={args.shards}", f"data.image_size={meta['image_size']}",
                             f"data.resize_size={meta.get('resize_size', meta['image_size'])}",
                             f"data.num_workers={args.num_workers}", f"eval.batch_size={args.batch_size}",
                             f"model.num_classes={meta['num_classes']}"])
    info = load_info(args.shards)
    classes = info.get("classes") or ["cat", "dog"]
    if int(meta["num_classes"]) != len(classes):
        raise UsageError(f"{str(args.model)!r} predicts {meta['num_classes']} classes but the shards have {len(classes)} "
                         f"({', '.join(map(str, classes))}); evaluate a model trained on these shards")
    tuning_split = None if args.tuning_split.lower() == "none" or args.tuning_split == args.split else args.tuning_split
    check_shards_exist(args.shards, info, [args.split] + ([tuning_split] if tuning_split else []))
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # without CUDA: gloo across launched processes
    model.to(accelerator.device)
    result = evaluate_split(accelerator, model, cfg, info, args.split, meta["mean"], meta["std"])
    tuning = evaluate_split(accelerator, model, cfg, info, tuning_split, meta["mean"], meta["std"]) if tuning_split else None
    if accelerator.is_main_process:
        out = args.out or args.model.resolve().parent / "eval" / args.split
        metrics = write_evaluation(result, out, threshold=args.threshold, class_names=meta.get("class_names", ["cat", "dog"]),
                                   tuning=tuning, extra={"model": str(args.model), "model_epoch": meta.get("epoch"),
                                                         "synthetic": bool(info.get("synthetic"))})
        auc = metrics.get("roc_auc")
        print(f"{args.split}: n={metrics['num_samples']} loss {metrics['loss']:.4f} acc {metrics['accuracy']:.4f} "
              f"auc {'n/a' if auc is None else f'{auc:.4f}'} -> {out / METRICS_FILE}", flush=True)
    accelerator.end_training()
    return 0

