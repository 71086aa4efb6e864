"""One self-contained HTML page per run: numbers, plots, data and config in a single file.

The page makes no external requests (inline CSS, every image embedded as base64 PNG), so
it can be mailed, attached to an issue or opened offline years later. Every section copes
with its inputs missing or broken and says so, because reports are often built for runs
that are still going or were cut short. All text from files is HTML-escaped.

The numbers of each split come from ``report_metrics`` (one renderer for any class count); a
run with the seed experiment's classes is also compared with it.
"""

from __future__ import annotations

import base64
import datetime as dt
import statistics
from pathlib import Path
from typing import Optional

from toolkit.fileio import atomic_write_text
from toolkit.formats import HISTORY_FIELDS, RunDir
from toolkit.reporting.html import (
    CSS,
    cell_text,
    esc,
    finite_numbers,
    kv_table,
    load_json,
    missing,
    render_value,
    section,
    table,
)
from toolkit.reporting.report_metrics import (
    WIDE_CLASS_COUNT,
    has_seed_task,
    headline,
    load_split_metrics,
    seed_comparison,
    split_section,
)

SPLIT_ORDER = ("val", "test")
# The run's plots in page order, each with its caption (by file-name prefix); visualize writes them.
PLOT_CAPTIONS = {
    "training_curves": "Per-epoch losses, validation accuracy and ROC-AUC, learning rate, throughput and data wait.",
    "roc_": "One-vs-rest ROC curves of the scored classes (two classes: the positive class; many: those with the "
    "lowest ROC-AUC, the macro AUC in the title); the dashed diagonal is chance.",
    "pr_": "One-vs-rest precision-recall curves of the same classes; each class's share of the split is its chance "
    "level.",
    "confusion_": "Confusion matrix normalised by true class, classes ordered worst recall first (cell values and "
    "counts printed up to 10 classes).",
    "per_class_accuracy_": "Accuracy (recall) per true class, worst first; the dashed line is the overall accuracy.",
    "predictions_": "Example predictions with their top classes, de-normalized with the run's own mean/std; mistakes "
    "in red.",
    "gradcam_": "Grad-CAM of the most probable class: the most confident mistakes first, then correct predictions.",
    "feature_maps_": "Activations of conv1 and each stage for one test image (first channels).",
    "filters_": "Learned convolution filters, each scaled on its own.",
}


