"""Evaluation metrics for the cat (0) / dog (1) classifier, computed by scikit-learn.

Every number here comes from sklearn so that it can be checked against the usual tools;
this module only decides which numbers a run reports and how they are laid out.
Predictions follow one rule everywhere: ``dog`` when ``prob_dog >= threshold`` (the same
rule ``sklearn.metrics.roc_curve`` uses for its thresholds).

N-class (e.g. 37-breed) runs use ``compute_multiclass_metrics`` instead: the prediction is
the argmax of the softmax probabilities (no threshold), ROC-AUC and average precision are
one-vs-rest macro averages over the classes the split can score, and the dict shares its
key names with the binary one wherever the meaning is the same.
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

# The seed experiment's published numbers (docs/sources.md, "The seed experiment").
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


def prf_tables(y: np.ndarray, pred: np.ndarray, class_names: Sequence[str],
               average_over: Sequence[int]) -> dict[str, Any]:
    """``per_class`` precision/recall/F1/support and the ``macro_avg`` and ``weighted_avg`` over ``average_over``,
    in the classification-report layout (sklearn, zero_division=0)."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, average=None,
                                                                         zero_division=0)
    out: dict[str, Any] = {"per_class": {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)}}
    for average in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(y, pred, labels=list(average_over), average=average,
                                                            zero_division=0)
        out[f"{average}_avg"] = {"precision": float(ap), "recall": float(ar), "f1": float(af), "support": int(len(y))}
    return out


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # one class only: sklearn warns, the value is still the mean recall
        warnings.simplefilter("ignore")
        return float(skm.balanced_accuracy_score(y, pred))


