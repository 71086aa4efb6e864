"""One self-contained HTML page per run: numbers, plots, data and config in a single file.

The page makes no external requests (inline CSS, every image embedded as base64 PNG), so
it can be mailed, attached to an issue or opened offline years later. Every section copes
with its inputs missing or broken and says so, because reports are often built for runs
that are still going or were cut short. All text from files is HTML-escaped.

Two-class (cat/dog) runs are compared with the seed experiment and show the decision threshold;
runs with more classes (e.g. 37 breeds) show top-1 and top-5 accuracy, macro and weighted F1,
the one-vs-rest ROC-AUC with the number of classes it covers, the per-class table, the largest
confusions and the per-class accuracy, worst first, instead.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from toolkit.errors import DataError
from toolkit.fileio import atomic_write_text
from toolkit.formats import RunDir
from toolkit.evaluation.metrics import SEED_RESULTS, classification_report_table, compute_metrics, \
    compute_multiclass_metrics, is_multiclass

SPLIT_ORDER = ("val", "test")
PLOT_ORDER = ("training_curves", "roc_", "pr_", "confusion_", "per_class_accuracy_", "predictions_", "gradcam_",
              "feature_maps_", "filters_")
PLOT_CAPTIONS = {
    "training_curves": "Per-epoch losses, validation accuracy and ROC-AUC, learning rate, throughput and data wait.",
    "roc_": "ROC curve of P(dog) with its AUC; the dashed diagonal is chance.",
    "pr_": "Precision-recall curve with dog as the positive class; the dashed line is the dog share (chance).",
    "confusion_": "Confusion matrix at the decision threshold: counts and normalized by true class.",
    "predictions_": "Example predictions, de-normalized with the run's own mean/std; mistakes in red.",
    "gradcam_": "Grad-CAM of the predicted class: the most confident mistakes first, then correct predictions.",
    "feature_maps_": "Activations of conv1 and each stage for one test image (first channels).",
    "filters_": "Learned convolution filters, each scaled on its own.",
}
# Runs with more than two classes: the plots that differ from the cat/dog ones say so.
MULTICLASS_CAPTIONS = {
    **PLOT_CAPTIONS,
    "roc_": "One-vs-rest ROC curves of the classes with the lowest ROC-AUC; the title gives the macro AUC over "
            "the classes the split can score.",
    "pr_": "One-vs-rest precision-recall curves of the same classes; the title gives the macro average precision.",
    "confusion_": "Confusion matrix normalised by true class, classes ordered worst recall first (cell values "
                  "printed up to 10 classes).",
    "per_class_accuracy_": "Accuracy (recall) per true class, worst first; the dashed line is the overall accuracy.",
    "predictions_": "Example predictions with their top-3 classes, de-normalized with the run's own mean/std; "
                    "mistakes in red.",
    "gradcam_": "Grad-CAM of the predicted (most probable) class: the most confident mistakes first, then correct "
                "predictions.",
}
MAX_LIST_ITEMS = 20
WIDE_CLASS_COUNT = 10  # more classes than this: tables per class run down the page, not across

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1150px;padding:0 18px 40px;color:#1d1d1f;line-height:1.45}
h1{margin:22px 0 4px;font-size:1.7em}h2{border-bottom:2px solid #e3e3e8;padding-bottom:4px;margin-top:34px}
h3{margin:22px 0 8px}.muted{color:#666;font-size:.9em}
.banner{background:#b71c1c;color:#fff;padding:14px 18px;border-radius:6px;font-weight:600;font-size:1.1em;margin:14px 0}
.warn{background:#fff4e5;border-left:4px solid #ef6c00;padding:8px 12px;margin:10px 0}
.missing{background:#f5f5f7;border-left:4px solid #999;padding:8px 12px;color:#444;margin:10px 0}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.92em}
th,td{border:1px solid #d9d9de;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f2f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f9;border:1px solid #e3e3e8;padding:10px;overflow-x:auto;font-size:.88em}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
.scroll{max-height:420px;overflow-y:auto;display:inline-block}
figure{margin:16px 0;display:inline-block;max-width:100%}figure img{max-width:100%;border:1px solid #e3e3e8}
figcaption{font-size:.88em;color:#444}nav a{margin-right:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.card{border:1px solid #d9d9de;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:1.35em}.bad{color:#c62828}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for humans: n/a for missing or NaN, integers as they are."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if abs(value) >= 100:  # throughput, seconds
            return f"{value:,.1f}"
        if value != 0 and abs(value) < 0.001:  # learning rates
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return esc(value)


class Published(str):
    """A number as it was published (e.g. '0.684'): shown verbatim, aligned as a number."""


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _load_json(path: Path) -> tuple[Optional[Any], Optional[str]]:
    """(data, None), or (None, why not) for a missing or unreadable file."""
    if not path.is_file():
        return None, f"{path.name} not found"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as err:
        return None, f"{path.name} could not be read ({err})"


def _missing(text: str) -> str:
    return f'<div class="missing">{esc(text)}</div>'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    """A table; cells are formatted with ``fmt`` (already-escaped), columns from ``numeric_from`` right-aligned."""
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            numeric = isinstance(cell, (int, float, Published)) and not isinstance(cell, bool)
            cls = ' class="num"' if i >= numeric_from and numeric else ""
            cells.append(f"<td{cls}>{fmt(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    return _table(["", "value"], pairs)


def _render_value(value: Any) -> str:
    """Nested JSON as small tables; long lists are cut with a count."""
    if isinstance(value, dict):
        if not value:
            return "<i>empty</i>"
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{_render_value(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return "<i>none</i>"
        if all(not isinstance(v, (dict, list)) for v in value) and len(value) <= 8:
            return esc(", ".join(fmt(v) if isinstance(v, float) else str(v) for v in value))
        items = "".join(f"<li>{_render_value(v)}</li>" for v in value[:MAX_LIST_ITEMS])
        more = f"<li><i>... and {len(value) - MAX_LIST_ITEMS} more</i></li>" if len(value) > MAX_LIST_ITEMS else ""
        return f"<ul>{items}{more}</ul>"
    return fmt(value)


# ---------------------------------------------------------------------------------------------
# Inputs


def load_split_metrics(run_dir: Path, split: str) -> tuple[Optional[dict], list[str]]:
    """metrics.json of a split; when only predictions.csv exists, metrics computed from it."""
    run = RunDir(run_dir)
    data, problem = _load_json(run.eval_metrics(split))
    if isinstance(data, dict) and "per_class" in data:
        return data, []
    notes = [problem or "metrics.json has an unexpected layout"]
    if run.predictions(split).is_file():
        try:
            found = run.read_predictions(split)  # a torn metrics.json beside it does not hide it
            breeds = found.breeds if any(found.breeds) else None
            if not found.binary:
                metrics = compute_multiclass_metrics(found.labels, found.probs, class_names=found.class_names,
                                                     breeds=breeds)
                return metrics, notes + ["metrics computed here from predictions.csv (no loss)"]
            metrics = compute_metrics(found.labels, found.prob_dog, breeds=breeds)
        except (OSError, KeyError, ValueError, DataError) as err:
            return None, notes + [f"predictions.csv could not be used ({err})"]
        return metrics, notes + ["metrics computed here from predictions.csv (no loss, default threshold 0.5)"]
    return None, notes


def run_num_classes(split_metrics: dict[str, dict], dataset: Optional[dict]) -> int:
    """The run's number of classes: from its evaluations, else its dataset.json; 2 when neither says."""
    for metrics in split_metrics.values():
        names = metrics.get("class_names")
        if isinstance(names, list) and names:
            return len(names)
    classes = dataset.get("classes") if isinstance(dataset, dict) else None
    return len(classes) if isinstance(classes, list) and len(classes) >= 2 else 2


