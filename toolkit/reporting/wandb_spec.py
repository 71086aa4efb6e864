"""Build a Weights & Biases Report from local training runs, for review in W&B.

    python -m toolkit.wandb_report --project pets-toolkit --group strong --runs-dir runs/compare/runs
    python -m toolkit.wandb_report --project pets-toolkit --runs 1a2b3c4d 5e6f7g8h --dry-run
    python -m toolkit.wandb_report --publish runs/wandb-report.json

The runs are found on disk: every run folder that logged to W&B holds ``wandb/run_id.txt`` and
the W&B run log ``wandb/*run-*/run-ID.wandb``, which is read back to learn which keys the run
really logged. The report has a header (model, recipe, data), the headline table of test metrics
(mean ± std over seeds when runs named ``<recipe>-seed<N>`` form a group, as ``compare_recipes``
names them), and panels over the runs: validation curves per epoch, loss and learning rate per
step, throughput, the ROC/PR/confusion charts per split, the predictions table and a run comparer.
A panel is only added when some selected run logged its keys, so no panel is ever empty by typo.

With an API key and a network the report is saved and its URL printed. Otherwise (no key,
``WANDB_MODE=offline``, no network, ``--dry-run``) the report's specification is written as JSON
with the commands that upload the runs and publish it later (``--publish FILE``). Nothing here
writes to a run folder or touches training; the spec file is the only output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from toolkit.config import raw_section
from toolkit.errors import DataError, UsageError
from toolkit.fileio import atomic_write_json
from toolkit.formats import RunDir
from toolkit.redaction import redact_secrets
from toolkit.reporting.tracking import has_api_key
from toolkit.reporting.wandb_headline import header_markdown, headline_markdown, headline_split, read_json
from toolkit.reporting.wandb_runs import LocalRun, RunLog, find_runs, read_run_log, select_runs

SPEC_FORMAT = "pets-toolkit/wandb-report/1"
SPEC_FILE = "wandb-report.json"
INSTALL_HINT = 'pip install -e ".[report]"'
# W&B refuses these characters in a project name, and names longer than this.
BAD_PROJECT_CHARS = "/\\#?%:"
MAX_PROJECT_LEN = 128
MAX_TITLE_LEN = 128  # wandb_workspaces' Report.title limit


# Keys as toolkit.reporting.tracking.Tracker logs them: the loop logs train/* every few steps and
# epoch/<metrics.jsonl column> once per epoch at the optimizer step; evaluation logs summaries,
# charts (<split>/roc_curve, ...) and the predictions table.
STEP_X = "Step"  # W&B's name for the history step (the optimizer step here)
EPOCH_X = "epoch/epoch"  # the epoch number logged in every epoch row
LINE_SECTIONS = (
    (
        "Validation per epoch",
        EPOCH_X,
        (("val ROC-AUC", "epoch/val_auc"), ("val loss", "epoch/val_loss"), ("val accuracy", "epoch/val_acc")),
    ),
    ("Training per step", STEP_X, (("train loss", "train/loss"), ("learning rate", "train/lr"))),
    (
        "Throughput per epoch",
        EPOCH_X,
        (("images per second", "epoch/img_per_s"), ("fraction of time waiting for data", "epoch/data_wait_frac")),
    ),
)
CHART_SUFFIXES = {"roc_curve": "ROC", "pr_curve": "precision-recall", "confusion_matrix": "confusion matrix"}
PREDICTIONS_SUFFIX = "/predictions"
# <split>/<name> in the run summary (top5_accuracy: runs of more than two classes only)
SUMMARY_COLUMNS = ("roc_auc", "accuracy", "top5_accuracy", "average_precision", "loss")
# Grid sizes (24 columns): three line plots or charts a row, tables and comparer full width.
LAYOUT = {"line": (8, 6), "chart": (8, 8), "table": (24, 14), "media": (24, 10), "run_comparer": (24, 12)}

# ---------------------------------------------------------------------------------------------
# The spec: the report as plain JSON, checked against what the runs logged


def _group(runs: Sequence[LocalRun]) -> dict[str, list[LocalRun]]:
    groups: dict[str, list[LocalRun]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def panel_references(panel: dict) -> list[tuple[str, str]]:
    """(key, kind) pairs a panel reads from the runs; each must have been logged for the panel to draw."""
    kind = panel["type"]
    if kind == "line":
        return [(k, "scalar") for k in ([panel["x"]] if panel["x"] != STEP_X else []) + list(panel["y"])]
    if kind == "chart":
        return [(panel["chart"], "chart"), (panel["table"], "table")]
    if kind == "table":
        return [(panel["table"], "table")]
    if kind == "media":
        return [(k, "image") for k in panel["images"]]
    return []  # run_comparer: the config, which every run has


def _by_split(keys: Sequence[str]) -> list[str]:
    """Splits in the order a reader wants: val first, then the rest as logged."""
    splits = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in keys))
    return sorted(splits, key=lambda s: (s != "val", splits.index(s)))


def candidate_sections(logs: Sequence[RunLog]) -> list[tuple[str, list[dict]]]:
    """Every section the report could have: fixed line plots, plus the charts, tables and images logged."""
    sections = [
        (
            title,
            [
                {"type": "line", "title": f"{label} per {'step' if x == STEP_X else 'epoch'}", "x": x, "y": [y]}
                for label, y in panels
            ],
        )
        for title, x, panels in LINE_SECTIONS
    ]
    charts: dict[str, dict] = {}
    for log in logs:
        for key, config in log.charts.items():
            charts.setdefault(key, config)
    for split in _by_split([k for k in charts if k.rsplit("/", 1)[-1] in CHART_SUFFIXES]):
        panels = []
        for suffix in CHART_SUFFIXES:
            config = charts.get(f"{split}/{suffix}")
            if config is not None:
                table = _chart_table(config) or f"{split}/{suffix}_table"
                panels.append(
                    {
                        "type": "chart",
                        "title": f"{split} {CHART_SUFFIXES[suffix]}",
                        "chart": f"{split}/{suffix}",
                        "table": table,
                        "vega": config.get("panelDefId", ""),
                        "fields": config.get("fieldSettings", {}),
                        "strings": config.get("stringSettings", {}),
                    }
                )
        sections.append((f"Curves on {split}", panels))
    keys = {k: v for log in logs for k, v in log.keys.items()}
    tables = [
        {"type": "table", "title": f"{k.rsplit('/', 1)[0]} predictions with images", "table": k}
        for k in sorted(keys)
        if k.endswith(PREDICTIONS_SUFFIX) and keys[k] == "table"
    ]
    images = sorted(k for k, kind in keys.items() if kind == "image")
    media = [{"type": "media", "title": "plots from the runs' reports", "images": images}] if images else []
    sections.append(("Predictions", tables + media))
    sections.append(("Where the configs differ", [{"type": "run_comparer", "title": "config and summary per run"}]))
    return sections


def _chart_table(config: dict) -> Optional[str]:
    """The table key a logged chart reads (``summaryTable(tableKey=...)`` in its query)."""
    for query in config.get("userQuery", {}).get("queryFields", []):
        for sub in query.get("fields", []):
            if sub.get("name") == "summaryTable":
                for arg in sub.get("args", []):
                    if arg.get("name") == "tableKey":
                        return arg.get("value")
    return None


def missing_references(panel: dict, logged: dict[str, str]) -> list[str]:
    return [f"{key} ({kind})" for key, kind in panel_references(panel) if logged.get(key) != kind]


def check_spec(spec: dict, logged_by_run: dict[str, dict[str, str]]) -> list[str]:
    """Problems: a panel or column that reads a key none of its runs logged (with that kind)."""
    logged: dict[str, str] = {}
    for run_id in (i for rs in spec["runsets"] for i in rs["runs"]):
        for key, kind in logged_by_run.get(run_id, {}).items():
            logged.setdefault(key, kind)
    problems = [f"column {key}: not logged" for key in spec["columns"] if logged.get(key) != "scalar"]
    for block in spec["blocks"]:
        for panel in block.get("panels", []):
            missing = missing_references(panel, logged)
            if missing:
                problems.append(f"panel {panel.get('title')!r}: {', '.join(missing)} not logged")
    return problems


def default_title(groups: dict[str, list[LocalRun]]) -> str:
    first = groups[next(iter(groups))][0]
    info = read_json(RunDir(first.run_dir).dataset)
    dataset = info.get("dataset") if isinstance(info, dict) else None
    title = (
        f"{raw_section(first.config, 'model').get('arch', 'model')} on {dataset or 'the pets data'}: "
        + " vs ".join(groups)
    )
    return title if len(title) <= MAX_TITLE_LEN else title[: MAX_TITLE_LEN - 3] + "..."


def build_spec(
    runs: Sequence[LocalRun], logs: dict[str, RunLog], *, project: str, entity: Optional[str], title: Optional[str]
) -> tuple[dict, list[str]]:
    """The report as JSON, and notes on the panels left out because no selected run logged their keys."""
    groups = _group(runs)
    logged: dict[str, str] = {}
    for log in logs.values():
        for key, kind in log.keys.items():
            logged.setdefault(key, kind)
    splits = list(dict.fromkeys(headline_split(run) for run in runs))
    columns = [f"{s}/{m}" for s in splits for m in SUMMARY_COLUMNS if logged.get(f"{s}/{m}") == "scalar"]
    blocks: list[dict] = [
        {"type": "markdown", "text": header_markdown(groups)},
        {"type": "h2", "text": "Headline"},
        {"type": "markdown", "text": headline_markdown(groups)},
    ]
    notes = []
    for section, panels in candidate_sections(list(logs.values())):
        kept = []
        for panel in panels:
            missing = missing_references(panel, logged)
            if missing:
                notes.append(f"left out panel {panel['title']!r}: no selected run logged {', '.join(missing)}")
            else:
                kept.append(panel)
        if kept:
            blocks += [{"type": "h2", "text": section}, {"type": "panel_grid", "panels": kept}]
    spec = {
        "format": SPEC_FORMAT,
        "entity": entity,
        "project": project,
        "title": title or default_title(groups),
        "description": f"{len(runs)} run(s) in {len(groups)} group(s), built by python -m toolkit.wandb_report",
        "runsets": [{"name": name, "runs": [r.run_id for r in members]} for name, members in groups.items()],
        "columns": columns,
        "runs": [
            {
                "id": r.run_id,
                "name": r.name,
                "group": r.group,
                "run_dir": str(r.run_dir),
                "logged_to_project": logs[r.run_id].project,
                "needs_sync": [str(p) for p in r.needs_sync],
            }
            for r in runs
        ],
        "blocks": blocks,
    }
    return redact_secrets(spec), notes


# ---------------------------------------------------------------------------------------------
# The spec as a W&B Report (wandb-workspaces), saving it, and the spec file


def reports_api() -> Any:
    """``wandb_workspaces.reports.v2``, or a one-line UsageError saying how to install it."""
    os.environ.setdefault("WANDB_SILENT", "true")  # our own lines say what happened
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    try:
        import wandb_workspaces.reports.v2 as wr  # optional extra: only this command needs it
    except ImportError:
        raise UsageError(f"W&B Reports need the wandb-workspaces package: {INSTALL_HINT}") from None
    return wr


def _wr_panel(wr: Any, panel: dict) -> Any:
    kind = panel["type"]
    w, h = LAYOUT[kind]
    layout = wr.Layout(w=w, h=h)
    if kind == "line":
        return wr.LinePlot(title=panel["title"], x=panel["x"], y=list(panel["y"]), layout=layout)
    if kind == "chart":
        return wr.CustomChart(
            query={"summaryTable": {"tableKey": panel["table"]}},
            chart_name=panel["vega"],
            chart_fields=panel["fields"],
            chart_strings=panel["strings"],
            layout=layout,
        )
    if kind == "table":
        return wr.WeavePanelSummaryTable(table_name=panel["table"], layout=layout)
    if kind == "media":
        return wr.MediaBrowser(title=panel["title"], media_keys=list(panel["images"]), layout=layout)
    return wr.RunComparer(diff_only="split", layout=layout)


def to_wandb_report(spec: dict, entity: str = "") -> Any:
    """A ``wr.Report`` built from the spec; nothing is sent until ``.save()``.

    Each runset selects its runs by W&B run id, so the report shows exactly the runs chosen here.
    """
    wr = reports_api()

    def runsets() -> list:
        return [
            wr.Runset(
                entity=entity,
                project=spec["project"],
                name=rs["name"],
                filters=f"Metric('ID') in {list(rs['runs'])!r}",
                pinned_columns=[f"summary:{key}" for key in spec["columns"]],
            )
            for rs in spec["runsets"]
        ]

    blocks = []
    for block in spec["blocks"]:
        kind = block["type"]
        if kind == "h2":
            blocks.append(wr.H2(block["text"]))
        elif kind == "markdown":
            blocks.append(wr.MarkdownBlock(block["text"]))
        elif kind == "panel_grid":
            blocks.append(wr.PanelGrid(runsets=runsets(), panels=[_wr_panel(wr, p) for p in block["panels"]]))
        else:
            raise UsageError(f"unknown block type {kind!r} in the report spec; rebuild it with this toolkit")
    return wr.Report(
        project=spec["project"],
        entity=entity,
        title=spec["title"],
        description=spec["description"],
        blocks=blocks,
        width="fluid",
    )


def save_report(spec: dict, entity: Optional[str]) -> str:
    """Save the report to W&B (network) and return its URL."""
    import wandb  # heavy; only for the default entity of the logged-in user

    entity = entity or spec.get("entity") or wandb.Api().default_entity
    report = to_wandb_report(spec, entity)
    report.save()
    return report.url


def offline_reason(dry_run: bool) -> Optional[str]:
    """Why the report cannot be saved now (so the spec is written instead), or None."""
    if dry_run:
        return "--dry-run"
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}"
    if not has_api_key():
        return "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    return None


def read_spec(path: Path) -> dict:
    hint = "write one with python -m toolkit.wandb_report --project P --group G --dry-run"
    spec = read_json(path) if path.is_file() else None
    if spec is None:
        raise UsageError(f"{path} is not a readable JSON report spec; {hint}")
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise UsageError(f"{path} is not a report spec of this toolkit (format {SPEC_FORMAT}); {hint}")
    for key in ("project", "title", "description", "runsets", "columns", "blocks"):
        if key not in spec:
            raise UsageError(f"report spec {path} lacks {key!r}; {hint}")
    return spec


def _one_line(err: BaseException) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return redact_secrets(text if len(text) <= 200 else text[:197] + "...")


def sync_commands(spec: dict) -> list[str]:
    """``wandb sync`` for the offline runs not uploaded yet, into the report's project."""
    target = f"-p {spec['project']}" + (f" -e {spec['entity']}" if spec.get("entity") else "")
    return [f"wandb sync {target} {folder}" for run in spec["runs"] for folder in run["needs_sync"]]


