"""The report's numbers: headline cards, one section per evaluated split, the seed comparison.

One renderer serves any number of classes; what a split lacks (an old metrics.json without
per-class ROC-AUC, a split without a tuned threshold) is simply not shown. To show a new metric,
add a row to ``split_section`` (after computing it in ``toolkit.evaluation.metrics``).
"""

from __future__ import annotations

from typing import Any, Optional

from toolkit.errors import DataError
from toolkit.evaluation.metrics import classification_report_table, compute_metrics, decision_rule, reports_top_k
from toolkit.formats import RunDir
from toolkit.reporting.html import Published, cell_text, esc, finite_numbers, kv_table, load_json, missing, table

WIDE_CLASS_COUNT = 10  # more classes than this: tables per class run down the page, not across

# The seed experiment's published numbers (a from-scratch ResNet-101 on Oxford-IIIT Pet, cat vs dog).
# A run is compared with it when it has the seed's task: the same class names.
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


def load_split_metrics(run: RunDir, split: str) -> tuple[Optional[dict], list[str]]:
    """metrics.json of a split; when only predictions.csv exists, metrics computed from it."""
    data, problem = load_json(run.eval_metrics(split))
    if isinstance(data, dict) and "per_class" in data:
        return data, []
    notes = [problem or "metrics.json has an unexpected layout"]
    if not run.predictions(split).is_file():
        return None, notes
    try:
        found = run.read_predictions(split)  # a torn metrics.json beside it does not hide it
        metrics = compute_metrics(found.labels, found.probs, class_names=found.class_names, breeds=found.breeds)
    except (OSError, KeyError, ValueError, DataError) as err:
        return None, notes + [f"predictions.csv could not be used ({err})"]
    return metrics, notes + ["metrics computed here from predictions.csv (no loss, default threshold 0.5)"]


def has_seed_task(split_metrics: dict[str, dict]) -> bool:
    """Whether the run's classes are the seed experiment's, so that its numbers compare."""
    seed_classes = list(SEED_RESULTS["per_class"])
    return any(list(m.get("class_names") or []) == seed_classes for m in split_metrics.values())


def headline(split_metrics: dict[str, dict], rows: list[dict], final: Optional[dict] = None) -> str:
    """The cards at the top: each split's numbers, the best epoch by the run's train.monitor (final.json;
    older runs: by val AUC, as they chose it) and, when early stopping ended the run, where."""
    cards = []
    for split, m in split_metrics.items():
        cards.append((f"{split} accuracy", m.get("accuracy")))
        if reports_top_k(m):
            cards.append((f"{split} top-{m['top_k']} accuracy", m.get("top5_accuracy")))
        cards.append((f"{split} ROC-AUC", m.get("roc_auc")))
    final = final if isinstance(final, dict) else {}
    if final.get("monitor"):
        best = (final.get("best_value"), final.get("best_epoch"))
        cards.append((f"best {final['monitor']} during training (epoch {best[1]}; selects the model)", best[0]))
    elif rows:
        aucs = [(r.get("val_auc"), r.get("epoch")) for r in rows if finite_numbers([r.get("val_auc")])]
        if aucs:
            best = max(aucs, key=lambda t: t[0])
            cards.append((f"best val AUC during training (epoch {best[1]})", best[0]))
    if rows:
        cards.append(("epochs logged", len(rows)))
    if not cards:
        return missing("No evaluation results and no training log yet.")
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{cell_text(v)}</b>{esc(k)}</div>' for k, v in cards)
        + "</div>"
        + early_stop_note(final)
    )


def early_stop_note(final: dict) -> str:
    """One line when early stopping ended the run (final.json's ``early_stop``), else nothing."""
    stop = final.get("early_stop") if isinstance(final.get("early_stop"), dict) else {}
    if not stop.get("stopped_at_epoch"):
        return ""
    return (
        f"<p>Stopped early at epoch {esc(stop['stopped_at_epoch'])}, best at {esc(final.get('best_epoch'))}: "
        f"{esc(final.get('monitor'))} did not improve by more than {esc(stop.get('min_delta'))} in "
        f"{esc(stop.get('patience'))} validation(s) (train.early_stop_patience).</p>"
    )


