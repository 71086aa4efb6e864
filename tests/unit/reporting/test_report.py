"""Plots, Grad-CAM / feature maps / filters, the HTML run report and the visualize CLI.

Everything runs on a tiny ResNet (one basic block per stage, width 8) and 32 px images.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from helpers import CAT_DOG, assert_png, two_class_probs
from toolkit.evaluation.metrics import compute_metrics
from toolkit.fileio import append_jsonl, atomic_write_json
from toolkit.formats import RunDir
from toolkit.reporting import interpret, plots, run_plots
from toolkit.reporting.report import build_report
from toolkit.visualize import main as visualize_main

MEAN, STD = [0.48, 0.45, 0.40], [0.26, 0.25, 0.26]
ODD_BREED = "<b>odd&breed"


def tiny_model() -> nn.Module:
    from toolkit.models import create_model

    torch.manual_seed(0)
    return create_model("resnet18", num_classes=2, blocks_per_stage=[1, 1, 1, 1], base_width=8)


def fake_predictions(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    prob = np.clip(0.3 * labels + rng.uniform(0.0, 0.7, n), 0.0, 1.0)
    breeds = [
        ("Bengal", "Persian", ODD_BREED)[i % 3] if y == 0 else ("beagle", "pug")[i % 2] for i, y in enumerate(labels)
    ]
    return labels, prob, breeds


def write_eval(run_dir: Path, split: str, keys, labels, prob, breeds, *, tuning=None) -> dict:
    folder = run_dir / "eval" / split
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "label", "pred", "breed", "prob_cat", "prob_dog"])
        for row in zip(keys, labels, prob, breeds):
            writer.writerow([row[0], int(row[1]), int(row[2] >= 0.5), row[3], f"{1 - row[2]:.6f}", f"{row[2]:.6f}"])
    metrics = compute_metrics(
        labels,
        two_class_probs(prob),
        class_names=CAT_DOG,
        breeds=breeds,
        loss=0.55,
        tuning_labels=None if tuning is None else tuning[0],
        tuning_probs=None if tuning is None else two_class_probs(tuning[1]),
    )
    metrics.update(split=split, skipped_samples=1, synthetic=True, model_epoch=3)
    atomic_write_json(folder / "metrics.json", metrics)
    return metrics


def write_run(run_dir: Path, *, splits=("val", "test"), shards: str = "shards/none") -> Path:
    """A run folder as training and evaluation leave it, minus the model and plots."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "data": {"shards": shards, "image_size": 32, "resize_size": 36},
        "model": {"arch": "resnet18", "blocks_per_stage": [1, 1, 1, 1], "base_width": 8, "num_classes": 2},
        "eval": {"threshold": 0.5, "gradcam_layer": "layer4"},
        "output": {"run_name": "fixture-run"},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for epoch in range(1, 4):
        append_jsonl(
            run_dir / "metrics.jsonl",
            {
                "epoch": epoch,
                "step": 10 * epoch,
                "lr": 1e-3 / epoch,
                "train_loss": 1.0 / epoch,
                "val_loss": float("nan") if epoch == 1 else 1.1 / epoch,
                "val_acc": 0.5 + 0.1 * epoch,
                "val_auc": None if epoch == 1 else 0.6 + 0.1 * epoch,
                "img_per_s": 100.0 + epoch,
                "data_wait_frac": 0.2,
                "epoch_seconds": 3.0,
                "peak_mem_gib": None,
                "skipped_samples": epoch % 2,
            },
        )
    atomic_write_json(
        run_dir / "dataset.json",
        {
            "shards": shards,
            "dataset": "synthetic-pets",
            "synthetic": True,
            "classes": ["cat", "dog"],
            "splits": {"train": {"num_samples": 26, "class_counts": {"cat": 11, "dog": 15}, "num_shards": 1}},
            "normalization": {"mean": MEAN, "std": STD, "computed_on": "train"},
            "skipped": [{"name": "Blue_Point_1", "split": "train", "reason": "undecodable"}],
            "unlisted": {"count": 1, "names": ["Amber_8.jpg"]},
        },
    )
    val = fake_predictions(60, seed=1)
    for split in splits:
        labels, prob, breeds = fake_predictions(40, seed=2) if split != "val" else val
        keys = [f"{split}_{i:03d}" for i in range(len(labels))]
        write_eval(run_dir, split, keys, labels, prob, breeds, tuning=val[:2] if split != "val" else None)
    return run_dir


