"""The CSV ``python -m toolkit.predict --out FILE.csv`` writes: one row per image or shard sample.

Columns ``key, label, pred, top1, prob1, ..., topK, probK``: ``key`` is the file's path as given (or the
shard sample's key), ``label`` the known class name (an image-folder tree's class folder, a shard's label;
empty when unknown), ``pred`` the predicted class (``metrics.predict``), then the K most probable classes
with their probabilities, most probable first (ties: the lower class index). Rows are sorted by key, so
1 and N processes write the same bytes.
"""

from __future__ import annotations

import csv
import io
from typing import Sequence

import numpy as np

PROB_DIGITS = 6


def top_k_order(row: np.ndarray, k: int) -> list[int]:
    """Indices of the k most probable classes, most probable first; ties go to the lower index."""
    return sorted(range(len(row)), key=lambda i: (-float(row[i]), i))[:k]


def predict_csv(
    keys: Sequence[str],
    labels: Sequence[int],
    preds: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    k: int,
) -> str:
    """The CSV text; a label below 0 is unknown (left empty)."""
    k = min(k, len(class_names))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "label", "pred"] + [f"{name}{i}" for i in range(1, k + 1) for name in ("top", "prob")])
    for key, label, pred, row in zip(keys, labels, preds, probs):
        top = [cell for i in top_k_order(row, k) for cell in (class_names[i], f"{float(row[i]):.{PROB_DIGITS}f}")]
        writer.writerow([key, class_names[label] if label >= 0 else "", class_names[pred], *top])
    return buffer.getvalue()
