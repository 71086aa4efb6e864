"""Evaluation metrics for the cat (0) / dog (1) classifier, computed by scikit-learn.

Every number here comes from sklearn so that it can be checked against the usual tools;
this module only decides which numbers a run reports and how they are laid out.
Predictions follow one rule everywhere: ``dog`` when ``prob_dog >= threshold`` (the same
rule ``sklearn.metrics.roc_curve`` uses for its thresholds).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import defaultdict
from typing import Any, Optional, Sequence

import numpy as np
from sklearn import metrics as skm

CLASS_NAMES = ("cat", "dog")
UNKNOWN_BREED = "(unknown)"

# The seed experiment's published numbers; see docs and REFERENCE.md.
SEED_RESULTS: dict[str, Any] = {
    "source": "seed experiment: from-scratch ResNet-101 (v1 stride), Adam 1e-3, 30 epochs, fp32",
    "split": "val",
    "num_samples": 736,
    "loss": 0.4084,
    "roc_auc": 0.9108,
    "accuracy": 0.8274,
    "per_class": {
        "cat": {"precision": 0.684, "recall": 0.875, "support": 240},
        "dog": {"precision": 0.930, "recall": 0.804, "support": 496},
    },
    "macro_f1": 0.8153,
    "weighted_f1": 0.8318,
    "note": (
        "Measured on the seed's own 736-image val split (random 80/20 of trainval, seed 42), "
        "which it also used for model selection (picking the best epoch), and normalized with statistics that "
        "included that split: optimistic, not a held-out test result. The official test "
        "list was never evaluated."
    ),
}


def _as_arrays(labels: Sequence[int], prob_dog: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(prob_dog, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(f"{what}: labels and probabilities must be 1-D and of equal length, got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError(f"{what}: no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{what}: labels must be 0 (cat) or 1 (dog), found {sorted(set(y.tolist()) - {0, 1})[:5]}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{what}: probabilities must be finite and within [0, 1]")
    return y.astype(np.int64), p


def roc_auc(labels: Sequence[int], prob_dog: Sequence[float]) -> Optional[float]:
    """ROC-AUC, or None when the split holds one class only (it is undefined then)."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return None
    return float(skm.roc_auc_score(y, np.asarray(prob_dog, dtype=np.float64)))


def predict(prob_dog: np.ndarray, threshold: float) -> np.ndarray:
    """The one prediction rule: dog (1) when prob_dog >= threshold."""
    return (np.asarray(prob_dog) >= threshold).astype(np.int64)


def _prf(y: np.ndarray, pred: np.ndarray, average: Optional[str]) -> tuple:
    return skm.precision_recall_fscore_support(y, pred, labels=[0, 1], average=average, zero_division=0)


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # one class only: sklearn warns, the value is still the mean recall
        warnings.simplefilter("ignore")
        return float(skm.balanced_accuracy_score(y, pred))