def evaluated_splits(run_dir: Path) -> list[str]:
    folder = RunDir(run_dir).evaluations
    found = {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
    return [s for s in SPLIT_ORDER] + sorted(found - set(SPLIT_ORDER))


# ---------------------------------------------------------------------------------------------
# Sections


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _headline(split_metrics: dict[str, dict], rows: list[dict]) -> str:
    cards = []
    for split in split_metrics:
        m = split_metrics[split]
        cards.append((f"{split} accuracy", m.get("accuracy")))
        if "top5_accuracy" in m:
            cards.append((f"{split} top-{m.get('top_k') or 5} accuracy", m.get("top5_accuracy")))
        cards.append((f"{split} ROC-AUC", m.get("roc_auc")))
    if rows:
        aucs = [(r.get("val_auc"), r.get("epoch")) for r in rows if _finite([r.get("val_auc")])]
        if aucs:
            best = max(aucs, key=lambda t: t[0])
            cards.append((f"best val AUC during training (epoch {best[1]})", best[0]))
        cards.append(("epochs logged", len(rows)))
    if not cards:
        return _missing("No evaluation results and no training log yet.")
    return '<div class="cards">' + "".join(f'<div class="card"><b>{fmt(v)}</b>{esc(k)}</div>' for k, v in cards) + "</div>"


def _seed_comparison(split_metrics: dict[str, dict], synthetic: Optional[bool]) -> str:
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
        ("cat precision", ("per_class", "cat", "precision"), seed["per_class"]["cat"]["precision"]),
        ("cat recall", ("per_class", "cat", "recall"), seed["per_class"]["cat"]["recall"]),
        ("dog precision", ("per_class", "dog", "precision"), seed["per_class"]["dog"]["precision"]),
        ("dog recall", ("per_class", "dog", "recall"), seed["per_class"]["dog"]["recall"]),
        ("macro F1", ("macro_avg", "f1"), seed["macro_f1"]),
        ("weighted F1", ("weighted_avg", "f1"), seed["weighted_f1"]),
    ]
    columns = list(split_metrics)
    header = ["metric", "seed (its val split, also used for model selection)"]
    header += [f"this run: {s}" + (" (used for checkpoint selection)" if s == "val" else " (held out)") for s in columns]
    rows = [[name, Published(f"{seed_value:g}")] + [ours(split_metrics[s], *path) for s in columns]
            for name, path, seed_value in rows_spec]
    body = _table(header, rows)
    body += f'<p class="warn"><b>Caveat:</b> {esc(seed["note"])} Compare like with like: this run\'s val column is ' \
            "selected on in the same way; only a held-out test split measures generalization.</p>"
    if synthetic:
        body += '<p class="warn">This run used synthetic data: the comparison with the seed is meaningless.</p>'
    if not columns:
        body += _missing("This run has no evaluation results yet, so only the seed's numbers are shown.")
    return body


