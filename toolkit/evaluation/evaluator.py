"""Exact evaluation of a model on one split, on any number of processes (the command: ``toolkit.evaluate``).

Each process predicts its share of the split and keeps the results locally; one gather at the
end collects them, duplicates are dropped by sample key, and the count is checked against
``info.json``. So 1 and N processes give identical numbers, and a sample that went missing or
was counted twice is an error, not a silently wrong metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object

from toolkit.cli import progress
from toolkit.config import DataConfig, eval_data_config
from toolkit.data import check_shards_exist, check_split_has_samples, load_info, make_eval_loader
from toolkit.errors import DataError, UsageError
from toolkit.evaluation.metrics import (
    TOP_K,
    balanced_accuracy,
    compute_metrics,
    metrics_line,
    predict,
    roc_auc,
    top_k_accuracy,
)
from toolkit.evaluation.tta import apply_tta
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
    auc: Optional[float] = None  # one-vs-rest ROC-AUC (metrics.roc_auc); train.monitor picks which one selects
    top5: Optional[float] = None  # top-5 accuracy; None for 5 classes or fewer
    balanced_accuracy: float = float("nan")  # mean per-class recall of the argmax predictions
    class_names: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    tta: str = "none"  # test-time augmentation the logits came from (toolkit.evaluation.tta)

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
def evaluate_split(
    accelerator,
    model: torch.nn.Module,
    data: DataConfig,
    info: dict,
    split: str,
    *,
    batch_size: int,
    channels_last: bool = False,
    tta: str = "none",
) -> EvalResult:
    """Predict every sample of ``split`` once across all processes; every process gets the result.

    ``data`` is resolved: its mean/std are the model's own normalization. ``tta`` is a
    ``toolkit.evaluation.tta`` mode; with one, the logits are the log of the averaged probabilities.
    """
    loader = make_eval_loader(
        data,
        info,
        split,
        batch_size=batch_size,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
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
                logits.append(apply_tta(model, images, tta).float().cpu())
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
    result = merge_predictions(split, parts, expected=split_size(info, split))
    result.tta = tta
    return with_scores(result, class_names(info))


def with_scores(result: EvalResult, names: Sequence[str]) -> EvalResult:
    """Loss, accuracy, AUC and the other ``train.monitor`` candidates of a merged, labelled result
    (also batch predict's)."""
    result.class_names = list(names)
    logits_t = torch.from_numpy(result.logits)
    labels_t = torch.from_numpy(result.labels).long()
    if not len(labels_t):
        return result
    result.loss = float(F.cross_entropy(logits_t, labels_t))
    result.accuracy = float((logits_t.argmax(1) == labels_t).float().mean())
    probs = result.probs
    result.auc = roc_auc(result.labels, probs)
    result.top5 = top_k_accuracy(result.labels, probs, TOP_K) if probs.shape[1] > TOP_K else None
    result.balanced_accuracy = balanced_accuracy(result.labels, logits_t.argmax(1).numpy())
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
    metrics["tta"] = result.tta
    if metrics["best_threshold"] is not None:
        metrics["threshold_tuned_on"] = tuning.split
    metrics.update(extra or {})
    return metrics


def evaluate_model(
    model_source: str,
    shards: str,
    split: str,
    *,
    tuning_split: Optional[str] = "val",
    out: Optional[Path] = None,
    batch_size: int = 64,
    threshold: float = 0.5,
    num_workers: int = 2,
    tta: str = "none",
) -> Optional[dict]:
    """Evaluate a model (any ``models.sources`` form) on one split and write metrics.json and predictions.csv.

    Runs on every process of the launch; the main process writes and returns the metrics, the others None.
    Results go to ``out``, else MODEL_FOLDER/eval/SPLIT. ``tta``: a ``toolkit.evaluation.tta`` mode, for both splits.
    """
    model_folder = default_output_folder(model_source)
    if out is None and model_folder is None:
        raise UsageError(f"--model {model_source}: pass --out DIR for the results of a Hub model")
    model, meta = load_model(model_source)
    data = eval_data_config(meta, model_source, shards=shards, num_workers=num_workers)
    info = load_info(shards)
    check_classes(meta, class_names(info), model_source, what=f"the shards {shards}")
    if tuning_split == split or int(meta["num_classes"]) != 2:
        tuning_split = None  # the tuned threshold is the two-class extra: no need to predict the split
    check_shards_exist(shards, info, [split] + ([tuning_split] if tuning_split else []))
    check_split_has_samples(shards, info, split, "--split")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # without CUDA: gloo across launched processes
    model.to(accelerator.device)
    result = evaluate_split(accelerator, model, data, info, split, batch_size=batch_size, tta=tta)
    tuning = (
        evaluate_split(accelerator, model, data, info, tuning_split, batch_size=batch_size, tta=tta)
        if tuning_split
        else None
    )
    metrics = None
    if accelerator.is_main_process:
        run = RunDir(model_folder or out)
        out = out or run.eval_dir(split)
        metrics = score(
            result,
            threshold=threshold,
            class_names=class_names(info),
            tuning=tuning,
            extra={"model": model_source, "model_epoch": meta.get("epoch"), "synthetic": bool(info.get("synthetic"))},
        )
        run.write_evaluation(split, metrics, result.predictions(threshold), out_dir=out)
        print(f"{split}: {metrics_line(metrics)} -> {out}", flush=True)
    accelerator.end_training()
    return metrics