def report_splits(run: RunDir) -> list[str]:
    """The splits the report has a section for: train, val, test always (missing ones say so), then any other."""
    folder = run.evaluations
    found = {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
    return [s for s in SPLIT_ORDER] + sorted(found - set(SPLIT_ORDER))


def run_num_classes(split_metrics: dict[str, dict], dataset: Optional[dict]) -> Optional[int]:
    """The run's number of classes: from its evaluations, else its dataset.json; None when neither says."""
    for metrics in split_metrics.values():
        names = metrics.get("class_names")
        if isinstance(names, list) and names:
            return len(names)
    classes = dataset.get("classes") if isinstance(dataset, dict) else None
    return len(classes) if isinstance(classes, list) and len(classes) >= 2 else None


def _training_section(rows: list[dict], problem: Optional[str]) -> str:
    if not rows:
        return missing(problem or "metrics.jsonl is empty: no epoch has finished yet.")
    img_s = finite_numbers(r.get("img_per_s") for r in rows)
    steady = img_s[1:] if len(img_s) > 1 else img_s  # the first epoch includes warm-up and compilation
    wait = finite_numbers(r.get("data_wait_frac") for r in rows)
    mem = finite_numbers(r.get("peak_mem_gib") for r in rows)
    seconds = finite_numbers(r.get("epoch_seconds") for r in rows)
    skipped = finite_numbers(r.get("skipped_samples") for r in rows)
    val_skipped = finite_numbers(r.get("val_skipped_samples") for r in rows)
    out = [
        kv_table(
            [
                ("epochs logged", len(rows)),
                ("last step", rows[-1].get("step")),
                (
                    "train throughput, median img/s (epochs after the first)",
                    statistics.median(steady) if steady else None,
                ),
                ("train throughput, last epoch img/s", img_s[-1] if img_s else None),
                ("time waiting for data, mean fraction", statistics.fmean(wait) if wait else None),
                ("peak accelerator memory, GiB", max(mem) if mem else "n/a (CPU run or not measured)"),
                ("training time, s (sum of epochs)", sum(seconds) if seconds else None),
                ("train samples skipped (all epochs)", int(sum(skipped)) if skipped else 0),
                ("val samples skipped per evaluation (max)", int(max(val_skipped)) if val_skipped else 0),
            ]
        )
    ]
    keys = [name for name in HISTORY_FIELDS if name != "val_skipped_samples"]  # that one is in the summary above
    epochs = table(keys, ([r.get(k) for k in keys] for r in rows), numeric_from=0)
    out.append(f"<details><summary>all {len(rows)} epochs</summary>{epochs}</details>")
    return "".join(out)


def _class_weights(run: RunDir) -> Optional[list]:
    """The training loss's per-class weights from config.yaml, or None (unweighted, or no readable config)."""
    try:
        weights = (run.read_config().get("train") or {}).get("class_weights")
    except Exception:  # a broken config is reported in its own section
        return None
    return weights if isinstance(weights, list) else None


def _dataset_section(dataset: Optional[dict], problem: Optional[str], weights: Optional[list] = None) -> str:
    if not isinstance(dataset, dict):
        return missing(f"No dataset summary ({problem or 'dataset.json has an unexpected layout'}).")
    out = [
        kv_table(
            [
                ("dataset", dataset.get("dataset")),
                ("synthetic", dataset.get("synthetic")),
                ("shards", dataset.get("shards")),
                ("classes", ", ".join(map(str, dataset.get("classes") or [])) or None),
            ]
        )
    ]
    splits = dataset.get("splits")
    if isinstance(splits, dict) and splits:
        names = [str(c) for c in (dataset.get("classes") or [])]
        rows = []
        for split, info in splits.items():
            info = info if isinstance(info, dict) else {}
            counts = info.get("class_counts")
            per_class = [
                counts.get(n, counts.get(str(i)))
                if isinstance(counts, dict)
                else (counts[i] if isinstance(counts, list) and i < len(counts) else None)
                for i, n in enumerate(names)
            ]
            rows.append([split, info.get("num_samples"), *per_class, info.get("num_shards")])
        if weights is not None and len(weights) == len(names):  # train.class_weights, as the run resolved it
            rows.append(["train loss weight", None, *[round(float(w), 4) for w in weights], None])
        if len(names) > WIDE_CLASS_COUNT:  # one row per class instead of one column
            columns = list(zip(*rows))
            body = [[label, *values] for label, values in zip(["samples", *names, "shards"], columns[1:])]
            out.append("<div class='scroll'>" + table(["", *columns[0]], body) + "</div>")
        else:
            out.append(table(["split", "samples", *names, "shards"], rows))
    if dataset.get("normalization") is not None:
        out.append("<p>Normalization:</p>" + render_value(dataset["normalization"]))
    rest = {
        k: v
        for k, v in dataset.items()
        if k not in ("dataset", "synthetic", "shards", "classes", "splits", "normalization", "skipped", "unlisted")
    }
    if rest:
        out.append("<details><summary>other fields</summary>" + render_value(rest) + "</details>")
    return "".join(out)


def _skipped_section(dataset: Optional[dict], rows: list[dict], split_metrics: dict[str, dict]) -> str:
    out = []
    if isinstance(dataset, dict):
        skipped = dataset.get("skipped") or []
        out.append(f"<p>Source images skipped when the shards were written: <b>{len(skipped)}</b></p>")
        if skipped:
            out.append(render_value(skipped))
        unlisted = dataset.get("unlisted")
        if unlisted:
            count = (
                unlisted.get("count", len(unlisted.get("names") or []))
                if isinstance(unlisted, dict)
                else len(unlisted)
                if isinstance(unlisted, list)
                else unlisted
            )
            out.append(f"<p>Images on disk but in no split list (not used): <b>{esc(count)}</b></p>")
    else:
        out.append(missing("No dataset.json: skips at shard-writing time are unknown."))
    train_skips = finite_numbers(r.get("skipped_samples") for r in rows)
    out.append(f"<p>Training samples skipped while loading (all epochs): <b>{int(sum(train_skips))}</b></p>")
    for split, m in split_metrics.items():
        if m.get("skipped_samples") is not None:
            out.append(f"<p>Skipped in the {esc(split)} evaluation: <b>{cell_text(m.get('skipped_samples'))}</b></p>")
    return "".join(out)


def _plot_sort_key(path: Path) -> tuple[int, str]:
    for i, prefix in enumerate(PLOT_CAPTIONS):
        if path.stem.startswith(prefix):
            return i, path.name
    return len(PLOT_CAPTIONS), path.name


def _plots_section(run: RunDir) -> str:
    folder = run.plots
    pngs = sorted(folder.glob("*.png"), key=_plot_sort_key) if folder.is_dir() else []
    if not pngs:
        return missing("No plots yet. Make them with python -m toolkit.visualize --run RUN.")
    out = []
    for path in pngs:
        try:
            data = path.read_bytes()
        except OSError as err:
            out.append(missing(f"{path.name} could not be read ({err})"))
            continue
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            out.append(missing(f"{path.name} is not a PNG file; left out"))
            continue
        caption = next((c for p, c in PLOT_CAPTIONS.items() if path.stem.startswith(p)), "")
        encoded = base64.b64encode(data).decode("ascii")
        out.append(
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{esc(path.stem)}">'
            f"<figcaption><b>{esc(path.name)}</b> {esc(caption)}</figcaption></figure>"
        )
    return "".join(out)


def _config_section(run: RunDir) -> str:
    path = run.config
    if not path.is_file():
        return missing("config.yaml not found.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return missing(f"config.yaml could not be read ({err})")
    return f"<details><summary>config.yaml (resolved, as the run used it)</summary><pre>{esc(text)}</pre></details>"


def _run_name(run: RunDir) -> str:
    try:
        name = (run.read_config().get("output") or {}).get("run_name")
        if name:
            return str(name)
    except Exception:  # the name is cosmetic; a broken config is reported in its own section
        pass
    return run.root.resolve().name


# ---------------------------------------------------------------------------------------------


def render_report(run: RunDir) -> str:
    """The report page as a string (``build_report`` writes it)."""
    dataset, dataset_problem = load_json(run.dataset)
    try:
        rows = run.read_history()
        rows_problem = None if rows or run.history.is_file() else "metrics.jsonl not found"
    except (OSError, UnicodeDecodeError) as err:
        rows, rows_problem = [], f"metrics.jsonl could not be read ({err})"
    rows = [r for r in rows if isinstance(r, dict)]

    split_metrics: dict[str, dict] = {}
    split_parts = []
    for split in report_splits(run):
        metrics, notes = load_split_metrics(run, split)
        if metrics is not None:
            split_metrics[split] = metrics
        split_parts.append(split_section(split, metrics, notes))

    synthetic = dataset.get("synthetic") if isinstance(dataset, dict) else None
    if synthetic is None and split_metrics:
        flags = [m.get("synthetic") for m in split_metrics.values() if m.get("synthetic") is not None]
        synthetic = any(flags) if flags else None

    name = _run_name(run)
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    num_classes = run_num_classes(split_metrics, dataset)
    names = next((m.get("class_names") for m in split_metrics.values() if m.get("class_names")), None)
    task = (
        f"{num_classes} classes"
        + (f": {', '.join(map(str, names[:5]))}{', ...' if len(names) > 5 else ''}." if names else ".")
        if num_classes
        else "Classes unknown (no evaluation yet)."
    )
    compare_with_seed = has_seed_task(split_metrics)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Run report: {esc(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Run report: {esc(name)}</h1>",
        f"<p class='muted'>Run folder {esc(run.root.resolve())}; report generated {esc(generated)}. {esc(task)}</p>",
    ]
    if synthetic:
        parts.append(
            "<div class='banner'>SYNTHETIC DATA: this run trained and evaluated on generated images, not on "
            "Oxford-IIIT Pet. Its numbers test the pipeline only and say nothing about real accuracy.</div>"
        )
    elif synthetic is None:
        parts.append('<p class="warn">Whether this run used real or synthetic data is unknown (no dataset.json).</p>')
    links = (
        ("comparison", "Seed comparison"),
        ("evaluation", "Evaluation"),
        ("training", "Training"),
        ("dataset", "Dataset"),
        ("skipped", "Skipped samples"),
        ("plots", "Plots"),
        ("config", "Config"),
    )
    if not compare_with_seed:  # the seed experiment had another task: nothing to compare with
        links = links[1:]
    parts.append("<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in links) + "</nav>")
    final, _ = load_json(run.final)
    parts.append(headline(split_metrics, rows, final))
    if compare_with_seed:
        parts.append(
            section("comparison", "Comparison with the seed experiment", seed_comparison(split_metrics, synthetic))
        )
    parts.append(section("evaluation", "Evaluation", "".join(split_parts)))
    parts.append(section("training", "Training: throughput and memory", _training_section(rows, rows_problem)))
    parts.append(section("dataset", "Dataset", _dataset_section(dataset, dataset_problem, _class_weights(run))))
    parts.append(section("skipped", "Skipped samples", _skipped_section(dataset, rows, split_metrics)))
    parts.append(section("plots", "Plots", _plots_section(run)))
    parts.append(section("config", "Configuration", _config_section(run)))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def build_report(run: RunDir) -> Path:
    """Write RUN/report.html and return its path."""
    atomic_write_text(run.report, render_report(run))
    return run.report
