"""The plots people expect from a classification run, one PNG per function.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch, no display needed) and written atomically, so a half-written PNG never
ends up in a report. Every function takes plain arrays and returns the path it wrote.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as skm

from toolkit.fileio import atomic_write_bytes
from toolkit.evaluation.metrics import CLASS_NAMES, predict, roc_auc

DPI = 110
WRONG_COLOR = "#c62828"
RIGHT_COLOR = "#1b5e20"
PathLike = Union[str, Path]


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Render to PNG in memory, then write atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def denormalize(images: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalized [N,3,H,W] (or [3,H,W]) images back to displayable [N,H,W,3] in [0, 1]."""
    x = to_numpy(images).astype(np.float32)
    if x.ndim == 3:
        x = x[None]
    x = x * np.asarray(std, np.float32)[None, :, None, None] + np.asarray(mean, np.float32)[None, :, None, None]
    return np.clip(x.transpose(0, 2, 3, 1), 0.0, 1.0)


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _two_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def _unit_square(ax, xlabel: str, ylabel: str, legend_loc: str) -> None:
    """Axes of a curve between 0 and 1 on both sides (ROC, precision-recall)."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc=legend_loc, fontsize=8)
    ax.grid(alpha=0.3)


def plot_roc(labels: Sequence[int], prob_dog: Sequence[float], path: PathLike, *, title: str = "ROC curve") -> Path:
    y, p = np.asarray(labels), np.asarray(prob_dog, dtype=np.float64)
    fig = new_figure(4.6, 4.2)
    ax = fig.add_subplot()
    if _two_classes(y):
        fpr, tpr, _ = skm.roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"dog vs cat (AUC = {roc_auc(y, p):.4f})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC = 0.5)")
        _unit_square(ax, "False positive rate (cats called dog)", "True positive rate (dogs found)", "lower right")
    else:
        _empty_note(ax, "ROC undefined: only one class present")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_pr(labels: Sequence[int], prob_dog: Sequence[float], path: PathLike, *,
            title: str = "Precision-recall curve (positive = dog)") -> Path:
    y, p = np.asarray(labels), np.asarray(prob_dog, dtype=np.float64)
    fig = new_figure(4.6, 4.2)
    ax = fig.add_subplot()
    if _two_classes(y):
        precision, recall, _ = skm.precision_recall_curve(y, p)
        ap = skm.average_precision_score(y, p)
        ax.step(recall, precision, where="post", lw=2, label=f"dog (AP = {ap:.4f})")
        prevalence = float(y.mean())
        ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"chance (dog share = {prevalence:.3f})")
        _unit_square(ax, "Recall", "Precision", "lower left")
    else:
        _empty_note(ax, "Precision-recall undefined: only one class present")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_confusion(confusion: Sequence[Sequence[int]], path: PathLike, *,
                   class_names: Sequence[str] = CLASS_NAMES, title: str = "Confusion matrix") -> Path:
    """Counts and row-normalized (recall per true class) side by side."""
    counts = np.asarray(confusion, dtype=np.int64)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0)
    fig = new_figure(8.2, 3.6)
    for k, (data, name, fmt) in enumerate(((counts, "counts", "d"), (normalized, "normalized by true class", ".3f"))):
        ax = fig.add_subplot(1, 2, k + 1)
        image = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(data.max(), 1e-9) if k == 0 else 1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        threshold = (data.max() if k == 0 else 1.0) / 2.0
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center",
                        color="white" if data[i, j] > threshold else "black", fontsize=11)
        ticks = range(len(class_names))
        ax.set_xticks(ticks, labels=class_names)
        ax.set_yticks(ticks, labels=class_names)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        ax.set_title(name, fontsize=10)
    fig.suptitle(title)
    return save_figure(fig, path)


def _series(rows: Sequence[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(row.get("epoch", i))
            ys.append(value)
    return xs, ys


def plot_training_curves(rows: Sequence[dict], path: PathLike, *, title: str = "Training curves") -> Path:
    """Losses, val accuracy, val AUC, learning rate, throughput and data wait per epoch.

    ``rows`` are metrics.jsonl records; missing or null values are left out of the lines.
    """
    panels: list[tuple[str, list[tuple[str, str]], str]] = [
        ("Loss", [("train_loss", "train"), ("val_loss", "val")], "linear"),
        ("Val accuracy", [("val_acc", "val")], "linear"),
        ("Val ROC-AUC", [("val_auc", "val")], "linear"),
        ("Learning rate", [("lr", "lr")], "log"),
        ("Throughput (train img/s)", [("img_per_s", "img/s")], "linear"),
        ("Data wait fraction", [("data_wait_frac", "waiting for data")], "linear"),
    ]
    fig = new_figure(11.5, 6.2)
    for k, (name, keys, scale) in enumerate(panels):
        ax = fig.add_subplot(2, 3, k + 1)
        drawn = 0
        for key, label in keys:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, lw=1.5, label=label)
                drawn += 1
                if scale == "log" and min(ys) > 0:
                    ax.set_yscale("log")
        if not drawn:
            _empty_note(ax, "no data")
        else:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if len(keys) > 1:
                ax.legend(fontsize=8)
        if keys[0][0] == "data_wait_frac" and drawn:
            ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=10)
    peaks = [r.get("peak_mem_gib") for r in rows if isinstance(r.get("peak_mem_gib"), (int, float))]
    suffix = f"  (peak memory {max(peaks):.2f} GiB)" if peaks else ""
    fig.suptitle(title + suffix)
    return save_figure(fig, path)


def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, max(n, 1))
    return math.ceil(max(n, 1) / cols), cols


def prediction_title(label: int, prob_dog: float, threshold: float, class_names: Sequence[str]) -> tuple[str, bool]:
    """'true dog / pred cat (p_dog 0.31)' and whether the prediction was right."""
    pred = int(predict(np.asarray([prob_dog]), threshold)[0])
    return (f"true {class_names[int(label)]} / pred {class_names[pred]}\np(dog) = {prob_dog:.3f}",
            pred == int(label))


def plot_prediction_grid(images: Any, labels: Sequence[int], prob_dog: Sequence[float], path: PathLike, *,
                         mean: Sequence[float], std: Sequence[float], threshold: float = 0.5,
                         class_names: Sequence[str] = CLASS_NAMES, captions: Optional[Iterable[str]] = None,
                         title: str = "Predictions (wrong in red)") -> Path:
    """Images (normalized [N,3,H,W], de-normalized with the run's own mean/std) with their predictions."""
    pictures = denormalize(images, mean, std)
    captions = list(captions) if captions is not None else [None] * len(pictures)
    if not (len(pictures) == len(labels) == len(prob_dog) == len(captions)):
        raise ValueError("plot_prediction_grid: images, labels, probabilities and captions differ in length")
    rows, cols = _grid_shape(len(pictures))
    fig = new_figure(2.5 * cols, 2.75 * rows)
    for i, picture in enumerate(pictures):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(picture)
        text, right = prediction_title(labels[i], float(prob_dog[i]), threshold, class_names)
        if captions[i]:
            text = f"{captions[i]}\n{text}"
        ax.set_title(text, fontsize=8, color=RIGHT_COLOR if right else WRONG_COLOR)
        ax.axis("off")
        if not right:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(WRONG_COLOR)
                spine.set_linewidth(3)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    if len(pictures) == 0:
        _empty_note(fig.add_subplot(), "no images")
    fig.suptitle(title)
    return save_figure(fig, path)
