"""A run folder written before the one-path change (eval format 1) still reads everywhere.

``tests/fixtures/run_format_v1`` was written by the toolkit at commit 84cefa9 (a 2-epoch, width-4
ResNet on 60 synthetic images): its ``predictions.csv`` holds one ``prob_dog`` column, and its
``metrics.json`` has no ``format_version``, no per-class ROC-AUC and no largest confusions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import ROOT, assert_png, error_line, pack_tiny, run_in_process
from toolkit.evaluate import main as evaluate_main
from toolkit.export import main as export_main
from toolkit.formats import RunDir
from toolkit.formats.run_dir import EVAL_FORMAT_VERSION
from toolkit.reporting.report import build_report
from toolkit.visualize import main as visualize_main

FIXTURE = ROOT / "tests" / "fixtures" / "run_format_v1"


@pytest.fixture
def old_run(tmp_path: Path) -> RunDir:
    return RunDir(shutil.copytree(FIXTURE, tmp_path / "run"))


def test_version_1_predictions_read_as_class_probabilities(old_run):
    assert "prob_dog" in old_run.predictions("test").read_text().splitlines()[0]  # the old layout, truly
    found = old_run.read_predictions("test")
    assert found.class_names == ["cat", "dog"]  # from metrics.json beside it
    assert all(len(row) == 2 and abs(sum(row) - 1.0) < 1e-6 for row in found.probs)
    assert found.preds == [int(row[1] >= 0.5) for row in found.probs]
    assert "format_version" not in old_run.read_metrics("test")


def test_report_and_plots_of_an_old_run(old_run, capsys):
    assert visualize_main(["--run", str(old_run.root), "--what", "roc,pr,confusion,curves", "--no-report"]) == 0
    made = sorted(p.name for p in old_run.plots.glob("*.png"))
    assert made == [
        "confusion_test.png",
        "per_class_accuracy_test.png",
        "pr_test.png",
        "roc_test.png",
        "training_curves.png",
    ]
    for name in made:
        assert_png(old_run.plots / name)
    page = build_report(old_run).read_text(encoding="utf-8")
    test = old_run.read_metrics("test")
    assert "0.9108" in page  # cat vs dog: compared with the seed experiment
    assert f"{test['accuracy']:.4f}" in page and "Threshold maximising balanced accuracy" in page
    assert "warning" not in capsys.readouterr().err


def test_evaluate_and_export_read_an_old_model_file(old_run, tmp_path, capsys):
    shards = pack_tiny(tmp_path / "data")
    out = tmp_path / "eval"
    assert (
        run_in_process(
            evaluate_main,
            [
                "--model",
                str(old_run.model),
                "--shards",
                str(shards),
                "--split",
                "test",
                "--out",
                str(out),
                "--num-workers",
                "0",
            ],
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format_version"] == EVAL_FORMAT_VERSION and metrics["class_names"] == ["cat", "dog"]
    assert metrics["model_epoch"] == old_run.read_metrics("test")["model_epoch"]
    # export reads the file's metadata; a width-4 model has no timm architecture, said in one line
    code = run_in_process(export_main, ["--run", str(old_run.root), "--out", str(tmp_path / "exported")])
    assert code == 2 and "base_width 4" in error_line(capsys.readouterr().err)
