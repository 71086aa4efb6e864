"""toolkit.evaluation.metrics against scikit-learn, computed independently here: two classes.

The same functions serve any class count; tests/unit/evaluation/test_metrics_multiclass.py covers more than two."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from helpers import CAT_DOG, two_class_probs
from toolkit.evaluation.metrics import classification_report_table, compute_metrics, decision_metrics
from toolkit.reporting.report_metrics import SEED_RESULTS


def _fake_predictions(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    prob = np.clip(0.35 * labels + rng.uniform(0.0, 0.65, n), 0.0, 1.0)
    breeds = np.array(["Bengal", "Persian", "beagle", "pug", "boxer"])[rng.integers(0, 5, n)]
    return labels, prob, breeds


def test_headline_metrics_equal_sklearn():
    labels, prob, breeds = _fake_predictions(300)
    m = compute_metrics(labels, two_class_probs(prob), class_names=CAT_DOG, threshold=0.5, breeds=breeds, loss=0.61)
    pred = (prob >= 0.5).astype(int)

    assert m["num_samples"] == 300 and m["loss"] == 0.61 and m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred), abs=1e-12)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, prob), abs=1e-12)
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(labels, prob), abs=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()

    report = skm.classification_report(labels, pred, target_names=["cat", "dog"], output_dict=True)
    for name in ("cat", "dog"):
        for ours, theirs in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "f1-score"),
            ("support", "support"),
        ):
            assert m["per_class"][name][ours] == pytest.approx(report[name][theirs], abs=1e-12)
    for ours, theirs in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert m[ours][key] == pytest.approx(report[theirs][sk_key], abs=1e-12)
    json.dumps(m, allow_nan=False)  # metrics.json must be plain JSON


def test_per_breed_accuracy_equals_sklearn_and_is_worst_first():
    labels, prob, breeds = _fake_predictions(200, seed=1)
    m = compute_metrics(labels, two_class_probs(prob), class_names=CAT_DOG, breeds=breeds)
    pred = (prob >= 0.5).astype(int)
    assert sorted(r["breed"] for r in m["per_breed"]) == sorted(set(breeds))
    for row in m["per_breed"]:
        mask = breeds == row["breed"]
        assert row["count"] == int(mask.sum())
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(labels[mask], pred[mask]), abs=1e-12)
    accuracies = [r["accuracy"] for r in m["per_breed"]]
    assert accuracies == sorted(accuracies)
    assert sum(r["count"] for r in m["per_breed"]) == 200


def test_best_threshold_maximises_balanced_accuracy_on_the_tuning_split():
    test_labels, test_prob, _ = _fake_predictions(150, seed=2)
    val_labels, val_prob, _ = _fake_predictions(120, seed=3)
    m = compute_metrics(
        test_labels,
        two_class_probs(test_prob),
        class_names=CAT_DOG,
        tuning_labels=val_labels,
        tuning_probs=two_class_probs(val_prob),
    )
    best = m["best_threshold"]["value"]

    # brute force: every distinct score is a candidate cut
    candidates = np.unique(np.concatenate([val_prob, [0.0, 1.0]]))
    scores = [skm.balanced_accuracy_score(val_labels, (val_prob >= t).astype(int)) for t in candidates]
    achieved = skm.balanced_accuracy_score(val_labels, (val_prob >= best).astype(int))
    assert achieved == pytest.approx(max(scores), abs=1e-12)
    assert m["best_threshold"]["tuning_balanced_accuracy"] == pytest.approx(achieved, abs=1e-12)

    # reported beside on this split, never used for the headline numbers
    assert m["at_best_threshold"] == decision_metrics(test_labels, two_class_probs(test_prob), best, CAT_DOG)
    assert {k: v for k, v in m.items() if k not in ("best_threshold", "at_best_threshold")} == {
        k: v
        for k, v in compute_metrics(test_labels, two_class_probs(test_prob), class_names=CAT_DOG).items()
        if k not in ("best_threshold", "at_best_threshold")
    }


def test_single_class_input_gives_null_auc_with_a_note():
    m = compute_metrics(
        [1, 1, 1, 1],
        two_class_probs([0.9, 0.2, 0.7, 0.6]),
        class_names=CAT_DOG,
        tuning_labels=[0, 0],
        tuning_probs=two_class_probs([0.1, 0.4]),
    )
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[0, 0], [1, 3]]
    assert m["best_threshold"] is None
    assert any("one class" in note for note in m["notes"])
    assert "accuracy" in classification_report_table(m)
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("labels, prob", [([0, 2], [0.1, 0.2]), ([0, 1], [0.1, 1.5]), ([0, 1], [0.1]), ([], [])])
def test_bad_input_is_rejected(labels, prob):
    with pytest.raises(ValueError):
        compute_metrics(labels, two_class_probs(prob), class_names=CAT_DOG)


def test_classification_report_table_matches_sklearn_layout():
    labels, prob, _ = _fake_predictions(97, seed=4)
    pred = (prob >= 0.5).astype(int)
    for digits in (2, 4):
        expected = skm.classification_report(labels, pred, target_names=["cat", "dog"], digits=digits)
        assert (
            classification_report_table(
                compute_metrics(labels, two_class_probs(prob), class_names=CAT_DOG), digits=digits
            )
            == expected
        )


def test_seed_confusion_reproduces_the_seed_report():
    # 240 cats and 496 dogs with the seed's recalls give exactly its published report
    labels = np.array([0] * 240 + [1] * 496)
    pred = np.array([0] * 210 + [1] * 30 + [0] * 97 + [1] * 399)
    m = compute_metrics(labels, two_class_probs(np.where(pred == 1, 0.9, 0.1)), class_names=CAT_DOG)
    seed = SEED_RESULTS
    assert round(m["accuracy"], 4) == seed["accuracy"]
    assert round(m["macro_avg"]["f1"], 4) == seed["macro_f1"]
    assert round(m["weighted_avg"]["f1"], 4) == seed["weighted_f1"]
    for name in ("cat", "dog"):
        for key in ("precision", "recall"):
            assert round(m["per_class"][name][key], 3) == seed["per_class"][name][key]
    assert seed["split"] == "val" and "model selection" in seed["note"]