def threshold_metrics(labels: Sequence[int], prob_dog: Sequence[float], threshold: float,
                      class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Everything that depends on the decision threshold, in the classification-report layout."""
    y, p = _as_arrays(labels, prob_dog, "threshold_metrics")
    pred = predict(p, threshold)
    return {
        "threshold": float(threshold),
        "num_samples": int(len(y)),
        "class_names": list(class_names),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        **prf_tables(y, pred, class_names, average_over=[0, 1]),
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
    """Accuracy per breed, worst first (ties: more samples first, then by name).

    ``class`` is the class most frequent among the breed's labels (ties: the lower index);
    works for any number of classes, given one name per class.
    """
    if len(breeds) != len(labels):
        raise ValueError(f"per_breed_accuracy: {len(breeds)} breeds for {len(labels)} labels")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, breed in enumerate(breeds):
        name = breed if isinstance(breed, str) and breed.strip() else UNKNOWN_BREED
        groups[name].append(i)
    rows = []
    for breed, idx in groups.items():
        idx_arr = np.asarray(idx)
        counts = np.bincount(labels[idx_arr], minlength=len(class_names))
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


# --- N classes (e.g. the 37 Oxford-IIIT Pet breeds) -------------------------------------------

def _as_multiclass_arrays(labels: Sequence[int], probs: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 [N] within 0..C-1 and probabilities as float64 [N, C] within [0, 1]."""
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or len(y) != len(p):
        raise ValueError(f"{what}: labels must be 1-D [N] and probabilities 2-D [N, C] with the same N, "
                         f"got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError(f"{what}: no samples")
    if p.shape[1] < 2:
        raise ValueError(f"{what}: need at least 2 classes (probability columns), got {p.shape[1]}")
    if y.dtype.kind not in "iub":
        if y.dtype.kind != "f" or not np.array_equal(y, np.round(y)):
            raise ValueError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= p.shape[1])
    if bad.any():
        raise ValueError(f"{what}: labels must lie in 0..{p.shape[1] - 1}, "
                         f"found {sorted(set(y[bad].tolist()))[:5]}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{what}: probabilities must be finite and within [0, 1]")
    return y, p


def _scorable(y: np.ndarray, num_classes: int) -> list[int]:
    """Classes a one-vs-rest curve is defined for: present in the split but not all of it."""
    counts = np.bincount(y, minlength=num_classes)
    return [c for c in range(num_classes) if 0 < counts[c] < len(y)]


def per_class_roc_auc(labels: Sequence[int], probs: Any) -> list[Optional[float]]:
    """One-vs-rest ROC-AUC of each class; None for a class the split cannot score.

    A class with no sample in the split (or that is the whole split) has no positives (or
    no negatives), so its curve is undefined: the split, not the model, decides which
    classes can be scored.
    """
    y, p = _as_multiclass_arrays(labels, probs, "per_class_roc_auc")
    out: list[Optional[float]] = [None] * p.shape[1]
    for c in _scorable(y, p.shape[1]):
        out[c] = float(skm.roc_auc_score(y == c, p[:, c]))
    return out


def roc_auc_ovr(labels: Sequence[int], probs: Any) -> Optional[float]:
    """One-vs-rest ROC-AUC, macro-averaged over the classes the split can score.

    Unlike ``sklearn.metrics.roc_auc_score(multi_class="ovr")``, which needs every class
    present, classes with no sample are left out, so the number stays defined on small val
    splits that miss some of 37 breeds. None when fewer than 2 classes are present.
    """
    scores = [v for v in per_class_roc_auc(labels, probs) if v is not None]
    return float(np.mean(scores)) if scores else None


def top_k_accuracy(labels: Sequence[int], probs: Any, k: int) -> float:
    """Share of samples whose true class is among the k most probable (k clipped to C).

    k >= C is 1.0 by definition (sklearn would warn that it is meaningless); for C == 2 and
    k == 1 it is the argmax accuracy, since sklearn reads 2 classes as binary and refuses [N, 2].
    """
    y, p = _as_multiclass_arrays(labels, probs, "top_k_accuracy")
    if k < 1:
        raise ValueError(f"top_k_accuracy: k must be at least 1, got {k}")
    num_classes = p.shape[1]
    k = min(int(k), num_classes)
    if k >= num_classes:
        return 1.0
    if num_classes == 2:
        return float(skm.accuracy_score(y, np.argmax(p, axis=1)))
    return float(skm.top_k_accuracy_score(y, p, k=k, labels=np.arange(num_classes)))


def normalized_confusion(matrix: Any) -> np.ndarray:
    """Row-normalised confusion matrix (each row is the true class's share per prediction).

    Rows with no samples stay zero rather than NaN, so the array plots and serialises cleanly.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"normalized_confusion: expected a square matrix, got shape {m.shape}")
    rows = m.sum(axis=1, keepdims=True)
    return np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)


def confusion_order(matrix: Any) -> list[int]:
    """Class indices ordered for a readable large confusion plot: worst recall first.

    Recall is diagonal / row sum; classes with no samples go last; ties keep index order.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion_order: expected a square matrix, got shape {m.shape}")
    support = m.sum(axis=1)
    recall = np.divide(np.diag(m), support, out=np.zeros(len(m)), where=support > 0)
    return sorted(range(len(m)), key=lambda i: (support[i] == 0, recall[i], i))


def largest_confusions(matrix: Any, class_names: Sequence[str], limit: int = 10) -> list[dict[str, Any]]:
    """The most frequent mistakes (off-diagonal cells with a count), most frequent first.

    Ties: larger share of the true class first, then by true and predicted name.
    """
    m = np.asarray(matrix, dtype=np.int64)
    support = m.sum(axis=1)
    rows = []
    for t, pr in zip(*np.nonzero(m)):
        if t == pr:
            continue
        count = int(m[t, pr])
        rows.append({"true": class_names[t], "pred": class_names[pr], "count": count,
                     "share_of_true": count / int(support[t])})
    rows.sort(key=lambda r: (-r["count"], -r["share_of_true"], r["true"], r["pred"]))
    return rows[:max(int(limit), 0)]


def per_class_accuracy(matrix: Any, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Accuracy (recall) per true class with samples, worst first, laid out like ``per_breed``."""
    m = np.asarray(matrix, dtype=np.int64)
    rows = []
    for i, name in enumerate(class_names):
        count = int(m[i].sum())
        if count == 0:
            continue
        correct = int(m[i, i])
        rows.append({"class": name, "count": count, "correct": correct, "accuracy": correct / count})
    rows.sort(key=lambda r: (r["accuracy"], -r["count"], r["class"]))
    return rows


def compute_multiclass_metrics(labels: Sequence[int], probs: Any, *, class_names: Sequence[str],
                               breeds: Optional[Sequence[Optional[str]]] = None,
                               loss: Optional[float] = None, max_confusions: int = 10) -> dict[str, Any]:
    """All reported metrics of one split for N classes, as a JSON-ready dict.

    The prediction is the argmax of ``probs`` ([N, C] softmax probabilities; ties go to the
    lowest index). Keys shared with ``compute_metrics`` mean the same thing, so summary lines,
    W&B summaries, recipe comparisons and ``classification_report_table`` work on either;
    the threshold keys are None (thresholds are a binary notion).
    """
    class_names = [str(n) for n in class_names]
    num_classes = len(class_names)
    y, p = _as_multiclass_arrays(labels, probs, "compute_multiclass_metrics")
    if p.shape[1] != num_classes:
        raise ValueError(f"compute_multiclass_metrics: {num_classes} class names for "
                         f"{p.shape[1]} probability columns")
    pred = np.argmax(p, axis=1).astype(np.int64)
    support = np.bincount(y, minlength=num_classes)
    present = [c for c in range(num_classes) if support[c] > 0]
    scorable = _scorable(y, num_classes)
    per_class_auc = per_class_roc_auc(y, p)
    auc_values = [per_class_auc[c] for c in scorable]
    ap_values = [float(skm.average_precision_score(y == c, p[:, c])) for c in scorable]
    matrix = skm.confusion_matrix(y, pred, labels=list(range(num_classes)))
    top_k = min(5, num_classes)

    return {
        "num_samples": int(len(y)),
        "loss": None if loss is None else float(loss),
        "class_names": list(class_names),
        "num_classes": num_classes,
        "threshold": None,
        "accuracy": float(skm.accuracy_score(y, pred)),
        "top5_accuracy": top_k_accuracy(y, p, top_k),
        "top_k": top_k,
        "balanced_accuracy": _balanced_accuracy(y, pred),
        # averages over the classes the split has: a class with no sample has no recall to average, and
        # counting it as 0 would make a small split that misses most breeds look far worse than it is
        **prf_tables(y, pred, class_names, average_over=present),
        "roc_auc": float(np.mean(auc_values)) if auc_values else None,
        "roc_auc_classes_scored": len(scorable),
        "per_class_roc_auc": dict(zip(class_names, per_class_auc)),
        "average_precision": float(np.mean(ap_values)) if ap_values else None,
        # rows = true class, columns = predicted class, both in class_names order
        "confusion_matrix": matrix.tolist(),
        "largest_confusions": largest_confusions(matrix, class_names, max_confusions),
        "per_class_accuracy": per_class_accuracy(matrix, class_names),
        "per_breed": None if breeds is None else per_breed_accuracy(y, pred, list(breeds), class_names),
        "best_threshold": None,
        "at_best_threshold": None,
        "notes": _multiclass_notes(class_names, present, scorable),
    }


def _multiclass_notes(class_names: list[str], present: list[int], scorable: list[int]) -> list[str]:
    """What a reader must know to read an N-class split's numbers: classes it lacks, curves it cannot draw."""
    notes = []
    missing = [name for c, name in enumerate(class_names) if c not in present]
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        notes.append(f"{len(missing)} of {len(class_names)} classes have no sample in this split ({shown}): "
                     f"their rows show support 0, and the macro averages, balanced accuracy, ROC-AUC and "
                     f"average precision are over the {len(present)} classes present")
    if not scorable:
        notes.append("fewer than 2 classes in this split: ROC-AUC and average precision are undefined")
    return notes


def is_multiclass(metrics: Optional[dict]) -> bool:
    """Whether a split's metrics dict is of more than two classes (its ``class_names`` tell the task)."""
    names = metrics.get("class_names") if isinstance(metrics, dict) else None
    return isinstance(names, list) and len(names) > 2


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
    """One line for logs: n, loss, accuracy, ROC-AUC, AP (and top-k accuracy for N classes).

    The top-k field is labelled with its k (``top5=`` unless fewer than 5 classes), so a
    3-class run does not print a top-3 number under a top-5 name.
    """
    line = (f"n={metrics['num_samples']} loss={fmt(metrics.get('loss'))} "
            f"acc={fmt(metrics.get('accuracy'))} auc={fmt(metrics.get('roc_auc'))} "
            f"ap={fmt(metrics.get('average_precision'))}")
    if "top5_accuracy" in metrics:
        line += f" top{metrics.get('top_k') or 5}={fmt(metrics.get('top5_accuracy'))}"
    return line


MAX_CURVE_POINTS = 1000  # per class; keeps the logged tables small for any split size


def curve_points(y_true, probas, class_names: Sequence[str]) -> tuple[list, list]:
    """One-vs-rest ROC and PR points as [class, x, y] rows, for every class the split can score.

    A class with no sample (or that is the whole split) has no curve; a split of one class has none.
    """
    roc: list = []
    pr: list = []
    for index, name in enumerate(class_names):
        positive = y_true == index
        if positive.all() or not positive.any():
            continue
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
