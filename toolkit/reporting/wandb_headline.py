"""The W&B Report's text: what was trained on which data, and the headline tables, as Markdown.

Read from the run folders (``config.yaml``, ``dataset.json``, ``eval/<split>/metrics.json``,
``final.json``), because the per-class figures are not logged to W&B.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from toolkit.config import raw_section
from toolkit.evaluation.metrics import decision_rule, format_mean_std, mean_std, reports_top_k
from toolkit.formats import RunDir
from toolkit.reporting.html import md_cell
from toolkit.reporting.wandb_runs import LocalRun

# (metrics.json key, label) of the headline table; per-class rows follow in the classification-report layout.
# ROC-AUC and average precision are one vs rest, macro over the classes the split can score (metrics.py).
HEADLINE = (
    ("roc_auc", "ROC-AUC"),
    ("accuracy", "top-1 accuracy"),
    ("top5_accuracy", "top-{k} accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("average_precision", "average precision"),
    ("loss", "loss"),
)


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def headline_split(run: LocalRun) -> str:
    """The split the run's headline numbers come from: eval.test_split, else val."""
    return raw_section(run.config, "eval").get("test_split") or "val"


def describe_recipe(config: dict) -> str:
    """One line on what was trained, from config.yaml."""
    model, opt, sched = raw_section(config, "model"), raw_section(config, "optimizer"), raw_section(config, "scheduler")
    train, data = raw_section(config, "train"), raw_section(config, "data")
    blocks = "-".join(map(str, model.get("blocks_per_stage") or [])) or "default"
    return (
        f"{model.get('arch', '?')} (blocks {blocks}, width {model.get('base_width', '?')}, "
        f"{model.get('num_classes', '?')} classes), {opt.get('name', '?')} lr {opt.get('lr', '?')} "
        f"weight decay {opt.get('weight_decay', '?')}, {sched.get('name', '?')} schedule, "
        f"{train.get('epochs', '?')} epoch(s) x batch {train.get('batch_size', '?')}, "
        f"precision {train.get('mixed_precision') or 'fp32'}, {data.get('image_size', '?')} px images"
    )


def describe_data(run: LocalRun) -> str:
    """One line on the data, from the run's dataset.json (the shard manifest summary)."""
    info = read_json(RunDir(run.run_dir).dataset)
    if not isinstance(info, dict):
        return f"dataset summary missing ({RunDir(run.run_dir).dataset})"
    splits = info.get("splits") or {}
    sizes = " / ".join(f"{name} {s.get('num_samples', '?')}" for name, s in splits.items() if isinstance(s, dict))
    kind = " (SYNTHETIC stand-in data)" if info.get("synthetic") else ""
    return (
        f"{info.get('dataset', '?')}{kind}: {sizes} images, classes {', '.join(map(md_cell, info.get('classes') or []))}; "
        f"shards `{info.get('shards', '?')}`"
    )


def _seeds(runs: Sequence[LocalRun]) -> str:
    return ", ".join(str(raw_section(r.config, "train").get("seed", "?")) for r in runs)


def header_markdown(groups: dict[str, list[LocalRun]]) -> str:
    """What was trained on which data, per group, and how the numbers below were chosen."""
    lines = ["**What was trained**", ""]
    for name, runs in groups.items():
        lines.append(f"- **{name}** ({len(runs)} run(s), seeds {_seeds(runs)}): {describe_recipe(runs[0].config)}")
    data = list(dict.fromkeys(describe_data(run) for runs in groups.values() for run in runs))
    lines += ["", "**Data**", ""] + [f"- {line}" for line in data]
    splits = sorted({headline_split(run) for runs in groups.values() for run in runs})
    found = next((m for runs in groups.values() for m in map(_split_metrics, runs) if m), {})
    rule = f"predicting {decision_rule(found)}"
    lines += [
        "",
        f"Each run keeps its best epoch by {' / '.join(sorted({_monitor(r) for rs in groups.values() for r in rs}))} "
        f"on val (train.monitor); the headline numbers are on the "
        f"{', '.join(splits)} split {rule}. Local run folders: "
        + ", ".join(f"`{run.run_dir}`" for runs in groups.values() for run in runs),
    ]
    return "\n".join(lines)


def _split_metrics(run: LocalRun) -> Optional[dict]:
    metrics = read_json(RunDir(run.run_dir).eval_metrics(headline_split(run)))
    return metrics if isinstance(metrics, dict) else None


def _monitor(run: LocalRun) -> str:
    """The val metric that chose the run's model (final.json; runs from before train.monitor: val_auc)."""
    final = read_json(RunDir(run.run_dir).final)
    return str(final.get("monitor") or "val_auc") if isinstance(final, dict) else "val_auc"


def _best_val_auc(run: LocalRun) -> Optional[float]:
    final = read_json(RunDir(run.run_dir).final)
    return final.get("best_val_auc") if isinstance(final, dict) else None


def headline_markdown(groups: dict[str, list[LocalRun]]) -> str:
    """Test metrics per group (mean ± std over seeds), then each group's classification report."""
    metrics = {name: [m for m in map(_split_metrics, runs) if m] for name, runs in groups.items()}
    names = list(groups)
    split = ", ".join(sorted({headline_split(run) for runs in groups.values() for run in runs}))
    lines = [
        f"| {split} split | " + " | ".join(f"{n} (n={len(metrics[n])})" for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    first = next((m for found in metrics.values() for m in found), {})
    for key, label in HEADLINE:
        if key == "top5_accuracy" and not reports_top_k(first):
            continue  # top-k of every class is 1 by definition
        label = label.format(k=first.get("top_k"))
        lines.append(
            f"| {label} | "
            + " | ".join(format_mean_std(mean_std([m.get(key) for m in metrics[n]])) for n in names)
            + " |"
        )
    lines.append(
        "| val ROC-AUC of the kept epoch | "
        + " | ".join(format_mean_std(mean_std([_best_val_auc(r) for r in groups[n]])) for n in names)
        + " |"
    )
    if any(len(m) > 1 for m in metrics.values()):
        lines += ["", "Mean ± sample standard deviation over the runs of a group (seeds); one run: its value."]
    for name in names:
        lines += ["", f"**{name}**: classification report", ""] + classification_markdown(metrics[name])
    return "\n".join(lines)


def classification_markdown(runs: Sequence[dict]) -> list[str]:
    """sklearn's classification-report layout as a markdown table, cells mean ± std over runs."""
    if not runs:
        return ["No evaluation found (eval/<split>/metrics.json): the runs did not finish."]
    total = runs[0].get("num_samples", "")
    rows = [(name, [r.get("per_class", {}).get(name, {}) for r in runs]) for name in runs[0].get("class_names", [])]
    # a class with no sample in the split has nothing to show (the averages skip it too)
    rows = [(name, stats) for name, stats in rows if any(s.get("support") for s in stats)]
    rows += [
        (label, [r.get(key, {}) for r in runs])
        for key, label in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg"))
    ]
    lines = ["| | precision | recall | f1-score | support |", "|---|---|---|---|---|"]
    for name, stats in rows:
        support = stats[0].get("support", total) if not name.endswith(" avg") else total
        cells = " | ".join(format_mean_std(mean_std([s.get(k) for s in stats])) for k in ("precision", "recall", "f1"))
        lines.append(f"| {md_cell(name)} | {cells} | {support} |")
        if name == "macro avg":  # sklearn prints accuracy between the classes and the averages
            lines.insert(
                -1, f"| accuracy | | | {format_mean_std(mean_std([r.get('accuracy') for r in runs]))} | {total} |"
            )
    return lines