# ---------------------------------------------------------------------------------------------
# Command line


def check_project(name: str) -> str:
    bad = sorted({c for c in name if c in BAD_PROJECT_CHARS})
    if not name or bad or len(name) > MAX_PROJECT_LEN:
        why = f"contains {' '.join(bad)}" if bad else "is empty" if not name else f"is {len(name)} characters long"
        raise UsageError(
            f"--project {name[:40]!r} is not a valid W&B project name: it {why} (W&B project names have "
            f"no {' '.join(BAD_PROJECT_CHARS)} and at most {MAX_PROJECT_LEN} characters)"
        )
    return name


def publish(path: Path, project: Optional[str], entity: Optional[str]) -> None:
    """Rebuild the report from a spec file and save it."""
    spec = read_spec(path)
    reports_api()
    check_project(project or spec["project"])
    spec = {**spec, "project": project or spec["project"], "entity": entity or spec.get("entity")}
    reason = offline_reason(False)
    if reason is not None:
        raise UsageError(f"cannot publish: {reason}")
    try:
        url = save_report(spec, spec["entity"])
    except UsageError:
        raise
    except Exception as err:  # network, permissions, a project without the runs
        commands = sync_commands(spec)
        hint = f"; upload the runs first: {commands[0]} (and the others)" if commands else ""
        raise DataError(f"could not save the report to W&B ({_one_line(err)}){hint}") from None
    print(f"saved the W&B report: {url}")


