"""The README's first command, end to end, shrunk: synthetic data -> shards -> training -> test eval -> report."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.timeout(600)
def test_quickstart_runs_the_whole_job_on_synthetic_data(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.quickstart",
            "--synthetic-images",
            "120",
            "train.epochs=1",
            "scheduler.warmup_epochs=0",
            "data.image_size=32",
            "data.resize_size=36",
            "model.base_width=8",
            "tracking.wandb=offline",
            "eval.num_images=4",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "SYNTHETIC" in proc.stdout
    run = tmp_path / "runs" / "quickstart"
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["num_samples"] > 0 and metrics["synthetic"] is True
    assert (run / "report.html").is_file() and (run / "model.safetensors").is_file()
    assert "report:" in proc.stdout and "model:" in proc.stdout
    assert "wandb sync" in proc.stdout and list((run / "wandb").glob("offline-run-*"))