def seed_comparison(split_metrics: dict[str, dict], synthetic: Optional[bool]) -> str:
    seed = SEED_RESULTS

    def ours(m: dict, *path: str) -> Any:
        for key in path:
            m = m.get(key) if isinstance(m, dict) else None
        return m

    rows_spec = [
        ("samples", ("num_samples",), seed["num_samples"]),
        ("ROC-AUC", ("roc_auc",), seed["roc_auc"]),
        ("accuracy", ("accuracy",), seed["accuracy"]),
        ("loss (cross-entropy)", ("loss",), seed["loss"]),
    ]
    for name, published in seed["per_class"].items():
        rows_spec += [
            (f"{name} precision", ("per_class", name, "precision"), published["precision"]),
            (f"{name} recall", ("per_class", name, "recall"), published["recall"]),
        ]
    rows_spec += [
        ("macro F1", ("macro_avg", "f1"), seed["macro_f1"]),
        ("weighted F1", ("weighted_avg", "f1"), seed["weighted_f1"]),
    ]
    columns = list(split_metrics)
    header = ["metric", "seed (its val split, also used for model selection)"]
    header += [
        f"this run: {s}" + (" (used for checkpoint selection)" if s == "val" else " (held out)") for s in columns
    ]
    rows = [
        [name, Published(f"{seed_value:g}")] + [ours(split_metrics[s], *path) for s in columns]
        for name, path, seed_value in rows_spec
    ]
    body = table(header, rows)
    body += (
        f'<p class="warn"><b>Caveat:</b> {esc(seed["note"])} Compare like with like: this run\'s val column is '
        "selected on in the same way; only a held-out test split measures generalization.</p>"
    )
    if synthetic:
        body += '<p class="warn">This run used synthetic data: the comparison with the seed is meaningless.</p>'
    if not columns:
        body += missing("This run has no evaluation results yet, so only the seed's numbers are shown.")
    return body


def confusion_table(metrics: dict) -> str:
    names = [str(n) for n in metrics.get("class_names") or []]
    cm = metrics.get("confusion_matrix")
    if not cm or len(cm) != len(names):
        return missing("no confusion matrix")
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
    body = "".join(
        "<tr><th>" + esc(names[i]) + "</th>" + "".join(f'<td class="num">{cell_text(v)}</td>' for v in row) + "</tr>"
        for i, row in enumerate(cm)
    )
    return f"<table>{head}{body}</table>"


def _roc_auc_label(metrics: dict) -> str:
    scored, names = metrics.get("roc_auc_classes"), metrics.get("class_names") or []
    if isinstance(scored, list) and len(scored) == 1:
        return f"ROC-AUC ({scored[0]} vs rest)"
    if isinstance(scored, list):
        return f"ROC-AUC (one vs rest, macro over {len(scored)} of {len(names)} classes scored)"
    return "ROC-AUC"


def split_section(split: str, metrics: Optional[dict], notes: list[str]) -> str:
    """One split: headline numbers, the per-class table, confusions, per-class accuracy, the tuned threshold."""
    if metrics is None:
        return f"<h3>{esc(split)}</h3>" + missing(
            f"No evaluation of split '{split}' yet ({'; '.join(notes)}). Run python -m toolkit.evaluate "
            f"--model RUN/model.safetensors --shards SHARDS --split {split}."
        )
    names = [str(n) for n in metrics.get("class_names") or []]
    out = [f"<h3>{esc(split)}</h3>"]
    out += [f'<p class="warn">{esc(note)}</p>' for note in notes + list(metrics.get("notes") or [])]
    macro, weighted = metrics.get("macro_avg") or {}, metrics.get("weighted_avg") or {}
    rows = [
        ("samples", metrics.get("num_samples")),
        ("skipped samples", metrics.get("skipped_samples")),
        ("classes", len(names)),
        ("loss (cross-entropy)", metrics.get("loss")),
        ("top-1 accuracy", metrics.get("accuracy")),
    ]
    if reports_top_k(metrics):
        rows.append((f"top-{metrics['top_k']} accuracy", metrics.get("top5_accuracy")))
    rows += [
        ("balanced accuracy", metrics.get("balanced_accuracy")),
        ("macro F1 (over the classes present)", macro.get("f1")),
        ("weighted F1", weighted.get("f1")),
        (_roc_auc_label(metrics), metrics.get("roc_auc")),
        ("average precision", metrics.get("average_precision")),
        ("prediction", decision_rule(metrics)),
        ("test-time augmentation", metrics.get("tta") or "none"),  # absent: written before TTA existed
        ("model epoch", metrics.get("model_epoch")),
    ]
    out.append(kv_table(rows))
    out.append(_per_class_tables(metrics, names))
    out.append(_threshold_tuning(split, metrics))
    table_html = confusion_table(metrics)
    if len(names) > WIDE_CLASS_COUNT:
        out.append(
            f"<details><summary>confusion matrix, {len(names)} x {len(names)} (rows true, columns "
            f"predicted)</summary><div class='scroll'>{table_html}</div></details>"
        )
    else:
        out.append("<p>Confusion matrix (rows true, columns predicted):</p>" + table_html)
    breeds = metrics.get("per_breed")
    if breeds and not all(b.get("breed") == b.get("class") for b in breeds):  # breeds that are not the classes
        rows = [(b.get("breed"), b.get("class"), b.get("count"), b.get("correct"), b.get("accuracy")) for b in breeds]
        out.append(
            "<p>Per-breed accuracy, worst first:</p><div class='scroll'>"
            + table(["breed", "class", "count", "correct", "accuracy"], rows, numeric_from=2)
            + "</div>"
        )
    return "".join(out)