def _confusion_table(metrics: dict) -> str:
    names = metrics.get("class_names", ["cat", "dog"])
    cm = metrics.get("confusion_matrix")
    if not cm:
        return _missing("no confusion matrix")
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
    body = "".join("<tr><th>" + esc(names[i]) + "</th>" + "".join(f'<td class="num">{fmt(v)}</td>' for v in row) + "</tr>"
                   for i, row in enumerate(cm))
    return f"<table>{head}{body}</table>"


def _split_section(split: str, metrics: Optional[dict], notes: list[str]) -> str:
    if metrics is None:
        return f"<h3>{esc(split)}</h3>" + _missing(
            f"No evaluation of split '{split}' yet ({'; '.join(notes)}). Run python -m toolkit.evaluate "
            f"--model RUN/model.safetensors --shards SHARDS --split {split}.")
    if is_multiclass(metrics):
        return _multiclass_split_section(split, metrics, notes)
    out = [f"<h3>{esc(split)}</h3>"]
    for note in notes + list(metrics.get("notes") or []):
        out.append(f'<p class="warn">{esc(note)}</p>')
    out.append(_kv_table([
        ("samples", metrics.get("num_samples")),
        ("skipped samples", metrics.get("skipped_samples")),
        ("loss (cross-entropy)", metrics.get("loss")),
        ("accuracy", metrics.get("accuracy")),
        ("balanced accuracy", metrics.get("balanced_accuracy")),
        ("ROC-AUC", metrics.get("roc_auc")),
        ("average precision (dog)", metrics.get("average_precision")),
        ("decision threshold on P(dog)", metrics.get("threshold")),
        ("model epoch", metrics.get("model_epoch")),
    ]))
    try:
        out.append("<p>Classification report (sklearn layout):</p><pre>" + esc(classification_report_table(metrics)) + "</pre>")
    except (KeyError, TypeError) as err:
        out.append(_missing(f"classification report unavailable ({err})"))
    out.append("<p>Confusion matrix (rows true, columns predicted):</p>" + _confusion_table(metrics))
    best = metrics.get("best_threshold")
    if isinstance(best, dict):
        at = metrics.get("at_best_threshold") or {}
        tuned_on = metrics.get("threshold_tuned_on", "val")
        out.append(f"<p>Threshold maximising balanced accuracy on {esc(tuned_on)}: <b>{fmt(best.get('value'))}</b> "
                   f"(balanced accuracy there {fmt(best.get('tuning_balanced_accuracy'))}). Reported beside the "
                   f"headline numbers, never used for them. On {esc(split)} at that threshold: accuracy "
                   f"{fmt(at.get('accuracy'))}, balanced accuracy {fmt(at.get('balanced_accuracy'))}.</p>")
        if at.get("per_class"):
            out.append("<details><summary>classification report at the tuned threshold</summary><pre>"
                       + esc(classification_report_table(at)) + "</pre></details>")
    breeds = metrics.get("per_breed")
    if breeds:
        rows = [(b.get("breed"), b.get("class"), b.get("count"), b.get("correct"), b.get("accuracy")) for b in breeds]
        out.append("<p>Per-breed accuracy, worst first:</p><div class='scroll'>"
                   + _table(["breed", "class", "count", "correct", "accuracy"], rows, numeric_from=2) + "</div>")
    return "".join(out)


