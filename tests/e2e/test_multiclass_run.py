"""A four-class image folder end to end: make_shards, one epoch with plots and offline W&B, and finish_run's
outputs for N classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import SMOKE, assert_png, isolate_wandb, offline_contents, train_cli
from toolkit.formats import RunDir
from toolkit.reporting.html import cell_text


def test_a_four_class_run_finishes_with_plots_report_and_wandb(tmp_path, monkeypatch):
    """make_shards on a 4-class image folder, train one epoch with plots and offline W&B: finish_run for N classes."""
    from toolkit.data.shards import pack_dataset

    isolate_wandb(monkeypatch, tmp_path / "home", mode="offline")
    classes = ["Bengal", "beagle", "pug", "Sphynx"]
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 80, (40, 40, 3), dtype=np.uint8)
            pixels[..., c % 3] += np.uint8(120 + 40 * (c // 3))
            Image.fromarray(pixels).save(tmp_path / "folder" / name / f"{name}_{i}.jpg")
    pack_dataset(tmp_path / "folder", tmp_path / "shards", resize_shorter=40, workers=1, show_progress=False)

    args = [
        "--config",
        str(SMOKE),
        f"data.shards={tmp_path / 'shards'}",
        f"output.dir={tmp_path / 'runs'}",
        "output.run_name=four",
        "model.num_classes=null",
        "train.epochs=1",
        "train.batch_size=8",
        "tracking.wandb=offline",
        "eval.plots=true",
        "eval.num_images=4",
    ]
    assert train_cli(args) == 0
    run = RunDir(tmp_path / "runs" / "four")
    made = sorted(p.name for p in run.plots.glob("*.png"))
    assert made == sorted(
        [
            "roc_test.png",
            "pr_test.png",
            "confusion_test.png",
            "per_class_accuracy_test.png",
            "training_curves.png",
            "predictions_test.png",
            "gradcam_test.png",
            "feature_maps_test.png",
            "filters_conv1.png",
            "filters_layer1.png",
        ]
    )
    for name in made:
        assert_png(run.plots / name, min_bytes=500)
    metrics = run.read_metrics("test")
    assert metrics["class_names"] == sorted(classes) and metrics["top_k"] == 4
    page = run.report.read_text(encoding="utf-8")
    assert "top-4 accuracy" not in page and cell_text(metrics["macro_avg"]["f1"]) in page  # top-4 of 4 is 1
    assert page.count("data:image/png;base64,") == len(made)

    logged = offline_contents(run.root)
    for split in ("val", "test"):
        assert logged.summary[f"{split}/accuracy"] == pytest.approx(run.read_metrics(split)["accuracy"])
        assert f"_wandb/visualize/{split}/confusion_matrix" in logged.config
    table = json.loads(next(logged.media.glob("table/test/predictions_*.table.json")).read_text())
    assert {dict(zip(table["columns"], row))["pred"] for row in table["data"]} <= set(classes)
