"""The plots people expect from a classification run, one PNG per function.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch, no display needed) and written atomically, so a half-written PNG never
ends up in a report. Every function takes plain arrays and returns the path it wrote.

One set of functions serves any number of classes, taking labels and the [N, C] class
probabilities: one-vs-rest ROC/PR curves of the scored classes (``metrics.scored_classes``: for two
classes the positive class's one curve; for more the worst few, with the macro figure in the
title), a row-normalised confusion matrix, a per-class accuracy bar chart, and prediction titles
with the top classes. To add a plot: a function here, then a name in ``visualize.FILE_PLOTS`` or
``MODEL_PLOTS`` and its caption in ``report.PLOT_CAPTIONS``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as skm

from toolkit.evaluation.metrics import (
    as_arrays,
    confusion_order,
    normalized_confusion,
    per_class_roc_auc,
    predict,
    scored_classes,
)
from toolkit.fileio import atomic_write_bytes

DPI = 110
WRONG_COLOR = "#c62828"
RIGHT_COLOR = "#1b5e20"
PathLike = Union[str, Path]
CURVE_CLASSES = 6  # ROC/PR plots: at most this many classes, the worst by one-vs-rest ROC-AUC
ANNOTATE_MAX_CLASSES = 10  # confusion matrix: cell values printed up to this many rows/columns
TOP_PROBS = 3  # prediction titles: the most probable classes listed


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike, metadata: Optional[dict[str, str]] = None) -> Path:
    """Render to PNG in memory, then write atomically; ``metadata`` goes into PNG text chunks."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, **({"metadata": metadata} if metadata else {}))
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