def _multiclass_split_section(split: str, metrics: dict, notes: list[str]) -> str:
    """One N-class split: headline numbers, the per-class table, largest confusions, per-class accuracy."""
    names = [str(n) for n in metrics["class_names"]]
    num_classes = len(names)
    out = [f"<h3>{esc(split)}</h3>"]
    for note in notes + list(metrics.get("notes") or []):
        out.append(f'<p class="warn">{esc(note)}</p>')
    macro, weighted = metrics.get("macro_avg") or {}, metrics.get("weighted_avg") or {}
    scored = metrics.get("roc_auc_classes_scored")
    out.append(_kv_table([
        ("samples", metrics.get("num_samples")),
        ("skipped samples", metrics.get("skipped_samples")),
        ("classes", num_classes),
        ("loss (cross-entropy)", metrics.get("loss")),
        ("top-1 accuracy", metrics.get("accuracy")),
        (f"top-{metrics.get('top_k') or 5} accuracy", metrics.get("top5_accuracy")),
        ("balanced accuracy", metrics.get("balanced_accuracy")),
        ("macro F1 (over the classes present)", macro.get("f1")),
        ("weighted F1", weighted.get("f1")),
        (f"ROC-AUC (one vs rest, macro over {fmt(scored)} of {num_classes} classes scored)", metrics.get("roc_auc")),
        ("average precision (one vs rest, macro)", metrics.get("average_precision")),
        ("prediction", "the most probable class (no threshold)"),
        ("model epoch", metrics.get("model_epoch")),
    ]))
    per_class, aucs = metrics.get("per_class") or {}, metrics.get("per_class_roc_auc") or {}
    rows = [(name, (per_class.get(name) or {}).get("support"), (per_class.get(name) or {}).get("precision"),
             (per_class.get(name) or {}).get("recall"), (per_class.get(name) or {}).get("f1"), aucs.get(name))
            for name in names]
    out.append("<p>Per class (the classification report; ROC-AUC one vs rest, n/a for a class the split cannot "
               "score):</p><div class='scroll'>"
               + _table(["class", "support", "precision", "recall", "F1", "ROC-AUC"], rows) + "</div>")
    try:
        out.append("<details><summary>classification report (sklearn layout)</summary><pre>"
                   + esc(classification_report_table(metrics)) + "</pre></details>")
    except (KeyError, TypeError) as err:
        out.append(_missing(f"classification report unavailable ({err})"))
    confusions = metrics.get("largest_confusions")
    if confusions:
        rows = [(c.get("true"), c.get("pred"), c.get("count"), c.get("share_of_true")) for c in confusions]
        out.append("<p>Largest confusions (most frequent mistakes):</p>"
                   + _table(["true class", "predicted as", "count", "share of the true class"], rows, numeric_from=2))
    elif confusions is not None:
        out.append("<p>No confusions: every sample was predicted correctly.</p>")
    accuracy = metrics.get("per_class_accuracy")
    if accuracy:
        rows = [(a.get("class"), a.get("count"), a.get("correct"), a.get("accuracy")) for a in accuracy]
        out.append("<p>Accuracy per class, worst first:</p><div class='scroll'>"
                   + _table(["class", "count", "correct", "accuracy"], rows) + "</div>")
    table = _confusion_table(metrics)
    if num_classes > WIDE_CLASS_COUNT:
        out.append(f"<details><summary>confusion matrix, {num_classes} x {num_classes} (rows true, columns "
                   f"predicted)</summary><div class='scroll'>{table}</div></details>")
    else:
        out.append("<p>Confusion matrix (rows true, columns predicted):</p>" + table)
    breeds = metrics.get("per_breed")
    if breeds and not all(b.get("breed") == b.get("class") for b in breeds):  # breeds that are not the classes
        rows = [(b.get("breed"), b.get("class"), b.get("count"), b.get("correct"), b.get("accuracy")) for b in breeds]
        out.append("<p>Per-breed accuracy, worst first:</p><div class='scroll'>"
                   + _table(["breed", "class", "count", "correct", "accuracy"], rows, numeric_from=2) + "</div>")
    return "".join(out)


