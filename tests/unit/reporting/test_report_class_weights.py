"""The report shows train.class_weights under the class counts when the run used them (issue 31)."""

from __future__ import annotations

import json

import yaml

from toolkit.formats import RunDir
from toolkit.reporting.report import render_report

DATASET = {
    "classes": ["major", "minor"],
    "splits": {
        "train": {"num_samples": 200, "class_counts": {"major": 180, "minor": 20}, "num_shards": 1},
        "val": {"num_samples": 40, "class_counts": {"major": 20, "minor": 20}, "num_shards": 1},
    },
}


def report_of(tmp_path, weights) -> str:
    run = RunDir(tmp_path)
    run.config.write_text(yaml.safe_dump({"train": {"class_weights": weights}}))
    run.dataset.write_text(json.dumps(DATASET))
    return render_report(run)


def test_the_weights_used_are_shown_with_the_class_counts(tmp_path):
    html = report_of(tmp_path, [200 / 360, 5.0])
    assert "train loss weight" in html and "0.5556" in html and "5.0" in html
    assert "180" in html and "20" in html  # the train counts beside them


def test_an_unweighted_run_shows_no_weights(tmp_path):
    assert "train loss weight" not in report_of(tmp_path, "none")