def _unit_square(ax, xlabel: str, ylabel: str, legend_loc: str) -> None:
    """Axes of a curve between 0 and 1 on both sides (ROC, precision-recall)."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc=legend_loc, fontsize=8)
    ax.grid(alpha=0.3)


def worst_classes(labels: Sequence[int], probs: Any) -> list[tuple[int, float]]:
    """(class index, one-vs-rest ROC-AUC) of every scored class, worst first (ties: by index)."""
    y, p = as_arrays(labels, probs, "worst_classes")
    aucs = per_class_roc_auc(y, p)
    return sorted(((c, aucs[c]) for c in scored_classes(y, p.shape[1])), key=lambda t: (t[1], t[0]))


def _class_curves(
    labels: Sequence[int],
    probs: Any,
    class_names: Sequence[str],
    path: PathLike,
    *,
    title: str,
    what: str,
    max_classes: int,
    draw: Callable,
    score: Callable,
    undefined: str,
) -> Path:
    """The frame both curve plots share: the scored classes, worst ROC-AUC first.

    ``draw(ax, y, p, classes)`` plots the shown classes; ``score(y, p, c)`` is one class's figure,
    whose mean over every scored class goes into the title as ``what`` when there is more than one.
    """
    fig = new_figure(5.8, 4.8)
    ax = fig.add_subplot()
    scored = worst_classes(labels, probs) if len(labels) else []
    if scored:
        y, p = as_arrays(labels, probs, "class curves")
        shown = [c for c, _ in scored[:max_classes]]
        draw(ax, y, p, shown)
        if len(scored) > 1:
            macro = float(np.mean([score(y, p, c) for c, _ in scored]))
            title = f"{title}\n{what} = {macro:.4f} over {len(scored)} classes"
            if len(shown) < len(scored):
                title += f"\nshown: the {len(shown)} classes with the lowest ROC-AUC"
    else:
        _empty_note(ax, undefined)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_roc(
    labels: Sequence[int],
    probs: Any,
    class_names: Sequence[str],
    path: PathLike,
    *,
    title: str = "ROC curves (one vs rest)",
    max_classes: int = CURVE_CLASSES,
) -> Path:
    """One-vs-rest ROC curves of the scored classes (two classes: the positive class's one curve); with
    more than ``max_classes``, the ones with the lowest AUC, and the macro AUC in the title."""

    def auc(y, p, c):
        return skm.roc_auc_score(y == c, p[:, c])

    def draw(ax, y, p, classes):
        for c in classes:
            fpr, tpr, _ = skm.roc_curve(y == c, p[:, c])
            ax.plot(fpr, tpr, lw=1.8, label=f"{class_names[c]} vs rest (AUC = {auc(y, p, c):.4f})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC = 0.5)")
        _unit_square(
            ax,
            "False positive rate (other classes called this one)",
            "True positive rate (this class found)",
            "lower right",
        )

    return _class_curves(
        labels,
        probs,
        class_names,
        path,
        title=title,
        what="macro one-vs-rest AUC",
        max_classes=max_classes,
        draw=draw,
        score=auc,
        undefined="ROC undefined: only one class present",
    )


def plot_pr(
    labels: Sequence[int],
    probs: Any,
    class_names: Sequence[str],
    path: PathLike,
    *,
    title: str = "Precision-recall curves (one vs rest)",
    max_classes: int = CURVE_CLASSES,
) -> Path:
    """One-vs-rest precision-recall curves of the same classes as ``plot_roc``; each class's share of the
    split is its chance level."""

    def ap(y, p, c):
        return skm.average_precision_score(y == c, p[:, c])

    def draw(ax, y, p, classes):
        for c in classes:
            precision, recall, _ = skm.precision_recall_curve(y == c, p[:, c])
            ax.step(
                recall,
                precision,
                where="post",
                lw=1.8,
                label=f"{class_names[c]} (AP = {ap(y, p, c):.4f}, chance = share {float(np.mean(y == c)):.3f})",
            )
        _unit_square(ax, "Recall", "Precision", "lower left")

    return _class_curves(
        labels,
        probs,
        class_names,
        path,
        title=title,
        what="macro average precision",
        max_classes=max_classes,
        draw=draw,
        score=ap,
        undefined="Precision-recall undefined: only one class present",
    )


def confusion_axes(confusion: Any) -> tuple[list[int], list[int]]:
    """The rows and columns an N-class confusion plot shows, both in ``confusion_order`` (worst recall first).

    Rows: the classes with samples. Columns: those, then the classes without samples that were
    predicted; classes that neither occur nor are predicted are left out. Every row's own class is
    the column at the same position, so the diagonal stays the diagonal.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    order = confusion_order(counts)
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    rows = [i for i in order if support[i] > 0] or order
    cols = [j for j in order if support[j] > 0 or predicted[j] > 0] or order
    if cols[: len(rows)] != rows:  # no samples at all: show everything
        rows, cols = order, order
    return rows, cols


def _tick_font(n: int) -> float:
    return 9 if n <= ANNOTATE_MAX_CLASSES else 7 if n <= 20 else 6 if n <= 45 else 5


def plot_confusion(
    confusion: Sequence[Sequence[int]],
    path: PathLike,
    *,
    class_names: Sequence[str],
    title: str = "Confusion matrix",
    annotate_max: int = ANNOTATE_MAX_CLASSES,
) -> Path:
    """Row-normalised confusion matrix (recall per true class), worst recall first.

    Cell values (share, and the count) are printed only while the matrix has at most
    ``annotate_max`` rows and columns; the figure grows with the class count. The rows and
    columns shown (see ``confusion_axes``) are stored as JSON lists in the PNG's ``Rows`` and
    ``Columns`` text chunks.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(class_names):
        raise ValueError(f"plot_confusion: a {counts.shape} matrix for {len(class_names)} class names")
    rows, cols = confusion_axes(counts)
    shares = normalized_confusion(counts)[np.ix_(rows, cols)]
    shown = counts[np.ix_(rows, cols)]
    cell = 0.24
    fig = new_figure(max(5.0, cell * len(cols) + 3.4), max(4.0, cell * len(rows) + 2.9))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class")
    if len(rows) <= annotate_max and len(cols) <= annotate_max:
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(
                    j,
                    i,
                    f"{shares[i, j]:.2f}\n({shown[i, j]})",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    font = _tick_font(max(len(rows), len(cols)))
    ax.set_xticks(range(len(cols)), labels=[class_names[j] for j in cols], rotation=90, fontsize=font)
    ax.set_yticks(range(len(rows)), labels=[class_names[i] for i in rows], fontsize=font)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True (worst recall first)")
    left_out = len(class_names) - len(cols)
    note = f"\n({left_out} of {len(class_names)} classes neither present nor predicted: left out)" if left_out else ""
    ax.set_title(f"{title}\nshare of each true class, worst recall first{note}", fontsize=9)
    metadata = {
        "Rows": json.dumps([class_names[i] for i in rows]),
        "Columns": json.dumps([class_names[j] for j in cols]),
    }
    return save_figure(fig, path, metadata)


def plot_per_class_accuracy(
    rows: Sequence[dict], path: PathLike, *, title: str = "Accuracy per class", overall: Optional[float] = None
) -> Path:
    """Horizontal bars of accuracy (recall) per true class, worst at the top.

    ``rows`` are ``per_class_accuracy`` records ({class, count, correct, accuracy}), already worst
    first; ``overall`` (the split's accuracy) is drawn as a dashed line.
    """
    rows = list(rows)
    fig = new_figure(7.4, max(2.6, 0.22 * len(rows) + 1.5))
    ax = fig.add_subplot()
    if rows:
        accuracy = np.asarray([float(r["accuracy"]) for r in rows])
        positions = np.arange(len(rows))
        colors = matplotlib.colormaps["RdYlGn"](0.1 + 0.8 * accuracy)
        ax.barh(positions, accuracy, color=colors, edgecolor="#555555", linewidth=0.4)
        for y, row in zip(positions, rows):
            value = float(row["accuracy"])
            ax.text(
                min(value, 1.0) + 0.01,
                y,
                f"{value:.2f} ({row['correct']}/{row['count']})",
                va="center",
                fontsize=_tick_font(len(rows)),
            )
        ax.set_yticks(positions, labels=[str(r["class"]) for r in rows], fontsize=_tick_font(len(rows)))
        ax.set_ylim(len(rows) - 0.5, -0.5)  # worst at the top
        ax.set_xlim(0, 1.22)
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.set_xlabel("accuracy (recall of the true class)")
        subtitle = f"\n{len(rows)} classes with samples, worst first"
        if overall is not None and math.isfinite(overall):
            ax.axvline(overall, ls="--", color="#333333", lw=1)
            subtitle += f"; dashed: overall accuracy {overall:.3f}"
        ax.grid(axis="x", alpha=0.3)
        title += subtitle
    else:
        _empty_note(ax, "no samples")
    ax.set_title(title, fontsize=10)
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


def top_classes(probs: Sequence[float], k: int = TOP_PROBS) -> list[tuple[int, float]]:
    """The ``k`` most probable classes of one sample as (index, probability), most probable first.

    Ties go to the lower index, as ``argmax`` breaks them.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))[: max(int(k), 1)]
    return [(int(i), float(p[i])) for i in order]