def save_tiny_model(run_dir: Path) -> nn.Module:
    from toolkit.config import load_config
    from toolkit.formats.model_file import model_metadata, save_model_file
    from toolkit.models import architecture

    cfg = load_config(
        None,
        [
            "model.arch=resnet18",
            "model.blocks_per_stage=[1,1,1,1]",
            "model.base_width=8",
            "data.image_size=32",
            "data.resize_size=36",
        ],
    )
    model = tiny_model()
    save_model_file(
        model,
        run_dir / "model.safetensors",
        model_metadata(
            architecture(model),
            class_names=["cat", "dog"],
            image_size=cfg.data.image_size,
            resize_size=cfg.data.resize_size,
            mean=MEAN,
            std=STD,
            extra={"epoch": 3},
        ),
    )
    return model


# ---------------------------------------------------------------------------------------------
# plots


def test_every_plot_function_writes_a_valid_png(tmp_path):
    labels, prob, _ = fake_predictions(80)
    rows = [
        {
            "epoch": e,
            "lr": 1e-3,
            "train_loss": 1 / e,
            "val_loss": None,
            "val_auc": float("nan"),
            "img_per_s": 50.0,
            "data_wait_frac": 0.1,
        }
        for e in range(1, 4)
    ]
    images = torch.randn(5, 3, 32, 32)
    written = [
        plots.plot_roc(labels, two_class_probs(prob), CAT_DOG, tmp_path / "roc.png"),
        plots.plot_pr(labels, two_class_probs(prob), CAT_DOG, tmp_path / "pr.png"),
        plots.plot_confusion([[30, 10], [5, 35]], tmp_path / "confusion.png", class_names=CAT_DOG),
        plots.plot_training_curves(rows, tmp_path / "curves.png"),
        plots.plot_training_curves([], tmp_path / "curves_empty.png"),
        plots.plot_prediction_grid(
            images,
            [0, 1, 1, 0, 1],
            two_class_probs([0.1, 0.9, 0.2, 0.7, 0.5]),
            tmp_path / "grid.png",
            mean=MEAN,
            std=STD,
            class_names=CAT_DOG,
        ),
        plots.plot_roc([1, 1, 1], two_class_probs([0.2, 0.5, 0.9]), CAT_DOG, tmp_path / "roc_one_class.png"),
        plots.plot_pr([0, 0], two_class_probs([0.2, 0.5]), CAT_DOG, tmp_path / "pr_one_class.png"),
    ]
    for path in written:
        assert_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temp files left


def test_denormalize_inverts_normalization():
    pixels = torch.rand(2, 3, 4, 4)
    normalized = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    np.testing.assert_allclose(plots.denormalize(normalized, MEAN, STD), pixels.permute(0, 2, 3, 1).numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Grad-CAM, feature maps, filters


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_gradcam_shape_range_and_no_side_effects():
    model = tiny_model().train()
    model.layer2.eval()  # mixed modes must come back exactly
    before = _modes(model)
    images = torch.randn(3, 3, 32, 32)
    cams = interpret.gradcam(model, images)
    assert cams.shape == (3, 32, 32) and cams.dtype == torch.float32
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0
    assert _modes(model) == before and _hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())
    same_cams, probs = interpret.explain(model, images)
    torch.testing.assert_close(same_cams, cams)
    with torch.no_grad(), interpret.inspection_mode(model):
        torch.testing.assert_close(probs, interpret.class_probabilities(model(images)))
    for target in (0, [1, 0, 1], torch.tensor([0, 0, 1])):
        assert interpret.gradcam(model, images, layer="layer3", target=target).shape == (3, 32, 32)
    assert _modes(model) == before and _hook_count(model) == 0


