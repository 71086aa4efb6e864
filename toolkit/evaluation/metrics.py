"""Every reported number of a classifier, for any number of classes, computed by scikit-learn.

Every number comes from sklearn so that it can be checked against the usual tools; this module
only decides which numbers a run reports and how they are laid out. There is one path for any
class count: predictions are an ``[N, C]`` probability matrix with the class names beside it.

* The prediction rule (``predict``): the most probable class. Two classes take a decision
  threshold on P(class 1) instead (``eval.threshold``, 0.5 by default; argmax is the same rule at
  0.5 up to ties), the one place the class count changes a rule.
* ROC-AUC and average precision are one-vs-rest, macro-averaged over the classes the split can
  score (``scored_classes``). For two classes both one-vs-rest curves are the same curve, so the
  positive class (1) alone is scored, as ``sklearn.metrics.roc_auc_score`` does for binary labels.
* Two-class extras (the threshold tuned on val and this split at it) are added by
  ``threshold_tuning``; every other key means the same for any class count.

To add a metric: compute it in ``compute_metrics`` (it lands in ``metrics.json``), then show it in
``toolkit/reporting/report_metrics.py`` and, for the W&B summary, ``SUMMARY_KEYS``.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import defaultdict
from typing import Any, Optional, Sequence

import numpy as np
from sklearn import metrics as skm

UNKNOWN_BREED = "(unknown)"
TOP_K = 5  # top-k accuracy: k = min(TOP_K, number of classes)
MAX_CONFUSIONS = 10  # largest_confusions: the most frequent mistakes listed
MAX_CURVE_POINTS = 1000  # per class; keeps the logged curve tables small for any split size
# The numbers of a split that go into the W&B run summary as ``<split>/<key>`` (``summary_values``).
SUMMARY_KEYS = ("accuracy", "top5_accuracy", "roc_auc", "average_precision", "loss")


def as_arrays(labels: Sequence[int], probs: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 [N] within 0..C-1 and probabilities as float64 [N, C] within [0, 1]."""
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or len(y) != len(p):
        raise ValueError(
            f"{what}: labels must be 1-D [N] and probabilities 2-D [N, C] with the same N, got {y.shape} and {p.shape}"
        )
    if len(y) == 0:
        raise ValueError(f"{what}: no samples")
    if p.shape[1] < 2:
        raise ValueError(f"{what}: need at least 2 classes (probability columns), got {p.shape[1]}")
    if y.dtype.kind not in "iub" and (y.dtype.kind != "f" or not np.array_equal(y, np.round(y))):
        raise ValueError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= p.shape[1])
    if bad.any():
        raise ValueError(f"{what}: labels must lie in 0..{p.shape[1] - 1}, found {sorted(set(y[bad].tolist()))[:5]}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{what}: probabilities must be finite and within [0, 1]")
    return y, p


def predict(probs: Any, threshold: float = 0.5) -> np.ndarray:
    """The one prediction rule: the most probable class (ties: the lower index); for two classes,
    class 1 when P(class 1) >= ``threshold`` (the rule ``sklearn.metrics.roc_curve`` thresholds by)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"predict: probabilities must be [N, C], got shape {p.shape}")
    if p.shape[1] == 2:
        return (p[:, 1] >= threshold).astype(np.int64)
    return np.argmax(p, axis=1).astype(np.int64)


def decision_threshold(num_classes: int, threshold: float) -> Optional[float]:
    """The threshold a split's numbers were taken at: ``threshold`` for two classes, None (argmax) for more."""
    return float(threshold) if num_classes == 2 else None


def scored_classes(labels: np.ndarray, num_classes: int) -> list[int]:
    """Classes whose one-vs-rest ROC/PR curve is defined and counted in the macro averages.

    A class needs positives and negatives in the split: the split, not the model, decides which
    classes can be scored. For two classes the two curves are one curve seen from either side, so
    only the positive class (1) is scored.
    """
    counts = np.bincount(labels, minlength=num_classes)
    defined = [c for c in range(num_classes) if 0 < counts[c] < len(labels)]
    return [c for c in defined if c == 1] if num_classes == 2 else defined


def per_class_roc_auc(labels: Sequence[int], probs: Any) -> list[Optional[float]]:
    """One-vs-rest ROC-AUC of each class; None for a class without positives or negatives in the split."""
    y, p = as_arrays(labels, probs, "per_class_roc_auc")
    counts = np.bincount(y, minlength=p.shape[1])
    return [float(skm.roc_auc_score(y == c, p[:, c])) if 0 < counts[c] < len(y) else None for c in range(p.shape[1])]