def _training_section(rows: list[dict], problem: Optional[str]) -> str:
    if not rows:
        return _missing(problem or "metrics.jsonl is empty: no epoch has finished yet.")
    img_s = _finite(r.get("img_per_s") for r in rows)
    steady = img_s[1:] if len(img_s) > 1 else img_s  # the first epoch includes warm-up and compilation
    wait = _finite(r.get("data_wait_frac") for r in rows)
    mem = _finite(r.get("peak_mem_gib") for r in rows)
    seconds = _finite(r.get("epoch_seconds") for r in rows)
    skipped = _finite(r.get("skipped_samples") for r in rows)
    val_skipped = _finite(r.get("val_skipped_samples") for r in rows)
    out = [_kv_table([
        ("epochs logged", len(rows)),
        ("last step", rows[-1].get("step")),
        ("train throughput, median img/s (epochs after the first)", statistics.median(steady) if steady else None),
        ("train throughput, last epoch img/s", img_s[-1] if img_s else None),
        ("time waiting for data, mean fraction", statistics.fmean(wait) if wait else None),
        ("peak accelerator memory, GiB", max(mem) if mem else "n/a (CPU run or not measured)"),
        ("training time, s (sum of epochs)", sum(seconds) if seconds else None),
        ("train samples skipped (all epochs)", int(sum(skipped)) if skipped else 0),
        ("val samples skipped per evaluation (max)", int(max(val_skipped)) if val_skipped else 0),
    ])]
    keys = ["epoch", "step", "lr", "train_loss", "val_loss", "val_acc", "val_auc", "img_per_s", "data_wait_frac",
            "epoch_seconds", "peak_mem_gib", "skipped_samples"]
    table = _table(keys, ([r.get(k) for k in keys] for r in rows), numeric_from=0)
    out.append(f"<details><summary>all {len(rows)} epochs</summary>{table}</details>")
    return "".join(out)