def _per_class_tables(metrics: dict, names: list[str]) -> str:
    """The classification report as a table (with one-vs-rest ROC-AUC), largest confusions, accuracy per class."""
    out = []
    per_class, aucs = metrics.get("per_class") or {}, metrics.get("per_class_roc_auc") or {}
    rows = [
        (
            name,
            (per_class.get(name) or {}).get("support"),
            (per_class.get(name) or {}).get("precision"),
            (per_class.get(name) or {}).get("recall"),
            (per_class.get(name) or {}).get("f1"),
            aucs.get(name),
        )
        for name in names
    ]
    out.append(
        "<p>Per class (the classification report; ROC-AUC one vs rest, n/a for a class the split cannot "
        "score):</p><div class='scroll'>"
        + table(["class", "support", "precision", "recall", "F1", "ROC-AUC"], rows)
        + "</div>"
    )
    try:
        out.append(
            "<details><summary>classification report (sklearn layout)</summary><pre>"
            + esc(classification_report_table(metrics))
            + "</pre></details>"
        )
    except (KeyError, TypeError, ValueError) as err:
        out.append(missing(f"classification report unavailable ({err})"))
    confusions = metrics.get("largest_confusions")
    if confusions:
        rows = [(c.get("true"), c.get("pred"), c.get("count"), c.get("share_of_true")) for c in confusions]
        out.append(
            "<p>Largest confusions (most frequent mistakes):</p>"
            + table(["true class", "predicted as", "count", "share of the true class"], rows, numeric_from=2)
        )
    elif confusions is not None:
        out.append("<p>No confusions: every sample was predicted correctly.</p>")
    accuracy = metrics.get("per_class_accuracy")
    if accuracy:
        rows = [(a.get("class"), a.get("count"), a.get("correct"), a.get("accuracy")) for a in accuracy]
        out.append(
            "<p>Accuracy per class, worst first:</p><div class='scroll'>"
            + table(["class", "count", "correct", "accuracy"], rows)
            + "</div>"
        )
    return "".join(out)


def _threshold_tuning(split: str, metrics: dict) -> str:
    """The two-class extra: the threshold tuned on val and this split at it (empty when there is none)."""
    best = metrics.get("best_threshold")
    if not isinstance(best, dict):
        return ""
    at = metrics.get("at_best_threshold") or {}
    tuned_on = metrics.get("threshold_tuned_on", "val")
    out = (
        f"<p>Threshold maximising balanced accuracy on {esc(tuned_on)}: <b>{cell_text(best.get('value'))}</b> "
        f"(balanced accuracy there {cell_text(best.get('tuning_balanced_accuracy'))}). Reported beside the "
        f"headline numbers, never used for them. On {esc(split)} at that threshold: accuracy "
        f"{cell_text(at.get('accuracy'))}, balanced accuracy {cell_text(at.get('balanced_accuracy'))}.</p>"
    )
    if at.get("per_class"):
        out += (
            "<details><summary>classification report at the tuned threshold</summary><pre>"
            + esc(classification_report_table(at))
            + "</pre></details>"
        )
    return out