def roc_auc(labels: Sequence[int], probs: Any) -> Optional[float]:
    """One-vs-rest ROC-AUC, macro over the scored classes (two classes: the ROC-AUC of P(class 1)).

    Unlike ``sklearn.metrics.roc_auc_score(multi_class="ovr")``, which needs every class present,
    classes with no sample are left out, so the number stays defined on small val splits that miss
    some of 37 breeds. None when the split holds one class only. It picks a two-class run's best epoch (train.monitor).
    """
    y, p = as_arrays(labels, probs, "roc_auc")
    scores = [float(skm.roc_auc_score(y == c, p[:, c])) for c in scored_classes(y, p.shape[1])]
    return float(np.mean(scores)) if scores else None


def top_k_accuracy(labels: Sequence[int], probs: Any, k: int) -> float:
    """Share of samples whose true class is among the k most probable (k clipped to C).

    k >= C is 1.0 by definition (sklearn would warn that it is meaningless); for C == 2 and
    k == 1 it is the argmax accuracy, since sklearn reads 2 classes as binary and refuses [N, 2].
    """
    y, p = as_arrays(labels, probs, "top_k_accuracy")
    if k < 1:
        raise ValueError(f"top_k_accuracy: k must be at least 1, got {k}")
    num_classes = p.shape[1]
    k = min(int(k), num_classes)
    if k >= num_classes:
        return 1.0
    if num_classes == 2:
        return float(skm.accuracy_score(y, np.argmax(p, axis=1)))
    return float(skm.top_k_accuracy_score(y, p, k=k, labels=np.arange(num_classes)))