def _dataset_section(dataset: Optional[dict], problem: Optional[str]) -> str:
    if not isinstance(dataset, dict):
        return _missing(f"No dataset summary ({problem or 'dataset.json has an unexpected layout'}).")
    out = [_kv_table([
        ("dataset", dataset.get("dataset")),
        ("synthetic", dataset.get("synthetic")),
        ("shards", dataset.get("shards")),
        ("classes", ", ".join(map(str, dataset.get("classes") or [])) or None),
    ])]
    splits = dataset.get("splits")
    if isinstance(splits, dict) and splits:
        names = [str(c) for c in (dataset.get("classes") or ["cat", "dog"])]
        rows = []
        for split, info in splits.items():
            info = info if isinstance(info, dict) else {}
            counts = info.get("class_counts")
            per_class = [counts.get(n, counts.get(str(i))) if isinstance(counts, dict)
                         else (counts[i] if isinstance(counts, list) and i < len(counts) else None)
                         for i, n in enumerate(names)]
            rows.append([split, info.get("num_samples"), *per_class, info.get("num_shards")])
        if len(names) > WIDE_CLASS_COUNT:  # one row per class instead of one column
            columns = list(zip(*rows))
            body = [[label, *values] for label, values in zip(["samples", *names, "shards"], columns[1:])]
            out.append("<div class='scroll'>" + _table(["", *columns[0]], body) + "</div>")
        else:
            out.append(_table(["split", "samples", *names, "shards"], rows))
    if dataset.get("normalization") is not None:
        out.append("<p>Normalization:</p>" + _render_value(dataset["normalization"]))
    rest = {k: v for k, v in dataset.items()
            if k not in ("dataset", "synthetic", "shards", "classes", "splits", "normalization", "skipped", "unlisted")}
    if rest:
        out.append("<details><summary>other fields</summary>" + _render_value(rest) + "</details>")
    return "".join(out)


def _skipped_section(dataset: Optional[dict], rows: list[dict], split_metrics: dict[str, dict]) -> str:
    out = []
    if isinstance(dataset, dict):
        skipped = dataset.get("skipped") or []
        out.append(f"<p>Source images skipped when the shards were written: <b>{len(skipped)}</b></p>")
        if skipped:
            out.append(_render_value(skipped))
        unlisted = dataset.get("unlisted")
        if unlisted:
            count = unlisted.get("count", len(unlisted.get("names") or [])) if isinstance(unlisted, dict) \
                else len(unlisted) if isinstance(unlisted, list) else unlisted
            out.append(f"<p>Images on disk but in no split list (not used): <b>{esc(count)}</b></p>")
    else:
        out.append(_missing("No dataset.json: skips at shard-writing time are unknown."))
    train_skips = _finite(r.get("skipped_samples") for r in rows)
    out.append(f"<p>Training samples skipped while loading (all epochs): <b>{int(sum(train_skips))}</b></p>")
    for split, m in split_metrics.items():
        if m.get("skipped_samples") is not None:
            out.append(f"<p>Skipped in the {esc(split)} evaluation: <b>{fmt(m.get('skipped_samples'))}</b></p>")
    return "".join(out)


def _plot_sort_key(path: Path) -> tuple[int, str]:
    for i, prefix in enumerate(PLOT_ORDER):
        if path.stem.startswith(prefix):
            return i, path.name
    return len(PLOT_ORDER), path.name


def _plots_section(run_dir: Path, multiclass: bool = False) -> str:
    folder = RunDir(run_dir).plots
    pngs = sorted(folder.glob("*.png"), key=_plot_sort_key) if folder.is_dir() else []
    if not pngs:
        return _missing("No plots yet. Make them with python -m toolkit.visualize --run RUN.")
    out = []
    for path in pngs:
        try:
            data = path.read_bytes()
        except OSError as err:
            out.append(_missing(f"{path.name} could not be read ({err})"))
            continue
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            out.append(_missing(f"{path.name} is not a PNG file; left out"))
            continue
        captions = MULTICLASS_CAPTIONS if multiclass else PLOT_CAPTIONS
        caption = next((c for p, c in captions.items() if path.stem.startswith(p)), "")
        encoded = base64.b64encode(data).decode("ascii")
        out.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{esc(path.stem)}">'
                   f"<figcaption><b>{esc(path.name)}</b> {esc(caption)}</figcaption></figure>")
    return "".join(out)