def prediction_title(
    label: int, probs: Sequence[float], class_names: Sequence[str], threshold: float = 0.5, k: int = TOP_PROBS
) -> tuple[str, bool]:
    """'true X / pred Y' and the top-k class probabilities; whether the prediction (``metrics.predict``) was right."""
    row = np.asarray(probs, dtype=np.float64).reshape(1, -1)
    pred = int(predict(row, threshold)[0])
    head = f"true {class_names[int(label)]} / pred {class_names[pred]}"
    if len(head) > 36:  # long breed names: one per line
        head = f"true {class_names[int(label)]}\npred {class_names[pred]}"
    listed = [f"{class_names[i]} {p:.2f}" for i, p in top_classes(row[0], k)]
    tail = ", ".join(listed) if sum(len(t) + 2 for t in listed) <= 38 else "\n".join(listed)
    return f"{head}\n{tail}", pred == int(label)


def plot_prediction_grid(
    images: Any,
    labels: Sequence[int],
    probs: Any,
    path: PathLike,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    threshold: float = 0.5,
    captions: Optional[Iterable[str]] = None,
    title: str = "Predictions (wrong in red)",
) -> Path:
    """Images (normalized [N,3,H,W], de-normalized with the run's own mean/std) titled with their
    prediction and top classes from ``probs`` [N, C]."""
    pictures = denormalize(images, mean, std)
    captions = list(captions) if captions is not None else [None] * len(pictures)
    if not (len(pictures) == len(labels) == len(probs) == len(captions)):
        raise ValueError("plot_prediction_grid: images, labels, probabilities and captions differ in length")
    titles = []
    for i in range(len(pictures)):
        text, right = prediction_title(labels[i], probs[i], class_names, threshold)
        titles.append((f"{captions[i]}\n{text}" if captions[i] else text, right))
    rows, cols = _grid_shape(len(pictures))
    # titles of up to 7 lines (long class names): room for the longest
    row_height = 2.6 + 0.14 * max((text.count("\n") + 1 for text, _ in titles), default=1)
    fig = new_figure(2.5 * cols, row_height * rows)
    for i, picture in enumerate(pictures):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(picture)
        text, right = titles[i]
        ax.set_title(text, fontsize=7, color=RIGHT_COLOR if right else WRONG_COLOR)
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