class RedDetector(nn.Module):
    """'dog' logit = mean of the red channel: Grad-CAM for dog must light up exactly the red pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.layer4 = nn.Identity()
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer4(x).mean(dim=(2, 3)))


def test_gradcam_points_at_the_evidence():
    image = torch.zeros(1, 3, 16, 16)
    image[0, 0, :4, :4] = 1.0
    for target in (None, 1):  # the prediction is dog, so both explain dog
        cam = interpret.gradcam(RedDetector(), image, target=target)[0]
        assert torch.all(cam[:4, :4] == 1.0) and float(cam[6:, 6:].abs().max()) == 0.0
    flat = torch.full((1, 3, 16, 16), 0.7)  # evidence everywhere: no location to show, not stretched noise
    assert float(interpret.gradcam(RedDetector(), flat).abs().max()) == 0.0


def test_inspection_restores_the_model_even_on_error(monkeypatch):
    model = tiny_model().train()
    before = _modes(model)
    with pytest.raises(ValueError, match="no layer"):
        interpret.gradcam(model, torch.randn(1, 3, 32, 32), layer="layer9")

    def broken(_x):
        raise RuntimeError("boom")

    monkeypatch.setattr(model.fc, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        interpret.gradcam(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="boom"):
        interpret.feature_maps(model, torch.randn(3, 32, 32))
    assert _modes(model) == before and _hook_count(model) == 0


def test_feature_maps_and_filters(tmp_path):
    model = tiny_model()
    maps = interpret.feature_maps(model, torch.randn(3, 32, 32))
    assert list(maps) == list(interpret.DEFAULT_FEATURE_LAYERS)
    assert maps["conv1"].shape == (8, 16, 16) and maps["layer4"].shape == (64, 1, 1)
    image = plots.denormalize(torch.randn(3, 32, 32), MEAN, STD)[0]
    assert_png(interpret.plot_feature_maps(maps, tmp_path / "features.png", image=image))
    assert_png(interpret.plot_filters(model, tmp_path / "conv1.png"))
    assert_png(interpret.plot_filters(model, tmp_path / "layer1.png", layer="layer1", spatial=True), min_bytes=500)
    assert interpret.first_conv(model.layer1, spatial=True)[0] == "0.conv1"


def test_select_examples_puts_confident_mistakes_first():
    labels = [0, 1, 1, 0, 1, 0, 0]
    prob = two_class_probs([0.9, 0.45, 0.2, 0.6, 0.99, 0.05, 0.3])
    assert interpret.select_examples(labels, prob, 5) == [0, 2, 3, 1, 5]  # wrong 0.9, 0.8, 0.6, then correct
    assert interpret.select_examples(labels, prob, 4, max_wrong=1) == [0, 5, 4, 6]  # cat/dog alternating
    assert interpret.select_examples(labels, prob, 20) == [0, 2, 3, 1, 5, 4, 6]


# ---------------------------------------------------------------------------------------------
# report


def test_report_embeds_every_plot_and_compares_with_the_seed(tmp_path):
    run = write_run(tmp_path / "run")
    labels, prob, _ = fake_predictions(40, seed=2)
    pngs = [
        plots.plot_roc(labels, two_class_probs(prob), CAT_DOG, run / "plots" / "roc_test.png"),
        plots.plot_confusion([[1, 2], [3, 4]], run / "plots" / "confusion_test.png", class_names=CAT_DOG),
        plots.plot_training_curves([{"epoch": 1, "train_loss": 1.0}], run / "plots" / "training_curves.png"),
    ]
    page = build_report(RunDir(run)).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "Run report: fixture-run" in page and "SYNTHETIC DATA" in page
    assert "0.9108" in page and "0.8274" in page and "model selection" in page  # the seed, with its caveat
    assert "precision    recall  f1-score   support" in page  # the sklearn layout
    assert "&lt;b&gt;odd&amp;breed" in page and ODD_BREED not in page  # escaped
    assert "Blue_Point_1" in page and "Threshold maximising balanced accuracy" in page
    for external in ("http://", "https://", "<script", "<link"):
        assert external not in page


def test_report_survives_missing_and_broken_parts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = build_report(RunDir(empty)).read_text(encoding="utf-8")
    assert "No evaluation of split &#x27;test&#x27; yet" in page and "No plots yet" in page
    assert "config.yaml not found" in page and "0.9108" not in page  # the task is unknown: no seed comparison

    run = write_run(tmp_path / "run", splits=("val",))
    (run / "eval" / "val" / "metrics.json").write_text("{ torn")
    (run / "plots").mkdir()
    (run / "plots" / "fake.png").write_bytes(b"not a png")
    page = build_report(RunDir(run)).read_text(encoding="utf-8")
    assert "computed here from predictions.csv" in page  # metrics rebuilt from the predictions
    assert "No evaluation of split &#x27;test&#x27; yet" in page
    assert "fake.png is not a PNG file" in page and "data:image/png;base64," not in page


# ---------------------------------------------------------------------------------------------
# visualize


def test_visualize_file_plots_and_report(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert visualize_main(["--run", str(run), "--what", "roc,pr,confusion,curves", "--split", "val"]) == 0
    names = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert names == [
        "confusion_val.png",
        "per_class_accuracy_val.png",
        "pr_val.png",
        "roc_val.png",
        "training_curves.png",
    ]
    for path in (run / "plots").glob("*.png"):
        assert_png(path)
    assert (run / "report.html").read_text().count("data:image/png;base64,") == len(names)
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown plot"):
        visualize_main(["--run", str(run), "--what", "roc,bogus"])


def test_model_plots_are_skipped_with_one_warning_each_without_shards(tmp_path, capsys):
    run = write_run(tmp_path / "run", shards=str(tmp_path / "missing-shards"))
    save_tiny_model(run)
    made = run_plots.make_plots(RunDir(run), what={"grid", "gradcam", "features", "filters"})
    assert sorted(p.name for p in made) == ["filters_conv1.png", "filters_layer1.png"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3 and all("not found" in w for w in warnings)

    (run / "model.safetensors").unlink()
    assert run_plots.make_plots(RunDir(run), what={"filters"}) == []
    assert "cannot load the model" in capsys.readouterr().err


def test_visualize_everything_from_real_shards(tmp_path, capsys):
    from toolkit import make_shards
    from toolkit.data import read_samples

    shards = tmp_path / "shards"
    make_shards.main(
        [
            "--synthetic",
            "24",
            "--source",
            str(tmp_path / "src"),
            "--out",
            str(shards),
            "--workers",
            "1",
            "--resize-shorter",
            "40",
        ]
    )
    samples = list(read_samples(str(shards), "test"))
    labels = np.array([s["label"] for s in samples])
    prob = np.clip(np.where(np.arange(len(labels)) % 3 == 0, 1 - labels, labels) * 0.8 + 0.1, 0, 1)  # some wrong
    run = write_run(tmp_path / "run", splits=(), shards=str(shards))
    write_eval(run, "test", [s["key"] for s in samples], labels, prob, [s["meta"].get("breed", "") for s in samples])
    save_tiny_model(run)

    assert visualize_main(["--run", str(run), "--num-images", "4"]) == 0
    names = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert names == sorted(
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
    for name in names:
        assert_png(run / "plots" / name, min_bytes=500)
    assert (run / "report.html").read_text().count("data:image/png;base64,") == len(names)
    assert "warning" not in capsys.readouterr().err
