"""toolkit.evaluation.metrics for more than two classes (and two as a special case) against scikit-learn."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from toolkit.evaluation.metrics import (
    classification_report_table,
    compute_metrics,
    confusion_order,
    metrics_line,
    normalized_confusion,
    per_class_roc_auc,
    roc_auc,
    top_k_accuracy,
)

C = 37
NAMES = [f"breed_{i:02d}" for i in range(C)]
MISSING = (3, 17, 30)  # classes with no sample in the fake split


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _fake_multiclass(n: int = 400, seed: int = 0, missing: tuple = MISSING):
    """Labels over 37 classes minus ``missing``, and softmax probabilities that favour the true class."""
    rng = np.random.default_rng(seed)
    present = np.array([c for c in range(C) if c not in missing])
    labels = present[rng.integers(0, len(present), n)]
    logits = rng.normal(0.0, 1.0, (n, C))
    logits[np.arange(n), labels] += rng.uniform(0.0, 3.0, n)
    # a systematic confusion so that largest_confusions has clear leaders
    swap = (labels == 5) & (rng.uniform(size=n) < 0.6)
    logits[swap, 6] += 6.0
    breeds = np.array(["Abyssinian", "beagle", "pug", ""])[rng.integers(0, 4, n)]
    return labels, _softmax(logits), breeds


def test_37_class_metrics_equal_sklearn():
    labels, probs, _ = _fake_multiclass()
    pred = probs.argmax(axis=1)
    m = compute_metrics(labels, probs, class_names=NAMES, loss=1.23)

    assert m["num_samples"] == 400 and m["loss"] == 1.23 and m["num_classes"] == C
    assert m["class_names"] == NAMES and m["threshold"] is None
    assert m["best_threshold"] is None and m["at_best_threshold"] is None and m["per_breed"] is None

    # one-vs-rest ROC-AUC: mean of the per-class sklearn AUCs over the 34 present classes
    present = sorted(set(labels.tolist()))
    assert len(present) == C - len(MISSING)
    expected_aucs = {c: skm.roc_auc_score(labels == c, probs[:, c]) for c in present}
    assert m["roc_auc_classes_scored"] == C - len(MISSING)
    assert m["roc_auc"] == pytest.approx(np.mean(list(expected_aucs.values())), abs=1e-12)
    assert roc_auc(labels, probs) == pytest.approx(m["roc_auc"], abs=1e-15)
    listed = per_class_roc_auc(labels, probs)
    for c in range(C):
        if c in MISSING:
            assert listed[c] is None and m["per_class_roc_auc"][NAMES[c]] is None
        else:
            assert listed[c] == pytest.approx(expected_aucs[c], abs=1e-12)
            assert m["per_class_roc_auc"][NAMES[c]] == pytest.approx(expected_aucs[c], abs=1e-12)
    expected_ap = np.mean([skm.average_precision_score(labels == c, probs[:, c]) for c in present])
    assert m["average_precision"] == pytest.approx(expected_ap, abs=1e-12)

    # top-1 and top-5
    assert m["top_k"] == 5
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, probs, k=1, labels=range(C)), abs=1e-12)
    assert m["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, probs, k=5, labels=range(C)), abs=1e-12)
    assert top_k_accuracy(labels, probs, 3) == pytest.approx(
        skm.top_k_accuracy_score(labels, probs, k=3, labels=range(C)), abs=1e-12
    )
    assert top_k_accuracy(labels, probs, 99) == 1.0
    assert m["accuracy"] < m["top5_accuracy"] < 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred), abs=1e-12)

    # per-class and averaged precision / recall / F1
    report = skm.classification_report(
        labels, pred, labels=range(C), target_names=NAMES, output_dict=True, zero_division=0
    )
    for name in NAMES:
        for ours, theirs in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "f1-score"),
            ("support", "support"),
        ):
            assert m["per_class"][name][ours] == pytest.approx(report[name][theirs], abs=1e-12)
    for ours, average in (("macro_avg", "macro"), ("weighted_avg", "weighted")):  # over the classes present
        p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, labels=present, average=average, zero_division=0)
        assert (m[ours]["precision"], m[ours]["recall"], m[ours]["f1"]) == pytest.approx((p, r, f), abs=1e-12)
        assert m[ours]["support"] == 400
    assert list(m["per_class"]) == NAMES
    for c in MISSING:
        assert m["per_class"][NAMES[c]]["support"] == 0 and m["per_class"][NAMES[c]]["recall"] == 0.0

    # confusion matrix
    matrix = skm.confusion_matrix(labels, pred, labels=range(C))
    assert m["confusion_matrix"] == matrix.tolist()

    # notes explain the missing classes
    assert any(f"{len(MISSING)} of {C} classes have no sample" in note for note in m["notes"])
    json.dumps(m, allow_nan=False)


def test_largest_confusions_and_per_class_accuracy_by_hand():
    labels, probs, _ = _fake_multiclass(seed=1)
    m = compute_metrics(labels, probs, class_names=NAMES, max_confusions=7)
    matrix = np.array(m["confusion_matrix"])
    support = matrix.sum(axis=1)

    cells = []
    for t in range(C):
        for p in range(C):
            if t != p and matrix[t, p] > 0:
                cells.append((-int(matrix[t, p]), -matrix[t, p] / support[t], NAMES[t], NAMES[p]))
    cells.sort()
    expected = [{"true": t, "pred": p, "count": -negc, "share_of_true": -negs} for negc, negs, t, p in cells[:7]]
    assert len(m["largest_confusions"]) == 7
    for ours, theirs in zip(m["largest_confusions"], expected):
        assert (ours["true"], ours["pred"], ours["count"]) == (theirs["true"], theirs["pred"], theirs["count"])
        assert ours["share_of_true"] == pytest.approx(theirs["share_of_true"], abs=1e-12)
    # the planted 5 -> 6 confusion leads
    top = m["largest_confusions"][0]
    assert (top["true"], top["pred"]) == (NAMES[5], NAMES[6])
    assert top["count"] == matrix[5, 6] == matrix[:, :][np.where(~np.eye(C, dtype=bool))].max()
    counts = [r["count"] for r in m["largest_confusions"]]
    assert counts == sorted(counts, reverse=True)

    rows = m["per_class_accuracy"]
    assert [r["class"] for r in rows if r["class"] in {NAMES[c] for c in MISSING}] == []
    assert len(rows) == C - len(MISSING)
    for row in rows:
        c = NAMES.index(row["class"])
        mask = labels == c
        assert row["count"] == int(mask.sum())
        assert row["correct"] == int((probs[mask].argmax(axis=1) == c).sum())
        assert row["accuracy"] == pytest.approx(
            skm.recall_score(labels, probs.argmax(axis=1), labels=[c], average="macro", zero_division=0), abs=1e-12
        )
    keys = [(r["accuracy"], -r["count"], r["class"]) for r in rows]
    assert keys == sorted(keys)
    assert sum(r["count"] for r in rows) == len(labels)


def test_classification_report_table_equals_sklearn_text_for_37_classes():
    labels, probs, _ = _fake_multiclass(seed=2, missing=())  # every class present: the averages agree too
    pred = probs.argmax(axis=1)
    m = compute_metrics(labels, probs, class_names=NAMES)
    for digits in (2, 4):
        expected = skm.classification_report(
            labels, pred, labels=range(C), target_names=NAMES, digits=digits, zero_division=0
        )
        assert classification_report_table(m, digits=digits) == expected
    # long class names widen the table the same way
    long_names = [f"american_pit_bull_terrier_{i}" for i in range(C)]
    m = compute_metrics(labels, probs, class_names=long_names)
    assert classification_report_table(m) == skm.classification_report(
        labels, pred, labels=range(C), target_names=long_names, digits=4, zero_division=0
    )


def test_per_breed_uses_argmax_and_the_most_frequent_class():
    labels, probs, breeds = _fake_multiclass(seed=3)
    pred = probs.argmax(axis=1)
    m = compute_metrics(labels, probs, class_names=NAMES, breeds=breeds)
    names = {"(unknown)" if b == "" else b for b in breeds}
    assert sorted(r["breed"] for r in m["per_breed"]) == sorted(names)
    for row in m["per_breed"]:
        mask = breeds == ("" if row["breed"] == "(unknown)" else row["breed"])
        assert row["count"] == int(mask.sum())
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(labels[mask], pred[mask]), abs=1e-12)
        values, counts = np.unique(labels[mask], return_counts=True)
        assert row["class"] == NAMES[int(values[np.argmax(counts)])]
    accuracies = [r["accuracy"] for r in m["per_breed"]]
    assert accuracies == sorted(accuracies)


def test_three_class_perfect_prediction():
    labels = np.array([0, 1, 2, 2, 1, 0, 2])
    probs = np.full((7, 3), 0.1)
    probs[np.arange(7), labels] = 0.8
    m = compute_metrics(labels, probs, class_names=["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["top_k"] == 3 and m["top5_accuracy"] == 1.0
    assert m["roc_auc"] == 1.0 and m["roc_auc_classes_scored"] == 3 and m["average_precision"] == 1.0
    assert m["largest_confusions"] == [] and m["notes"] == []
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 3]]
    assert [r["class"] for r in m["per_class_accuracy"]] == ["c", "a", "b"]  # all 1.0: more samples, then name
    assert m["macro_avg"]["f1"] == 1.0
    assert metrics_line(m) == "n=7 loss=n/a acc=1.0000 auc=1.0000 ap=1.0000"  # top-3 of 3 classes says nothing


def test_ties_go_to_the_lowest_index_and_single_class_has_no_auc():
    probs = np.array([[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])
    m = compute_metrics([1, 1], probs, class_names=["a", "b", "c"])
    assert m["confusion_matrix"] == [[0, 0, 0], [1, 0, 1], [0, 0, 0]]
    assert m["accuracy"] == 0.0
    assert m["roc_auc"] is None and m["average_precision"] is None and m["roc_auc_classes_scored"] == 0
    assert roc_auc([1, 1], probs) is None
    assert any("only one class (b)" in n for n in m["notes"])
    json.dumps(m, allow_nan=False)


def test_two_classes_work_and_agree_with_the_binary_auc():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 120)
    p1 = np.clip(0.3 * labels + rng.uniform(0, 0.7, 120), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    m = compute_metrics(labels, probs, class_names=["cat", "dog"])
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, (p1 >= 0.5).astype(int)), abs=1e-12)
    assert m["top_k"] == 2 and m["top5_accuracy"] == 1.0
    # the two one-vs-rest curves are one curve: the positive class alone is scored, as sklearn does for binary
    assert m["roc_auc_classes"] == ["dog"] and m["roc_auc"] == skm.roc_auc_score(labels, p1)
    assert m["average_precision"] == skm.average_precision_score(labels, p1)
    assert m["per_class_roc_auc"]["cat"] == pytest.approx(m["per_class_roc_auc"]["dog"], abs=1e-12)
    assert top_k_accuracy(labels, probs, 1) == pytest.approx(skm.accuracy_score(labels, probs.argmax(axis=1)))


def test_confusion_helpers():
    matrix = np.array([[3, 1, 0, 0], [0, 0, 0, 0], [2, 0, 2, 0], [0, 0, 1, 1]])
    # recalls: 0.75, (none), 0.5, 0.5 -> 2 and 3 tie (index order), 0, then the empty class last
    assert confusion_order(matrix) == [2, 3, 0, 1]
    expected = np.array([[0.75, 0.25, 0, 0], [0, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(normalized_confusion(matrix), expected, atol=1e-15)
    assert normalized_confusion(matrix).dtype == np.float64
    with pytest.raises(ValueError):
        confusion_order([[1, 2, 3]])


@pytest.mark.parametrize(
    "labels, probs, names, match",
    [
        ([0, 1], np.full((2, 3), 1 / 3)[:, :, None], ["a", "b", "c"], "2-D"),  # probs not 2-D
        ([0, 1, 2], np.full((2, 3), 1 / 3), ["a", "b", "c"], "same N"),  # length mismatch
        ([[0, 1]], np.full((2, 3), 1 / 3), ["a", "b", "c"], "1-D"),  # labels not 1-D
        ([0, 3], np.full((2, 3), 1 / 3), ["a", "b", "c"], r"0\.\.2"),  # label out of range
        ([0, -1], np.full((2, 3), 1 / 3), ["a", "b", "c"], r"0\.\.2"),  # negative label
        ([0, 1], np.full((2, 3), 1 / 3), ["a", "b"], "class names"),  # names mismatch
        ([0, 1], np.array([[0.5, 0.5, 1.5], [0.2, 0.3, 0.5]]), ["a", "b", "c"], r"\[0, 1\]"),
        ([0, 1], np.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]]), ["a", "b", "c"], "finite"),
        ([0.5, 1], np.full((2, 3), 1 / 3), ["a", "b", "c"], "integer"),
        ([], np.zeros((0, 3)), ["a", "b", "c"], "no samples"),
    ],
)
def test_bad_input_is_rejected(labels, probs, names, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(labels, probs, class_names=names)


def test_binary_metrics_line_and_report_are_unchanged():
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    prob = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2, 0.7, 0.3])
    m = compute_metrics(labels, np.stack([1 - prob, prob], axis=1), class_names=["cat", "dog"], loss=0.5)
    assert metrics_line(m) == "n=8 loss=0.5000 acc=0.7500 auc=0.9375 ap=0.9500"
    assert classification_report_table(m) == skm.classification_report(
        labels, (prob >= 0.5).astype(int), target_names=["cat", "dog"], digits=4
    )
    m37 = compute_metrics(*_fake_multiclass()[:2], class_names=NAMES)
    assert metrics_line(m37).endswith(f" top5={m37['top5_accuracy']:.4f}")
    assert metrics_line(m37).startswith(f"n=400 loss=n/a acc={m37['accuracy']:.4f} auc={m37['roc_auc']:.4f} ")