def prf_tables(
    y: np.ndarray, pred: np.ndarray, class_names: Sequence[str], average_over: Sequence[int]
) -> dict[str, Any]:
    """``per_class`` precision/recall/F1/support and the ``macro_avg`` and ``weighted_avg`` over ``average_over``,
    in the classification-report layout (sklearn, zero_division=0)."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    out: dict[str, Any] = {
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        }
    }
    for average in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            y, pred, labels=list(average_over), average=average, zero_division=0
        )
        out[f"{average}_avg"] = {"precision": float(ap), "recall": float(ar), "f1": float(af), "support": int(len(y))}
    return out


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # one class only: sklearn warns, the value is still the mean recall
        warnings.simplefilter("ignore")
        return float(skm.balanced_accuracy_score(y, pred))


def decision_metrics(y: np.ndarray, p: np.ndarray, threshold: float, class_names: Sequence[str]) -> dict[str, Any]:
    """Everything that depends on the predictions, in the classification-report layout.

    Averages are over the classes the split has: a class with no sample has no recall to average,
    and counting it as 0 would make a small split that misses most breeds look far worse than it is.
    """
    pred = predict(p, threshold)
    present = [c for c in range(len(class_names)) if (y == c).any()]
    return {
        "threshold": decision_threshold(len(class_names), threshold),
        "num_samples": int(len(y)),
        "class_names": list(class_names),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": balanced_accuracy(y, pred),
        **prf_tables(y, pred, class_names, average_over=present),
        # rows = true class, columns = predicted class, both in class_names order
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=list(range(len(class_names)))).tolist(),
    }


def compute_metrics(
    labels: Sequence[int],
    probs: Any,
    *,
    class_names: Sequence[str],
    threshold: float = 0.5,
    breeds: Optional[Sequence[Optional[str]]] = None,
    loss: Optional[float] = None,
    tuning_labels: Optional[Sequence[int]] = None,
    tuning_probs: Any = None,
    max_confusions: int = MAX_CONFUSIONS,
) -> dict[str, Any]:
    """All reported metrics of one split, as a JSON-ready dict, for any number of classes.

    ``probs`` are softmax probabilities [N, C] in ``class_names`` order; ``loss`` is the model's
    own cross-entropy, passed through. ``threshold`` applies to two classes only (see ``predict``).
    With tuning arrays (the val split) a two-class split also gets ``best_threshold`` and
    ``at_best_threshold`` (``threshold_tuning``); the headline numbers always use ``threshold``,
    so tuning never leaks into them.
    """
    class_names = [str(n) for n in class_names]
    breeds = None if breeds is None else list(breeds)
    y, p = as_arrays(labels, probs, "compute_metrics")
    if p.shape[1] != len(class_names):
        raise ValueError(f"compute_metrics: {len(class_names)} class names for {p.shape[1]} probability columns")
    decided = decision_metrics(y, p, threshold, class_names)
    pred = predict(p, threshold)
    scored = scored_classes(y, len(class_names))
    per_class_auc = per_class_roc_auc(y, p)
    auc_values = [per_class_auc[c] for c in scored]
    ap_values = [float(skm.average_precision_score(y == c, p[:, c])) for c in scored]
    top_k = min(TOP_K, len(class_names))
    matrix = np.asarray(decided["confusion_matrix"])
    return {
        **decided,
        "loss": None if loss is None else float(loss),
        "num_classes": len(class_names),
        "top5_accuracy": top_k_accuracy(y, p, top_k),
        "top_k": top_k,
        "roc_auc": float(np.mean(auc_values)) if auc_values else None,
        "roc_auc_classes": [class_names[c] for c in scored],
        "roc_auc_classes_scored": len(scored),
        "per_class_roc_auc": dict(zip(class_names, per_class_auc)),
        "average_precision": float(np.mean(ap_values)) if ap_values else None,
        "largest_confusions": largest_confusions(matrix, class_names, max_confusions),
        "per_class_accuracy": per_class_accuracy(matrix, class_names),
        "per_breed": per_breed_accuracy(y, pred, breeds, class_names) if breeds is not None and any(breeds) else None,
        **threshold_tuning(y, p, threshold, class_names, tuning_labels, tuning_probs),
        "notes": split_notes(y, class_names, scored),
    }


def threshold_tuning(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    class_names: Sequence[str],
    tuning_labels: Optional[Sequence[int]],
    tuning_probs: Any,
) -> dict[str, Any]:
    """The two-class extras: the threshold that maximises balanced accuracy on the tuning split, and
    this split at it. Reported beside the headline numbers, never used for them; None for more classes."""
    out: dict[str, Any] = {"best_threshold": None, "at_best_threshold": None}
    if (tuning_labels is None) != (tuning_probs is None):
        raise ValueError("compute_metrics: pass both tuning_labels and tuning_probs, or neither")
    if tuning_labels is None or len(class_names) != 2:
        return out
    found = best_balanced_threshold(tuning_labels, tuning_probs, prefer=threshold)
    if found is not None:
        value, tuned_score = found
        out["best_threshold"] = {
            "value": value,
            "tuning_balanced_accuracy": tuned_score,
            "tuning_num_samples": int(len(tuning_labels)),
            "note": "maximises balanced accuracy on the tuning (val) split; reported beside, never used",
        }
        out["at_best_threshold"] = decision_metrics(y, p, value, class_names)
    return out


def best_balanced_threshold(labels: Sequence[int], probs: Any, prefer: float = 0.5) -> Optional[tuple[float, float]]:
    """The threshold on P(class 1) maximising balanced accuracy, as (threshold, balanced accuracy).

    Balanced accuracy is (TPR + TNR) / 2, so it peaks where the ROC curve's TPR - FPR does;
    every ROC threshold is a candidate. Ties go to the threshold closest to ``prefer``.
    Returns None when the labels hold only one class (no trade-off to tune).
    """
    y, p = as_arrays(labels, probs, "best_balanced_threshold")
    if p.shape[1] != 2:
        raise ValueError(f"best_balanced_threshold: a decision threshold needs two classes, got {p.shape[1]}")
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, thresholds = skm.roc_curve(y, p[:, 1], drop_intermediate=False)
    finite = np.isfinite(thresholds)  # the leading +inf means "nothing is class 1"
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    score = (tpr + (1.0 - fpr)) / 2.0
    candidates = np.flatnonzero(np.isclose(score, score.max(), rtol=0, atol=1e-12))
    pick = candidates[np.argmin(np.abs(thresholds[candidates] - prefer))]
    return float(thresholds[pick]), float(score[pick])


def split_notes(y: np.ndarray, class_names: Sequence[str], scored: Sequence[int]) -> list[str]:
    """What a reader must know to read a split's numbers: classes it lacks, curves it cannot draw."""
    notes = []
    present = [c for c in range(len(class_names)) if (y == c).any()]
    missing = [name for c, name in enumerate(class_names) if c not in present]
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        notes.append(
            f"{len(missing)} of {len(class_names)} classes have no sample in this split ({shown}): "
            f"their rows show support 0, and the macro averages, balanced accuracy, ROC-AUC and "
            f"average precision are over the {len(present)} classes present"
        )
    if not scored:
        only = ", ".join(class_names[c] for c in present)
        notes.append(f"only one class ({only}) in this split: ROC-AUC and average precision are undefined")
    return notes