def threshold_metrics(labels: Sequence[int], prob_dog: Sequence[float], threshold: float,
                      class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Everything that depends on the decision threshold, in the classification-report layout."""
    y, p = _as_arrays(labels, prob_dog, "threshold_metrics")
    pred = predict(p, threshold)
    precision, recall, f1, support = _prf(y, pred, None)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    averages = {}
    for average in ("macro", "weighted"):
        ap, ar, af, _ = _prf(y, pred, average)
        averages[f"{average}_avg"] = {"precision": float(ap), "recall": float(ar), "f1": float(af), "support": int(len(y))}
    return {
        "threshold": float(threshold),
        "num_samples": int(len(y)),
        "class_names": list(class_names),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "per_class": per_class,
        **averages,
        # rows = true class, columns = predicted class, both in class_names order
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),
    }


def best_balanced_threshold(labels: Sequence[int], prob_dog: Sequence[float],
                            prefer: float = 0.5) -> Optional[tuple[float, float]]:
    """The threshold maximising balanced accuracy, as (threshold, balanced accuracy).

    Balanced accuracy is (TPR + TNR) / 2, so it peaks where the ROC curve's TPR - FPR does;
    every ROC threshold is a candidate. Ties go to the threshold closest to ``prefer``.
    Returns None when the labels hold only one class (no trade-off to tune).
    """
    y, p = _as_arrays(labels, prob_dog, "best_balanced_threshold")
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, thresholds = skm.roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # the leading +inf means "nothing is a dog"
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    score = (tpr + (1.0 - fpr)) / 2.0
    best = score.max()
    candidates = np.flatnonzero(np.isclose(score, best, rtol=0, atol=1e-12))
    pick = candidates[np.argmin(np.abs(thresholds[candidates] - prefer))]
    return float(thresholds[pick]), float(score[pick])


def per_breed_accuracy(labels: np.ndarray, pred: np.ndarray, breeds: Sequence[Optional[str]],
                       class_names: Sequence[str] = CLASS_NAMES) -> list[dict[str, Any]]:
    """Accuracy per breed, worst first (ties: more samples first, then by name)."""
    if len(breeds) != len(labels):
        raise ValueError(f"per_breed_accuracy: {len(breeds)} breeds for {len(labels)} labels")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, breed in enumerate(breeds):
        name = breed if isinstance(breed, str) and breed.strip() else UNKNOWN_BREED
        groups[name].append(i)
    rows = []
    for breed, idx in groups.items():
        idx_arr = np.asarray(idx)
        counts = np.bincount(labels[idx_arr], minlength=2)
        correct = int((labels[idx_arr] == pred[idx_arr]).sum())
        rows.append({
            "breed": breed,
            "class": class_names[int(np.argmax(counts))],
            "count": int(len(idx)),
            "correct": correct,
            "accuracy": correct / len(idx),
        })
    rows.sort(key=lambda r: (r["accuracy"], -r["count"], r["breed"]))
    return rows


def compute_metrics(labels: Sequence[int], prob_dog: Sequence[float], *, threshold: float = 0.5,
                    breeds: Optional[Sequence[Optional[str]]] = None, loss: Optional[float] = None,
                    class_names: Sequence[str] = CLASS_NAMES,
                    tuning_labels: Optional[Sequence[int]] = None,
                    tuning_probs: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """All reported metrics for one split, as a JSON-ready dict.

    ``loss`` is the model's own cross-entropy, passed through as given. When tuning arrays
    (the val split) are given, ``best_threshold`` is the threshold that maximises balanced
    accuracy there and ``at_best_threshold`` shows this split at it; the headline numbers
    always use ``threshold``, so tuning never leaks into them.
    """
    if len(class_names) != 2:
        raise ValueError(f"compute_metrics: expected 2 class names, got {list(class_names)}")
    y, p = _as_arrays(labels, prob_dog, "compute_metrics")
    notes: list[str] = []
    result: dict[str, Any] = {
        "num_samples": int(len(y)),
        "loss": None if loss is None else float(loss),
    }
    result.update(threshold_metrics(y, p, threshold, class_names))

    if len(np.unique(y)) < 2:
        only = class_names[int(y[0])]
        result["roc_auc"] = None
        result["average_precision"] = None
        notes.append(f"only one class ({only}) in this split: ROC-AUC and average precision are undefined")
    else:
        result["roc_auc"] = roc_auc(y, p)
        result["average_precision"] = float(skm.average_precision_score(y, p))

    result["best_threshold"] = None
    result["at_best_threshold"] = None
    if (tuning_labels is None) != (tuning_probs is None):
        raise ValueError("compute_metrics: pass both tuning_labels and tuning_probs, or neither")
    if tuning_labels is not None:
        found = best_balanced_threshold(tuning_labels, tuning_probs, prefer=threshold)
        if found is None:
            notes.append("tuning split has one class only: no best threshold")
        else:
            value, tuned_score = found
            result["best_threshold"] = {
                "value": value,
                "tuning_balanced_accuracy": tuned_score,
                "tuning_num_samples": int(len(tuning_labels)),
                "note": "maximises balanced accuracy on the tuning (val) split; reported beside, never used",
            }
            result["at_best_threshold"] = threshold_metrics(y, p, value, class_names)

    result["per_breed"] = None
    if breeds is not None:
        result["per_breed"] = per_breed_accuracy(y, predict(p, threshold), list(breeds), class_names)
    result["notes"] = notes
    return result


def fmt(value: Any, digits: int = 4) -> str:
    """A number for logs and tables: n/a when missing or NaN, integers as they are."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mean_std(values: Sequence[Optional[float]]) -> dict:
    """Mean and sample standard deviation (n - 1) over seeds; std is None for a single seed."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def fmt_mean_std(stat: dict, digits: int = 4) -> str:
    """``0.8123 ± 0.0150``; one value alone when there is no spread; n/a when there is none."""
    if stat["mean"] is None:
        return "n/a"
    if stat["std"] is None:
        return fmt(stat["mean"], digits)
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def classification_report_table(metrics: dict[str, Any], digits: int = 4) -> str:
    """The text table of ``sklearn.metrics.classification_report``, from a metrics dict.

    Works on ``compute_metrics`` output and on its ``at_best_threshold`` block.
    """
    names = list(metrics["class_names"])
    heading = "weighted avg"
    width = max(max(len(n) for n in names), len(heading), digits)
    headers = ["precision", "recall", "f1-score", "support"]
    out = ("{:>{width}s} " + " {:>9}" * 4).format("", *headers, width=width) + "\n\n"
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for name in names:
        c = metrics["per_class"][name]
        out += row_fmt.format(name, c["precision"], c["recall"], c["f1"], c["support"], width=width, digits=digits)
    out += "\n"
    total = metrics["num_samples"]
    out += ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
        "accuracy", "", "", metrics["accuracy"], total, width=width, digits=digits)
    for key, label in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        a = metrics[key]
        out += row_fmt.format(label, a["precision"], a["recall"], a["f1"], total, width=width, digits=digits)
    return out


def summary_line(metrics: dict[str, Any]) -> str:
    """One line for logs: n, loss, accuracy, ROC-AUC, AP."""
    return (f"n={metrics['num_samples']} loss={fmt(metrics.get('loss'))} "
            f"acc={fmt(metrics.get('accuracy'))} auc={fmt(metrics.get('roc_auc'))} "
            f"ap={fmt(metrics.get('average_precision'))}")


MAX_CURVE_POINTS = 1000  # per class; keeps the logged tables small for any split size


def curve_points(y_true, probas, class_names: Sequence[str]) -> tuple[list, list]:
    """One-vs-rest ROC and PR points per class as [class, x, y] rows (empty for a single class)."""
    roc: list = []
    pr: list = []
    for index, name in enumerate(class_names):
        positive = y_true == index
        if positive.all() or not positive.any():
            return [], []
        fpr, tpr, _ = skm.roc_curve(positive, probas[:, index])
        precision, recall, _ = skm.precision_recall_curve(positive, probas[:, index])
        roc += _thin(name, fpr, tpr)
        pr += _thin(name, recall[::-1], precision[::-1])
    return roc, pr


def _thin(name: str, x, y) -> list:
    """Round to 3 decimals, drop repeated points and keep at most MAX_CURVE_POINTS (ends kept)."""

    points = np.round(np.stack([x, y], axis=1), 3)
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.any(points[1:] != points[:-1], axis=1)
    points = points[keep]
    if len(points) > MAX_CURVE_POINTS:
        points = points[np.unique(np.linspace(0, len(points) - 1, MAX_CURVE_POINTS).round().astype(int))]
    return [[name, float(px), float(py)] for px, py in points]