def write_spec(spec: dict, path: Path, reason: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, spec)
    panels = sum(len(b.get("panels", [])) for b in spec["blocks"])
    print(
        f"wrote the W&B report spec to {path} ({panels} panels over {len(spec['runs'])} run(s); not saved to W&B: "
        f"{reason})"
    )
    commands = sync_commands(spec)
    if commands:
        print("upload the offline runs:")
        print("\n".join(f"  {c}" for c in commands))
    print(f"then publish the report: python -m toolkit.wandb_report --publish {path}")


def collect(
    runs_dir: Path,
    *,
    project: str,
    group: Optional[Sequence[str]] = None,
    run_ids: Optional[Sequence[str]] = None,
    entity: Optional[str] = None,
    title: Optional[str] = None,
) -> dict:
    """The spec for the runs asked for, with notes and warnings printed."""
    runs = select_runs(find_runs(runs_dir), runs_dir, group, run_ids)
    logs = {run.run_id: read_run_log(run.log_files, run.run_id) for run in runs}
    spec, notes = build_spec(runs, logs, project=project, entity=entity, title=title)
    problems = check_spec(spec, {i: log.keys for i, log in logs.items()})
    if problems:  # build_spec only keeps logged keys: this is a bug, never user input
        raise AssertionError("; ".join(problems))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for run in runs:  # an uploaded run stays in its project; offline ones are synced into ours
        logged_to = logs[run.run_id].project
        if logged_to and logged_to != project and not run.needs_sync:
            print(
                f"warning: run {run.name} ({run.run_id}) is in W&B project {logged_to!r}, the report looks in "
                f"{project!r}: it will not show there",
                file=sys.stderr,
            )
    return spec


def make_report(
    runs_dir: Path,
    *,
    project: str,
    group: Optional[Sequence[str]] = None,
    run_ids: Optional[Sequence[str]] = None,
    entity: Optional[str] = None,
    title: Optional[str] = None,
    out: Optional[Path] = None,
    dry_run: bool = False,
) -> None:
    """Save the report of the selected runs to W&B, or write its spec (``out``, default RUNS_DIR/SPEC_FILE)
    with the commands that upload the runs and publish it later."""
    check_project(project)
    reason = offline_reason(dry_run)
    if reason is None:
        reports_api()  # saving needs the extra: say so before any work
    spec = collect(runs_dir, project=project, group=group, run_ids=run_ids, entity=entity, title=title)
    if reason is None:
        try:
            print(f"saved the W&B report: {save_report(spec, entity)}")
            commands = sync_commands(spec)
            if commands:
                print(
                    "its panels fill in once the offline runs are uploaded:\n" + "\n".join(f"  {c}" for c in commands)
                )
            return
        except Exception as err:  # no network, permissions: keep the spec for later
            reason = f"saving failed: {_one_line(err)}"
    write_spec(spec, out or runs_dir / SPEC_FILE, reason)
