"""The W&B Report command: every panel reads a key the runs really logged, and it all works offline.

Two tiny runs (``tiny-seed0``, ``tiny-seed1``: one group of two seeds) are trained with W&B
offline; their ``.wandb`` logs are read back and compared with what training wrote to its own
files, then the report spec is built with ``--dry-run`` and checked panel by panel against them.
No network is used: saving is only exercised with ``Report.save`` replaced.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import error_line, isolate_wandb, run_in_process, train_args, train_cli
from toolkit.fileio import read_jsonl
from toolkit.reporting import wandb_spec
from toolkit.reporting.wandb_runs import load_run, read_run_log, read_wandb_records
from toolkit.reporting.wandb_spec import SPEC_FILE, STEP_X
from toolkit.wandb_report import main

PROJECT = "pets-toolkit-tests"
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a real W&B key


def report_cli(*argv: str) -> int:
    return run_in_process(main, list(argv))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_shards) -> SimpleNamespace:
    """Two one-epoch offline runs of one recipe; the first also logs its plots as images."""
    root = tmp_path_factory.mktemp("wandb-report")
    with pytest.MonkeyPatch.context() as mp:
        isolate_wandb(mp, root / "home")
        for seed, plots in ((0, "true"), (1, "false")):
            code = train_cli(
                train_args(
                    synthetic_shards,
                    root / "runs",
                    f"tiny-seed{seed}",
                    "train.epochs=1",
                    f"train.seed={seed}",
                    "tracking.wandb=offline",
                    f"tracking.project={PROJECT}",
                    "tracking.group=tiny",
                    f"eval.plots={plots}",
                    "eval.num_images=2",
                )
            )
            assert code == 0
    folders = [root / "runs" / f"tiny-seed{seed}" for seed in (0, 1)]
    ids = [(f / "wandb" / "run_id.txt").read_text().strip() for f in folders]
    return SimpleNamespace(root=root, dir=root / "runs", folders=folders, ids=ids)


@pytest.fixture
def offline(monkeypatch, tmp_path) -> None:
    isolate_wandb(monkeypatch, tmp_path / "home")


def spec_references(panel: dict) -> list[tuple[str, str]]:
    """What a spec panel reads, by its own fields (independent of the module's panel_references)."""
    if panel["type"] == "line":
        return [(panel["x"], "scalar")] * (panel["x"] != STEP_X) + [(y, "scalar") for y in panel["y"]]
    if panel["type"] == "chart":
        return [(panel["chart"], "chart"), (panel["table"], "table")]
    if panel["type"] == "table":
        return [(panel["table"], "table")]
    if panel["type"] == "media":
        return [(key, "image") for key in panel["images"]]
    assert panel["type"] == "run_comparer", panel
    return []


def spec_panels(spec: dict) -> list[dict]:
    return [panel for block in spec["blocks"] if block["type"] == "panel_grid" for panel in block["panels"]]


# ---------------------------------------------------------------------------------------------
# Reading the runs back


def read_logged_keys(run_dir: Path) -> dict[str, str]:
    """Every key the W&B run of a run folder logged, with its kind (scalar, table, image, chart)."""
    run = load_run(Path(run_dir))
    assert run is not None, f"{run_dir} has no W&B run"
    return read_run_log(run.log_files, run.run_id).keys


def test_logged_keys_read_back_match_what_training_wrote(runs):
    for folder in runs.folders:
        keys = read_logged_keys(folder)
        epoch_columns = {k for row in read_jsonl(folder / "metrics.jsonl") for k, v in row.items() if v is not None}
        assert {f"epoch/{k}" for k in epoch_columns} <= {k for k, kind in keys.items() if kind == "scalar"}
        assert keys["train/loss"] == keys["train/lr"] == "scalar"
        for split in ("val", "test"):
            metrics = json.loads((folder / "eval" / split / "metrics.json").read_text())
            for name in ("roc_auc", "accuracy", "average_precision", "loss"):
                assert keys[f"{split}/{name}"] == "scalar" and metrics[name] is not None
            for chart in ("roc_curve", "pr_curve", "confusion_matrix"):
                assert keys[f"{split}/{chart}"] == "chart" and keys[f"{split}/{chart}_table"] == "table"
        assert keys["test/predictions"] == "table"
        assert not any(key.startswith("_") for key in keys)  # W&B's own _step, _runtime, _wandb
    with_plots, without = (read_logged_keys(f) for f in runs.folders)
    assert "roc_test" in with_plots and with_plots["roc_test"] == "image"
    assert not any(kind == "image" for kind in without.values())


def test_runs_follow_the_wandb_conventions_users_look_for(runs):
    """Epoch x-axis and best-of-run summaries, the recipe as group, model aliases, the shards as a dataset artifact."""
    for folder in runs.folders:
        records = [
            r for f in sorted((folder / "wandb").glob("offline-run-*/run-*.wandb")) for r in read_wandb_records(f)
        ]
        kinds = [r.WhichOneof("record_type") for r in records]
        metrics = {r.metric.name or r.metric.glob_name: r.metric for r, k in zip(records, kinds) if k == "metric"}
        assert metrics["epoch/*"].step_metric == "epoch/epoch"
        assert metrics["epoch/val_auc"].summary.max and metrics["epoch/val_acc"].summary.max
        assert metrics["epoch/val_loss"].summary.min
        assert next(r.run for r, k in zip(records, kinds) if k == "run").run_group == "tiny"
        artifacts = [r.artifact for r, k in zip(records, kinds) if k == "artifact"]
        dataset = [a for a in artifacts if a.type == "dataset"]
        model = [a for a in artifacts if a.type == "model"]
        assert len(dataset) == 1 and dataset[0].name.startswith("shards-synthetic")
        assert any(entry.path == "info.json" for entry in dataset[0].manifest.contents)
        assert len(model) == 1 and {"best", "latest"} <= set(model[0].aliases)
        assert json.loads(model[0].metadata)["dataset_artifact"] == dataset[0].name


def test_a_torn_run_log_is_read_up_to_the_tear(runs, tmp_path):
    """A run still writing (or killed) has a half-written last chunk: read what is complete, no error."""
    (log,) = (runs.folders[1] / "wandb").glob("offline-run-*/run-*.wandb")
    data = log.read_bytes()
    torn = tmp_path / "run-torn.wandb"
    torn.write_bytes(data[: len(data) // 2])
    full, part = (set(wandb_spec.read_run_log([f], "x").keys) for f in (log, torn))
    assert part and part < full  # the run record and early summaries, not the last history row


# ---------------------------------------------------------------------------------------------
# The spec, offline


def test_dry_run_spec_panels_read_only_logged_keys(runs, offline, capsys):
    assert report_cli("--project", PROJECT, "--group", "tiny", "--runs-dir", str(runs.dir), "--dry-run") == 0
    out = capsys.readouterr().out
    path = runs.dir / SPEC_FILE
    spec = json.loads(path.read_text())
    assert f"python -m toolkit.wandb_report --publish {path}" in out
    for folder in runs.folders:  # the offline runs are uploaded into the report's project first
        (sync_dir,) = (folder / "wandb").glob("offline-run-*")
        assert f"wandb sync -p {PROJECT} {sync_dir}" in out

    assert spec["project"] == PROJECT and spec["runsets"] == [{"name": "tiny", "runs": runs.ids}]
    logged = [read_logged_keys(folder) for folder in runs.folders]
    for panel in spec_panels(spec):
        for key, kind in spec_references(panel):
            assert any(keys.get(key) == kind for keys in logged), f"{panel['title']!r} reads {key} ({kind}): not logged"
    for column in spec["columns"]:
        assert all(keys.get(column) == "scalar" for keys in logged), column

    lines = {y for p in spec_panels(spec) if p["type"] == "line" for y in p["y"]}
    assert lines == {
        "epoch/val_auc",
        "epoch/val_loss",
        "epoch/val_acc",
        "train/loss",
        "train/lr",
        "epoch/img_per_s",
        "epoch/data_wait_frac",
    }
    charts = {p["chart"] for p in spec_panels(spec) if p["type"] == "chart"}
    assert charts == {f"{s}/{c}" for s in ("val", "test") for c in ("roc_curve", "pr_curve", "confusion_matrix")}
    kinds = [p["type"] for p in spec_panels(spec)]
    assert kinds.count("table") == 1 and kinds.count("media") == 1 and kinds.count("run_comparer") == 1
    assert "test/roc_auc" in spec["columns"]


def test_headline_is_mean_and_std_over_the_seeds_in_the_classification_report_layout(runs, offline, capsys):
    out_file = runs.root / "headline.json"
    assert report_cli("--project", PROJECT, "--group", "tiny", "--runs-dir", str(runs.dir), "--out", str(out_file)) == 0
    spec = json.loads(out_file.read_text())
    text = "\n".join(b["text"] for b in spec["blocks"] if b["type"] == "markdown")
    metrics = [json.loads((f / "eval" / "test" / "metrics.json").read_text()) for f in runs.folders]
    aucs = [m["roc_auc"] for m in metrics]
    assert f"| ROC-AUC | {statistics.fmean(aucs):.4f} ± {statistics.stdev(aucs):.4f} |" in text
    for row in ("| cat |", "| dog |", "| accuracy | | |", "| macro avg |", "| weighted avg |"):
        assert row in text
    assert "| | precision | recall | f1-score | support |" in text
    assert "resnet18" in text and "synthetic-pets" in text  # what was trained, on which data


def test_runs_by_id_and_the_spec_becomes_a_wandb_report_offline(runs, offline, capsys):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    out_file = runs.root / "one.json"
    assert (
        report_cli(
            "--project",
            PROJECT,
            "--runs",
            runs.ids[1],
            "--runs-dir",
            str(runs.dir),
            "--dry-run",
            "--out",
            str(out_file),
        )
        == 0
    )
    spec = json.loads(out_file.read_text())
    assert [r["id"] for r in spec["runs"]] == [runs.ids[1]]
    assert not any(p["type"] == "media" for p in spec_panels(spec))  # this run logged no images
    assert "±" not in "".join(b.get("text", "") for b in spec["blocks"])  # one run: its values

    report = wandb_spec.to_wandb_report(spec)
    assert isinstance(report, wr.Report)
    view = report._to_model().spec.model_dump_json(by_alias=True)  # W&B's own report JSON; no network with no entity
    for panel in spec_panels(spec):
        for key, _ in spec_references(panel):
            assert json.dumps(key)[1:-1] in view, key
    assert runs.ids[1] in view and runs.ids[0] not in view


def test_publish_rebuilds_the_report_from_the_spec_and_saves_it(runs, offline, monkeypatch, capsys):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    path = runs.root / "publish.json"
    assert (
        report_cli(
            "--project", PROJECT, "--group", "tiny", "--runs-dir", str(runs.dir), "--dry-run", "--out", str(path)
        )
        == 0
    )
    spec = json.loads(path.read_text())

    assert report_cli("--publish", str(path)) == 2  # still offline: one line, nothing sent
    assert "cannot publish: WANDB_MODE=offline" in error_line(capsys.readouterr().err)

    saved = []
    monkeypatch.setattr(wr.Report, "save", lambda self, *a, **k: saved.append(self) or self)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://wandb.test/{self.entity}/{self.project}"))
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert report_cli("--publish", str(path), "--entity", "team") == 0
    assert f"saved the W&B report: https://wandb.test/team/{PROJECT}" in capsys.readouterr().out
    (report,) = saved
    assert report.title == spec["title"]
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert [len(g.panels) for g in grids] == [len(b["panels"]) for b in spec["blocks"] if b["type"] == "panel_grid"]
    assert all(
        rs.entity == "team" and rs.project == PROJECT and all(i in rs.filters for i in runs.ids)
        for g in grids
        for rs in g.runsets
    )


# ---------------------------------------------------------------------------------------------
# One-line errors


def test_unknown_group_or_run_is_one_line_exit_2(runs, offline, capsys):
    assert report_cli("--project", PROJECT, "--group", "nope", "--runs-dir", str(runs.dir), "--dry-run") == 2
    assert "no runs of group 'nope'" in error_line(capsys.readouterr().err)
    assert report_cli("--project", PROJECT, "--runs", "zzzz9999", "--runs-dir", str(runs.dir), "--dry-run") == 2
    assert "zzzz9999 not found" in error_line(capsys.readouterr().err)
