"""Exact evaluation of a model on one split, on any number of processes.

    python -m toolkit.evaluate --model RUN/model.safetensors --shards shards --split test [--out DIR]
    accelerate launch --num_processes 2 -m toolkit.evaluate --model ... --split test

Each process predicts its share of the split and keeps the results locally; one gather at the
end collects them, duplicates are dropped by sample key, and the count is checked against
``info.json``. So 1 and N processes give identical numbers, and a sample that went missing or
was counted twice is an error, not a silently wrong metric.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object

from toolkit.cli import ArgumentParser, progress
from toolkit.config import load_config, model_image_sizes
from toolkit.data import check_shards_exist, check_split_has_samples, load_info, make_eval_loader
from toolkit.errors import DataError, UsageError
from toolkit.evaluation.metrics import compute_metrics, metrics_line, predict, roc_auc
from toolkit.formats import Predictions, RunDir, class_names, split_size
from toolkit.formats.model_file import check_classes
from toolkit.models.sources import default_output_folder, load_model


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
    auc: Optional[float] = None  # the model-selection score: one-vs-rest ROC-AUC (metrics.roc_auc)
    class_names: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def probs(self) -> np.ndarray:
        """Softmax probabilities [N, C]."""
        return torch.softmax(torch.from_numpy(self.logits), dim=1).numpy()

    def predictions(self, threshold: float) -> Predictions:
        """What ``predictions.csv`` stores, predicted by the one rule (``metrics.predict``)."""
        probs = self.probs
        preds = predict(probs, threshold) if len(probs) else np.zeros(0, dtype=np.int64)
        return Predictions(
            keys=list(self.keys),
            labels=[int(v) for v in self.labels],
            probs=[[float(p) for p in row] for row in probs],
            preds=[int(v) for v in preds],
            breeds=list(self.breeds),
            class_names=list(self.class_names),
        )


@torch.no_grad()
def evaluate_split(accelerator, model: torch.nn.Module, cfg, info: dict, split: str, mean, std) -> EvalResult:
    """Predict every sample of ``split`` once across all processes; every process gets the result."""
    data_cfg = dataclasses.replace(cfg.data, mean=list(mean), std=list(std))  # the model's own normalization
    loader = make_eval_loader(
        data_cfg,
        info,
        split,
        batch_size=cfg.eval.batch_size,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
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
                images = (
                    batch["image"].to(accelerator.device, non_blocking=True).contiguous(memory_format=memory_format)
                )
                logits.append(model(images).float().cpu())
                labels.append(batch["label"].cpu())
                keys.extend(batch["key"])
                breeds.extend(batch.get("breed", [""] * len(batch["key"])))
    finally:
        model.train(was_training)
    local = {
        "keys": keys,
        "breeds": breeds,
        "skipped": skipped,
        "labels": torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64),
        "logits": torch.cat(logits).numpy() if logits else np.zeros((0, len(class_names(info))), dtype=np.float32),
    }
    parts = gather_object([local]) if accelerator.num_processes > 1 else [local]
    return with_scores(merge_predictions(split, parts, expected=split_size(info, split)), class_names(info))


def with_scores(result: EvalResult, names: Sequence[str]) -> EvalResult:
    """Loss, accuracy and the model-selection AUC of a merged, labelled result (also batch predict's)."""
    result.class_names = list(names)
    logits_t = torch.from_numpy(result.logits)
    labels_t = torch.from_numpy(result.labels).long()
    result.loss = float(F.cross_entropy(logits_t, labels_t)) if len(labels_t) else float("nan")
    result.accuracy = float((logits_t.argmax(1) == labels_t).float().mean()) if len(labels_t) else float("nan")
    result.auc = roc_auc(result.labels, result.probs) if len(result.labels) else None
    return result


def merge_predictions(split: str, parts: list[dict], expected: int) -> EvalResult:
    """Concatenate per-process results, drop duplicate keys, and check nothing is missing."""
    seen: dict[str, int] = {}
    keys, labels, logits, breeds = [], [], [], []
    skipped = sum(int(p["skipped"]) for p in parts)
    width = next((p["logits"].shape[1] for p in parts if np.ndim(p["logits"]) == 2), 2)
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
        raise DataError(
            f"evaluation of split {split!r} counted {len(keys)} samples + {skipped} skipped, but info.json "
            f"lists {expected}; the shards do not match their manifest (run python -m toolkit.make_shards --verify)"
        )
    order = np.argsort(np.array(keys, dtype=object)) if keys else np.zeros(0, dtype=np.int64)
    return EvalResult(
        split=split,
        keys=[keys[i] for i in order],
        labels=np.array([labels[i] for i in order], dtype=np.int64),
        logits=np.stack([logits[i] for i in order]) if keys else np.zeros((0, width), dtype=np.float32),
        breeds=[breeds[i] for i in order],
        skipped=skipped,
    )


def score(
    result: EvalResult,
    *,
    threshold: float,
    class_names,
    tuning: Optional[EvalResult] = None,
    extra: Optional[dict] = None,
) -> dict:
    """Every reported metric of one split, computed once by ``toolkit.evaluation.metrics``.

    ``tuning`` (the val split) finds the decision threshold reported beside a two-class split's
    numbers; for more classes it is not used.
    """
    metrics = compute_metrics(
        result.labels,
        result.probs,
        class_names=list(class_names),
        threshold=threshold,
        breeds=result.breeds,
        loss=result.loss,
        tuning_labels=None if tuning is None else tuning.labels,
        tuning_probs=None if tuning is None else tuning.probs,
    )
    metrics["split"] = result.split
    metrics["skipped_samples"] = result.skipped
    if metrics["best_threshold"] is not None:
        metrics["threshold_tuned_on"] = tuning.split
    metrics.update(extra or {})
    return metrics


def eval_config(shards: str, meta: dict, model_name: str, *, batch_size: int, num_workers: int):
    """The config ``evaluate_split`` reads, for a model file's own image sizes (evaluate's and predict's)."""
    image_size, resize_size = model_image_sizes(meta, model_name)
    return load_config(
        None,
        [
            f"data.shards={shards}",
            f"data.image_size={image_size}",
            f"data.resize_size={resize_size}",
            f"data.num_workers={num_workers}",
            f"eval.batch_size={batch_size}",
            f"model.num_classes={meta['num_classes']}",
        ],
    )


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(
        prog="toolkit.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m toolkit.evaluate --model runs/NAME/model.safetensors "
        "--shards shards/pets --split test",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a model.safetensors from a training run, a run folder, an "
        "exported or other timm model folder (DIR or local-dir:DIR), or hf-hub:OWNER/NAME",
    )
    parser.add_argument("--shards", required=True, help="shards folder (with info.json) or URL pattern")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--tuning-split",
        default="val",
        help="split on which the balanced-accuracy threshold is found, reported beside (default: val; "
        "'none' to skip; two-class models only)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: MODEL_DIR/eval/SPLIT)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="decision threshold on P(class 1) of a two-class model (default 0.5); a model of more "
        "than two classes predicts its most probable class instead",
    )
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold} must be between 0 and 1")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be >= 1")

    model_folder = default_output_folder(args.model)  # results go to MODEL_FOLDER/eval/SPLIT unless --out
    if args.out is None and model_folder is None:
        raise UsageError(f"--model {args.model}: pass --out DIR for the results of a Hub model")
    model, meta = load_model(args.model)
    cfg = eval_config(args.shards, meta, str(args.model), batch_size=args.batch_size, num_workers=args.num_workers)
    info = load_info(args.shards)
    check_classes(meta, class_names(info), str(args.model), what=f"the shards {args.shards}")
    tuning_split = None if args.tuning_split.lower() == "none" or args.tuning_split == args.split else args.tuning_split
    if int(meta["num_classes"]) != 2:
        tuning_split = None  # the tuned threshold is the two-class extra: no need to predict the split
    check_shards_exist(args.shards, info, [args.split] + ([tuning_split] if tuning_split else []))
    check_split_has_samples(args.shards, info, args.split, "--split")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # without CUDA: gloo across launched processes
    model.to(accelerator.device)
    result = evaluate_split(accelerator, model, cfg, info, args.split, meta["mean"], meta["std"])
    tuning = (
        evaluate_split(accelerator, model, cfg, info, tuning_split, meta["mean"], meta["std"]) if tuning_split else None
    )
    if accelerator.is_main_process:
        run = RunDir(model_folder or args.out)
        out = args.out or run.eval_dir(args.split)
        metrics = score(
            result,
            threshold=args.threshold,
            class_names=class_names(info),
            tuning=tuning,
            extra={
                "model": str(args.model),
                "model_epoch": meta.get("epoch"),
                "synthetic": bool(info.get("synthetic")),
            },
        )
        run.write_evaluation(args.split, metrics, result.predictions(args.threshold), out_dir=out)
        print(f"{args.split}: {metrics_line(metrics)} -> {out}", flush=True)
    accelerator.end_training()
    return 0
