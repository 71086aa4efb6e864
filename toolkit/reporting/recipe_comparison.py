"""The recipe comparison's numbers and tables: mean and std over seeds, verdicts, the markdown page.

``toolkit.compare_recipes`` trains and collects the runs; this module only summarizes them.
"""

from __future__ import annotations

from typing import Sequence

from toolkit.evaluation.metrics import decision_rule, format_mean_std, format_number, mean_std
from toolkit.reporting.html import md_cell

# (key in the summary, label) for the headline table; per-class rows come from the classification report
HEADLINE = (
    ("roc_auc", "{split} ROC-AUC"),
    ("accuracy", "{split} accuracy"),
    ("top5_accuracy", "{split} top-{top_k} accuracy"),  # where k is below the class count
    ("balanced_accuracy", "{split} balanced accuracy"),
    ("loss", "{split} loss"),
    ("macro_f1", "macro avg F1"),
    ("weighted_f1", "weighted avg F1"),
    ("best_val_auc", "val ROC-AUC of the kept epoch (train.monitor chose it)"),
    ("best_epoch", "best epoch (on val)"),
    ("train_minutes", "training time per run (min)"),
    ("wall_minutes", "wall time per run (min)"),
)


def summarize(runs: Sequence) -> dict:
    """Mean and std over seeds of every headline number and per-class row (``runs``: compare_recipes' RunResults)."""
    summary = {
        key: mean_std([r.values.get(key) for r in runs]) for key, _ in HEADLINE if any(key in r.values for r in runs)
    }
    per_class = {}
    for row in runs[0].per_class:
        per_class[row] = {m: mean_std([r.per_class[row][m] for r in runs]) for m in ("precision", "recall", "f1")}
        per_class[row]["support"] = runs[0].per_class[row]["support"]
    summary["per_class"] = per_class
    return summary


def verdicts(names: Sequence[str], summaries: dict, split: str = "test") -> list[str]:
    """Plain statements: does the last recipe beat the first by more than the spread over seeds?"""
    if len(names) < 2:
        return []
    base, other = names[0], names[-1]
    lines = []
    for key, label in (("roc_auc", f"{split} ROC-AUC"), ("accuracy", f"{split} accuracy")):
        a, b = summaries[base][key], summaries[other][key]
        if a["mean"] is None or b["mean"] is None:
            lines.append(f"{label}: not available")
            continue
        margin = b["mean"] - a["mean"]
        spreads = [s for s in (a["std"], b["std"]) if s is not None]
        if not spreads:
            lines.append(f"{label}: {other} - {base} = {margin:+.4f} (one seed: no spread to compare with)")
            continue
        spread = max(spreads)
        if margin > spread:
            word = f"{other} is better by more than the spread"
        elif margin < -spread:
            word = f"{base} is better by more than the spread"
        else:
            word = "within the spread over seeds: no clear winner"
        lines.append(f"{label}: {other} - {base} = {margin:+.4f}, largest std over seeds {spread:.4f}: {word}")
    return lines


def markdown_tables(report: dict) -> str:
    """The side-by-side tables: headline metrics, the classification report, and every run."""
    names = list(report["recipes"])
    summaries = {n: report["recipes"][n]["summary"] for n in names}
    split = report["split"]
    tested = [run.get("test_metrics") or {} for n in names for run in report["recipes"][n]["runs"]]
    top_k = next((m.get("top_k") for m in tested if m.get("top_k")), 5)
    rule = "prediction: " + decision_rule(next((m for m in tested if m), {}))
    lines = [
        f"Test split `{split}` ({report['test_samples']} images), {report['epochs']} epochs, "
        f"seeds {', '.join(map(str, report['seeds']))}; mean ± std over seeds (std: sample, n - 1). "
        f"Model selection on val; {rule}.",
        "",
    ]
    delta = len(names) == 2
    lines.append("| metric | " + " | ".join(names) + (f" | {names[1]} - {names[0]} |" if delta else " |"))
    lines.append("|---" * (len(names) + 1 + int(delta)) + "|")
    for key, label in HEADLINE:
        if any(key not in summaries[n] for n in names):  # top-k accuracy of a two-class comparison
            continue
        digits = 1 if key == "best_epoch" else (2 if key.endswith("minutes") else 4)
        cells = [format_mean_std(summaries[n][key], digits) for n in names]
        if delta:
            a, b = summaries[names[0]][key]["mean"], summaries[names[1]][key]["mean"]
            cells.append("n/a" if a is None or b is None else f"{b - a:+.{digits}f}")
        lines.append(f"| {label.format(split=split, top_k=top_k)} | " + " | ".join(cells) + " |")
    per_class = summaries[names[0]]["per_class"]
    rows = list(per_class)
    absent = [row for row in rows if not row.endswith(" avg") and per_class[row]["support"] == 0]
    note = f" ({len(absent)} classes without a sample in it left out)" if absent else ""
    lines += ["", f"Per class on the {split} split (the classification report's layout){note}:", ""]
    header = "| | " + " | ".join(f"{n} precision | {n} recall | {n} F1" for n in names) + " | support |"
    lines += [header, "|---" * (3 * len(names) + 2) + "|"]
    for row in (r for r in rows if r not in absent):
        cells = [
            format_mean_std(summaries[n]["per_class"][row][m]) for n in names for m in ("precision", "recall", "f1")
        ]
        lines.append(
            f"| {md_cell(row)} | " + " | ".join(cells) + f" | {summaries[names[0]]['per_class'][row]['support']} |"
        )
    lines += [
        "",
        "Every run:",
        "",
        f"| recipe | seed | {split} ROC-AUC | {split} accuracy | val ROC-AUC | best epoch | wall (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for run in report["recipes"][name]["runs"]:
            v = run["values"]
            lines.append(
                f"| {name} | {run['seed']} | {format_number(v['roc_auc'])} | {format_number(v['accuracy'])} | "
                f"{format_number(v['best_val_auc'])} | {v['best_epoch']} | {format_number(v['wall_minutes'], 2)} |"
            )
    lines += [""] + [f"- {line}" for line in report["verdicts"]]
    return "\n".join(lines) + "\n"