def per_breed_accuracy(
    labels: np.ndarray, pred: np.ndarray, breeds: Sequence[Optional[str]], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Accuracy per breed (any sub-group a sample records), worst first (ties: more samples first, then by name).

    ``class`` is the class most frequent among the breed's labels (ties: the lower index).
    """
    if len(breeds) != len(labels):
        raise ValueError(f"per_breed_accuracy: {len(breeds)} breeds for {len(labels)} labels")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, breed in enumerate(breeds):
        groups[breed if isinstance(breed, str) and breed.strip() else UNKNOWN_BREED].append(i)
    rows = []
    for breed, idx in groups.items():
        idx_arr = np.asarray(idx)
        counts = np.bincount(labels[idx_arr], minlength=len(class_names))
        correct = int((labels[idx_arr] == pred[idx_arr]).sum())
        rows.append(
            {
                "breed": breed,
                "class": class_names[int(np.argmax(counts))],
                "count": int(len(idx)),
                "correct": correct,
                "accuracy": correct / len(idx),
            }
        )
    rows.sort(key=lambda r: (r["accuracy"], -r["count"], r["breed"]))
    return rows


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


def largest_confusions(matrix: Any, class_names: Sequence[str], limit: int = MAX_CONFUSIONS) -> list[dict[str, Any]]:
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
        rows.append(
            {"true": class_names[t], "pred": class_names[pr], "count": count, "share_of_true": count / int(support[t])}
        )
    rows.sort(key=lambda r: (-r["count"], -r["share_of_true"], r["true"], r["pred"]))
    return rows[: max(int(limit), 0)]


def per_class_accuracy(matrix: Any, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Accuracy (recall) per true class with samples, worst first, laid out like ``per_breed``."""
    m = np.asarray(matrix, dtype=np.int64)
    rows = []
    for i, name in enumerate(class_names):
        count = int(m[i].sum())
        if count:
            rows.append({"class": name, "count": count, "correct": int(m[i, i]), "accuracy": int(m[i, i]) / count})
    rows.sort(key=lambda r: (r["accuracy"], -r["count"], r["class"]))
    return rows


def curve_points(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> tuple[list, list]:
    """One-vs-rest ROC and PR points as [class, x, y] rows, for every scored class (for logging)."""
    roc: list = []
    pr: list = []
    for index in scored_classes(labels, len(class_names)):
        positive = labels == index
        fpr, tpr, _ = skm.roc_curve(positive, probs[:, index])
        precision, recall, _ = skm.precision_recall_curve(positive, probs[:, index])
        roc += _thin(class_names[index], fpr, tpr)
        pr += _thin(class_names[index], recall[::-1], precision[::-1])
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


# --- text for logs and tables -----------------------------------------------------------------


def format_number(value: Any, digits: int = 4) -> str:
    """A number for logs and text tables: n/a when missing or NaN, integers as they are."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mean_std(values: Sequence[Optional[float]]) -> dict:
    """Mean and sample standard deviation (n - 1) over seeds; std is None for a single seed."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }


def format_mean_std(stat: dict, digits: int = 4) -> str:
    """``0.8123 ± 0.0150``; one value alone when there is no spread; n/a when there is none."""
    if stat["mean"] is None:
        return "n/a"
    if stat["std"] is None:
        return format_number(stat["mean"], digits)
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def decision_rule(metrics: dict[str, Any]) -> str:
    """How a split's predictions were made, in words, from its metrics dict."""
    names, threshold = metrics.get("class_names") or [], metrics.get("threshold")
    if threshold is None or len(names) != 2:
        return "the most probable class"
    return f"{names[1]} when P({names[1]}) >= {threshold:g}"


def classification_report_table(metrics: dict[str, Any], digits: int = 4) -> str:
    """The text table of ``sklearn.metrics.classification_report``, from a metrics dict (or its
    ``at_best_threshold`` block)."""
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
        "accuracy", "", "", metrics["accuracy"], total, width=width, digits=digits
    )
    for key, label in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        a = metrics[key]
        out += row_fmt.format(label, a["precision"], a["recall"], a["f1"], total, width=width, digits=digits)
    return out


def reports_top_k(metrics: dict[str, Any]) -> bool:
    """Whether top-k accuracy says anything: k below the class count (top-k of every class is 1)."""
    top_k = metrics.get("top_k")
    return isinstance(top_k, int) and top_k < len(metrics.get("class_names") or [])


def summary_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one split (``SUMMARY_KEYS``), as the W&B run summary takes them."""
    return {key: metrics.get(key) for key in SUMMARY_KEYS if key != "top5_accuracy" or reports_top_k(metrics)}


def metrics_line(metrics: dict[str, Any]) -> str:
    """One line for logs: n, loss, accuracy, ROC-AUC, AP, top-k accuracy where k < the class count, and
    the test-time augmentation when one was used.

    The top-k field is labelled with its k, so a 3-class run does not print a top-3 number under a
    top-5 name.
    """
    line = (
        f"n={metrics['num_samples']} loss={format_number(metrics.get('loss'))} "
        f"acc={format_number(metrics.get('accuracy'))} auc={format_number(metrics.get('roc_auc'))} "
        f"ap={format_number(metrics.get('average_precision'))}"
    )
    if reports_top_k(metrics):
        line += f" top{metrics['top_k']}={format_number(metrics.get('top5_accuracy'))}"
    if metrics.get("tta") not in (None, "none"):
        line += f" tta={metrics['tta']}"
    return line