def _config_section(run_dir: Path) -> str:
    path = RunDir(run_dir).config
    if not path.is_file():
        return _missing("config.yaml not found.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return _missing(f"config.yaml could not be read ({err})")
    return f"<details><summary>config.yaml (resolved, as the run used it)</summary><pre>{esc(text)}</pre></details>"


def _run_name(run_dir: Path) -> str:
    try:
        import yaml

        config = yaml.safe_load(RunDir(run_dir).config.read_text(encoding="utf-8"))
        name = ((config or {}).get("output") or {}).get("run_name")
        if name:
            return str(name)
    except Exception:  # the name is cosmetic; a broken config is reported in its own section
        pass
    return run_dir.resolve().name


# ---------------------------------------------------------------------------------------------


def render_report(run_dir: Path) -> str:
    """The report page as a string (``build_report`` writes it)."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    dataset, dataset_problem = _load_json(run.dataset)
    try:
        rows = run.read_history()
        rows_problem = None if rows or run.history.is_file() else "metrics.jsonl not found"
    except (OSError, UnicodeDecodeError) as err:
        rows, rows_problem = [], f"metrics.jsonl could not be read ({err})"
    rows = [r for r in rows if isinstance(r, dict)]

    split_metrics: dict[str, dict] = {}
    split_parts = []
    for split in evaluated_splits(run_dir):
        metrics, notes = load_split_metrics(run_dir, split)
        if metrics is not None:
            split_metrics[split] = metrics
        split_parts.append(_split_section(split, metrics, notes))

    synthetic = dataset.get("synthetic") if isinstance(dataset, dict) else None
    if synthetic is None and split_metrics:
        flags = [m.get("synthetic") for m in split_metrics.values() if m.get("synthetic") is not None]
        synthetic = any(flags) if flags else None

    name = _run_name(run_dir)
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    num_classes = run_num_classes(split_metrics, dataset)
    multiclass = num_classes > 2
    task = (f"{num_classes} classes; each image is predicted as its most probable class." if multiclass
            else "Cat is class 0, dog class 1 (the positive class).")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Run report: {esc(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Run report: {esc(name)}</h1>",
        f"<p class='muted'>Run folder {esc(run_dir.resolve())}; report generated {esc(generated)}. {esc(task)}</p>",
    ]
    if synthetic:
        parts.append("<div class='banner'>SYNTHETIC DATA: this run trained and evaluated on generated images, not on "
                     "Oxford-IIIT Pet. Its numbers test the pipeline only and say nothing about real accuracy.</div>")
    elif synthetic is None:
        parts.append('<p class="warn">Whether this run used real or synthetic data is unknown (no dataset.json).</p>')
    links = (("comparison", "Seed comparison"), ("evaluation", "Evaluation"), ("training", "Training"),
             ("dataset", "Dataset"), ("skipped", "Skipped samples"), ("plots", "Plots"), ("config", "Config"))
    if multiclass:  # the seed experiment was cat vs dog: nothing to compare an N-class run with
        links = links[1:]
    parts.append("<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in links) + "</nav>")
    parts.append(_headline(split_metrics, rows))
    if not multiclass:
        parts.append(_section("comparison", "Comparison with the seed experiment",
                              _seed_comparison(split_metrics, synthetic)))
    parts.append(_section("evaluation", "Evaluation", "".join(split_parts)))
    parts.append(_section("training", "Training: throughput and memory", _training_section(rows, rows_problem)))
    parts.append(_section("dataset", "Dataset", _dataset_section(dataset, dataset_problem)))
    parts.append(_section("skipped", "Skipped samples", _skipped_section(dataset, rows, split_metrics)))
    parts.append(_section("plots", "Plots", _plots_section(run_dir, multiclass)))
    parts.append(_section("config", "Configuration", _config_section(run_dir)))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def build_report(run_dir: Path) -> Path:
    """Write RUN/report.html and return its path."""
    run_dir = Path(run_dir)
    path = RunDir(run_dir).report
    atomic_write_text(path, render_report(run_dir))
    return path
