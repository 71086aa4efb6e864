"""Everything after evaluation for N classes: plots, the HTML report, W&B and predict.

The inputs are synthetic (seeded random probabilities with some signal, tiny models, a tiny
image folder), so the file runs in seconds; the same functions draw two classes, pinned by
test_report, test_tracking and test_predict.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import assert_png, isolate_wandb, offline_contents, run_in_process, save_tiny_model
from toolkit.evaluation.evaluator import EvalResult
from toolkit.evaluation.metrics import compute_metrics, confusion_order, summary_values
from toolkit.fileio import append_jsonl, atomic_write_json
from toolkit.formats import Predictions, RunDir
from toolkit.models.sources import load_model_file
from toolkit.reporting import interpret, plots, run_plots
from toolkit.reporting.finish import prediction_rows
from toolkit.reporting.html import cell_text
from toolkit.reporting.report import build_report
from toolkit.reporting.tracking import Tracker
from toolkit.visualize import main as visualize_main

ODD = "<b>odd&class"  # a class name that must be escaped in HTML
NAMES = ["Abyssinian", ODD, "beagle", "american_pit_bull_terrier", "pug"]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def png_text(path: Path) -> dict:
    with Image.open(path) as image:
        image.load()
        return dict(image.text)


def fake_multiclass(n: int, num_classes: int, seed: int = 0, absent: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """Labels [n] and softmax probabilities [n, C] that favour the true class; ``absent`` classes never occur."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(num_classes) if c not in absent]
    labels = rng.choice(present, n)
    logits = rng.normal(0.0, 1.0, (n, num_classes))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return labels, probs / probs.sum(axis=1, keepdims=True)


def write_multiclass_run(
    run_dir: Path, names=NAMES, splits=("val", "test"), shards: str = "shards/none", absent: tuple = ()
) -> Path:
    """A run folder as training and evaluation leave it for an N-class task, minus the model and plots."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "data": {"shards": shards, "image_size": 32, "resize_size": 36},
        "model": {"arch": "resnet18", "blocks_per_stage": [1, 1, 1, 1], "base_width": 8, "num_classes": len(names)},
        "eval": {"threshold": 0.5, "gradcam_layer": "layer4", "test_split": "test"},
        "output": {"run_name": "breeds-run"},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for epoch in (1, 2):
        append_jsonl(
            run_dir / "metrics.jsonl",
            {
                "epoch": epoch,
                "step": 5 * epoch,
                "lr": 1e-3,
                "train_loss": 2.0 / epoch,
                "val_loss": 2.1 / epoch,
                "val_acc": 0.3 * epoch,
                "val_auc": 0.6,
                "img_per_s": 50.0,
                "data_wait_frac": 0.1,
                "epoch_seconds": 2.0,
            },
        )
    run = RunDir(run_dir)
    counts = {}
    for k, split in enumerate(splits):
        labels, probs = fake_multiclass(90, len(names), seed=k + 1, absent=absent)
        predictions = Predictions(
            keys=[f"{split}_{i:03d}" for i in range(len(labels))],
            labels=labels.tolist(),
            probs=probs.tolist(),
            preds=probs.argmax(axis=1).tolist(),
            breeds=[""] * len(labels),
            class_names=list(names),
        )
        metrics = compute_metrics(labels, probs, class_names=names, loss=1.2)
        metrics.update(split=split, skipped_samples=0, synthetic=True, model_epoch=2)
        run.write_evaluation(split, metrics, predictions)
        counts[split] = {
            "num_samples": len(labels),
            "num_shards": 1,
            "class_counts": {name: int((labels == c).sum()) for c, name in enumerate(names)},
        }
    atomic_write_json(
        run_dir / "dataset.json",
        {
            "shards": shards,
            "dataset": "image-folder",
            "synthetic": True,
            "classes": list(names),
            "splits": counts,
            "skipped": [],
        },
    )
    return run_dir


# ---------------------------------------------------------------------------------------------
# plots


def test_multiclass_plot_functions_write_valid_pngs(tmp_path):
    labels, probs = fake_multiclass(120, len(NAMES))
    metrics = compute_metrics(labels, probs, class_names=NAMES)
    images = torch.randn(6, 3, 32, 32)
    written = [
        plots.plot_roc(labels, probs, NAMES, tmp_path / "roc.png"),
        plots.plot_pr(labels, probs, NAMES, tmp_path / "pr.png"),
        plots.plot_confusion(metrics["confusion_matrix"], tmp_path / "confusion.png", class_names=NAMES),
        plots.plot_per_class_accuracy(
            metrics["per_class_accuracy"], tmp_path / "per_class_accuracy.png", overall=metrics["accuracy"]
        ),
        plots.plot_prediction_grid(
            images,
            labels[:6].tolist(),
            probs[:6].tolist(),
            tmp_path / "grid.png",
            mean=MEAN,
            std=STD,
            class_names=NAMES,
            captions=[f"k{i}" for i in range(6)],
        ),
        interpret.plot_gradcam(
            images,
            torch.rand(6, 32, 32),
            labels[:6].tolist(),
            probs[:6].tolist(),
            tmp_path / "gradcam.png",
            mean=MEAN,
            std=STD,
            class_names=NAMES,
        ),
        plots.plot_roc([2, 2, 2], probs[:3], NAMES, tmp_path / "roc_one_class.png"),  # undefined: a note
        plots.plot_per_class_accuracy([], tmp_path / "per_class_empty.png"),
    ]
    for path in written:
        assert_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temp files left


def test_confusion_plot_is_ordered_worst_recall_first(tmp_path):
    names = [f"breed_{i:02d}" for i in range(37)]
    labels, probs = fake_multiclass(600, 37, seed=4)
    matrix = compute_metrics(labels, probs, class_names=names)["confusion_matrix"]
    path = plots.plot_confusion(matrix, tmp_path / "confusion.png", class_names=names)
    assert_png(path)
    order = [names[i] for i in confusion_order(matrix)]
    text = png_text(path)
    assert json.loads(text["Rows"]) == order and json.loads(text["Columns"]) == order
    with Image.open(path) as image:  # sized to the class count: 37 classes need a large figure
        assert min(image.size) > 900

    # a split with 3 of 37 classes (the mini test split): rows are the classes present, worst first, and the
    # columns start with them (the diagonal stays the diagonal), followed by the absent classes predicted
    labels, probs = fake_multiclass(90, 37, seed=5, absent=tuple(range(3, 37)))
    matrix = np.asarray(compute_metrics(labels, probs, class_names=names)["confusion_matrix"])
    path = plots.plot_confusion(matrix, tmp_path / "confusion_3.png", class_names=names)
    rows, columns = json.loads(png_text(path)["Rows"]), json.loads(png_text(path)["Columns"])
    order = [names[i] for i in confusion_order(matrix)]
    assert rows == order[:3] and columns[:3] == rows
    predicted = {names[j] for j in np.flatnonzero(matrix.sum(axis=0))}
    assert set(columns) == set(rows) | predicted and columns == [n for n in order if n in set(columns)]


def test_worst_classes_are_the_metrics_per_class_auc_worst_first():
    labels, probs = fake_multiclass(150, len(NAMES), seed=2)
    metrics = compute_metrics(labels, probs, class_names=NAMES)
    worst = plots.worst_classes(labels, probs)
    assert [auc for _, auc in worst] == sorted(metrics["per_class_roc_auc"][NAMES[c]] for c, _ in worst)
    assert {NAMES[c]: auc for c, auc in worst} == pytest.approx(metrics["per_class_roc_auc"])
    assert np.mean([auc for _, auc in worst]) == pytest.approx(metrics["roc_auc"])


def test_titles_and_example_selection_use_the_argmax():
    row = [0.1, 0.2, 0.2, 0.45, 0.05]  # a tie between 1 and 2: the lower index, as argmax
    assert plots.top_classes(row) == [(3, 0.45), (1, 0.2), (2, 0.2)]
    text, right = plots.prediction_title(3, row, ["a", "b", "c", "d", "e"])
    assert right and text == "true d / pred d\nd 0.45, b 0.20, c 0.20"
    text, right = plots.prediction_title(0, row, NAMES)
    assert not right and text.startswith("true Abyssinian\npred american_pit_bull_terrier\n")
    assert text.endswith("american_pit_bull_terrier 0.45\n<b>odd&class 0.20\nbeagle 0.20")
    # two classes: the threshold on P(class 1) decides, the title lists both classes
    assert plots.prediction_title(1, [0.3, 0.7], ["cat", "dog"], threshold=0.8) == (
        "true dog / pred cat\ndog 0.70, cat 0.30",
        False,
    )

    labels = [0, 1, 2, 2, 1, 0, 2]
    probs = np.array(
        [
            [0.8, 0.1, 0.1],  # right 0.8
            [0.6, 0.3, 0.1],  # wrong 0.6
            [0.1, 0.1, 0.8],  # right 0.8
            [0.05, 0.9, 0.05],  # wrong 0.9
            [0.2, 0.7, 0.1],  # right 0.7
            [0.5, 0.3, 0.2],  # right 0.5
            [0.3, 0.3, 0.4],
        ]
    )  # right 0.4
    assert interpret.select_examples(labels, probs, 3) == [3, 1, 0]  # mistakes, most confident first
    assert interpret.select_examples(labels, probs, 5, max_wrong=1) == [3, 0, 4, 2, 5]  # classes take turns
    assert interpret.select_examples(labels, probs, 20) == [3, 1, 0, 4, 2, 5, 6]
    # two classes take the threshold rule on P(class 1)
    binary = [0.9, 0.45, 0.2, 0.6, 0.99, 0.05, 0.3]
    two = np.stack([1 - np.asarray(binary), binary], axis=1)
    assert interpret.select_examples([0, 1, 1, 0, 1, 0, 0], two, 5) == [0, 2, 3, 1, 5]
    assert interpret.select_examples([0, 1, 1, 0, 1, 0, 0], two, 5, threshold=0.95) == [2, 1, 5, 4, 6]


# ---------------------------------------------------------------------------------------------
# visualize and the report


def test_visualize_and_report_for_n_classes(tmp_path, capsys):
    run = write_multiclass_run(tmp_path / "run")
    assert visualize_main(["--run", str(run), "--what", "roc,pr,confusion,curves", "--split", "test"]) == 0
    names = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert names == [
        "confusion_test.png",
        "per_class_accuracy_test.png",
        "pr_test.png",
        "roc_test.png",
        "training_curves.png",
    ]
    for name in names:
        assert_png(run / "plots" / name)
    assert "warning" not in capsys.readouterr().err
    found = RunDir(run).read_predictions("test")
    expected = compute_metrics(found.labels, found.probs, class_names=NAMES)["confusion_matrix"]
    assert json.loads(png_text(run / "plots" / "confusion_test.png")["Rows"]) == [
        NAMES[i] for i in confusion_order(expected)
    ]

    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(names)
    metrics = RunDir(run).read_metrics("test")
    assert "top-5 accuracy" not in page  # top-5 of 5 classes is 1 by definition: not shown
    assert cell_text(metrics["macro_avg"]["f1"]) in page and cell_text(metrics["weighted_avg"]["f1"]) in page
    assert f"macro over {metrics['roc_auc_classes_scored']} of 5 classes scored" in page
    assert "Largest confusions" in page
    worst = metrics["largest_confusions"][0]
    assert (
        f"<tr><td>{html.escape(worst['true'])}</td><td>{html.escape(worst['pred'])}</td>"
        f'<td class="num">{worst["count"]}</td>' in page
    )
    for name in NAMES:  # the per-class table: one row per class, names escaped
        support = metrics["per_class"][name]["support"]
        assert f'<tr><td>{html.escape(name)}</td><td class="num">{support}</td>' in page, name
    assert ODD not in page and "&lt;b&gt;odd&amp;class" in page
    assert "Accuracy per class, worst first" in page and "per_class_accuracy_test.png" in page
    assert "0.9108" not in page and "Seed comparison" not in page  # the cat/dog seed experiment is left out
    assert "Threshold maximising" not in page and "P(dog)" not in page
    assert "5 classes: Abyssinian, &lt;b&gt;odd&amp;class" in page and "the most probable class" in page


def test_report_rebuilds_n_class_metrics_from_the_predictions(tmp_path):
    run = write_multiclass_run(tmp_path / "run", splits=("test",))
    found = RunDir(run).read_predictions("test")
    (run / "eval" / "test" / "metrics.json").write_text("{ torn")
    page = build_report(RunDir(run)).read_text(encoding="utf-8")
    assert "metrics computed here from predictions.csv (no loss" in page
    rebuilt = compute_metrics(found.labels, found.probs, class_names=found.class_names)
    assert cell_text(rebuilt["macro_avg"]["f1"]) in page and "&lt;b&gt;odd&amp;class" in page


def test_image_plots_for_n_classes(tmp_path, monkeypatch, capsys):
    run = write_multiclass_run(tmp_path / "run", splits=("test",))
    save_tiny_model(run / "model.safetensors", class_names=NAMES, seed=0)
    model, meta = load_model_file(run / "model.safetensors")
    torch.manual_seed(0)
    monkeypatch.setattr(
        run_plots,
        "load_images",
        lambda shards, split, keys, meta: {key: torch.randn(3, 32, 32) for key in keys},
    )
    made = run_plots.make_plots(RunDir(run), what={"grid", "gradcam", "features"}, shards=str(tmp_path), num_images=4)
    assert sorted(p.name for p in made) == ["feature_maps_test.png", "gradcam_test.png", "predictions_test.png"]
    for path in made:
        assert_png(path, min_bytes=500)
    assert "warning" not in capsys.readouterr().err

    images = torch.randn(3, 3, 32, 32)
    cams, probs = interpret.explain(model, images)
    assert probs.shape == (3, 5) and torch.allclose(probs.sum(dim=1), torch.ones(3))
    with torch.no_grad(), interpret.inspection_mode(model):
        torch.testing.assert_close(probs, interpret.class_probabilities(model(images)))  # [B, C]
    torch.testing.assert_close(cams, interpret.gradcam(model, images, target=probs.argmax(dim=1)))  # the argmax

    save_tiny_model(run / "model.safetensors", class_names=["a", "b", "c"], seed=0)
    assert run_plots.make_plots(RunDir(run), what={"grid"}, shards=str(tmp_path)) == []
    assert "the model predicts 3 classes but the test predictions have 5" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# predict


def test_predict_lists_the_top_k_classes(tmp_path, capsys):
    from toolkit.predict import main

    model = tmp_path / "model.safetensors"
    save_tiny_model(model, class_names=NAMES, seed=0)
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(files[-1])

    def predict(*extra: str) -> list[dict]:
        assert run_in_process(main, ["--model", str(model), "--device", "cpu", *extra, *map(str, files)]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    for extra, k in (((), 5), (("--top-k", "2"), 2), (("--top-k", "9"), 5)):
        lines = predict(*extra)
        assert len(lines) == 3
        for line in lines:
            assert set(line) == {"file", "pred", "label", "prob", "top"}
            assert len(line["top"]) == k and line["top"][0][0] == line["pred"] == NAMES[line["label"]]
            values = [p for _, p in line["top"]]
            assert values == sorted(values, reverse=True) and values[0] == max(line["prob"].values())
            assert all(line["prob"][name] == p for name, p in line["top"])
            assert set(line["prob"]) == set(NAMES) and sum(line["prob"].values()) == pytest.approx(1, abs=1e-4)

    binary = tmp_path / "binary.safetensors"
    save_tiny_model(binary)  # the helpers' tiny cat/dog model
    assert run_in_process(main, ["--model", str(binary), "--device", "cpu", str(files[0])]) == 0
    line = json.loads(capsys.readouterr().out)  # two classes: the same fields, the top list holds both
    assert set(line) == {"file", "pred", "label", "prob", "top"} and len(line["top"]) == 2
    assert run_in_process(main, ["--model", str(model), "--top-k", "0", str(files[0])]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# W&B


def test_tracker_logs_n_class_curves_summary_and_predictions_offline(tmp_path, monkeypatch):
    isolate_wandb(monkeypatch, tmp_path / "home", mode="offline")
    run_dir = tmp_path / "RUN"
    run_dir.mkdir()
    labels, probs = fake_multiclass(60, len(NAMES), seed=3, absent=(4,))  # pug never occurs: no curve for it
    metrics = compute_metrics(labels, probs, class_names=NAMES)
    logits = np.log(probs).astype(np.float32)
    result = EvalResult(
        split="test",
        keys=[f"k{i}" for i in range(60)],
        labels=labels,
        logits=logits,
        breeds=[""] * 60,
        class_names=list(NAMES),
    )
    cfg = SimpleNamespace(wandb="offline", project="pets-toolkit-tests", entity=None, tags=[], group=None)
    tracker = Tracker(cfg, RunDir(run_dir), {"model": {"num_classes": 5}}, is_main=True, run_name="breeds", echo=print)
    assert tracker.active
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.log_curves(result.labels, result.probs, NAMES, "test")
    tracker.summary({f"test/{k}": v for k, v in summary_values(metrics).items()})
    rows = prediction_rows(result, threshold=0.5, limit=8)
    tracker.log_predictions_table(rows)
    assert tracker.finish()["failed_calls"] == 0

    logged = offline_contents(run_dir)
    assert "test/top5_accuracy" not in logged.summary  # top-5 of 5 classes is 1 by definition
    assert logged.summary["test/roc_auc"] == pytest.approx(metrics["roc_auc"])
    for chart in ("test/roc_curve", "test/pr_curve", "test/confusion_matrix"):
        assert f"_wandb/visualize/{chart}" in logged.config, chart
    for curve in ("roc_curve", "pr_curve"):
        table = json.loads(next(logged.media.glob(f"table/test/{curve}_table_*.table.json")).read_text())
        assert {row[0] for row in table["data"]} == set(NAMES[:4])  # every class present, one vs rest
    roc = json.loads(next(logged.media.glob("table/test/roc_curve_table_*.table.json")).read_text())["data"]
    for name in NAMES[:4]:
        points = [row[1:] for row in roc if row[0] == name]
        assert points[0] == [0.0, 0.0] and points[-1] == [1.0, 1.0]
    matrix = json.loads(next(logged.media.glob("table/test/confusion_matrix_table_*.table.json")).read_text())
    counts = {(a, p): n for a, p, n in matrix["data"]}
    expected = metrics["confusion_matrix"]
    assert counts == {(NAMES[t], NAMES[p]): expected[t][p] for t in range(5) for p in range(5)}  # the argmax
    table = json.loads(next(logged.media.glob("table/test/predictions_*.table.json")).read_text())
    assert table["columns"] == ["key", "label", "true", "pred", "prob_pred", "correct", "top3", "breed"]
    for values, label, row in zip(table["data"], labels, probs):
        record = dict(zip(table["columns"], values))
        assert record["pred"] == NAMES[int(row.argmax())] and record["true"] == NAMES[int(label)]
        assert record["top3"].startswith(f"{record['pred']} ") and record["top3"].count(", ") == 2

    binary = EvalResult(
        split="val",
        keys=["a", "b"],
        labels=np.array([0, 1]),
        logits=np.array([[2.0, 0.0], [0.0, 1.0]]),
        breeds=["Bengal", "pug"],
        class_names=["cat", "dog"],
    )
    rows = prediction_rows(binary, 0.8)  # two classes: the threshold on P(class 1) decides
    assert [(r["pred"], r["correct"]) for r in rows] == [("cat", True), ("cat", False)]
    two = compute_metrics([0, 1], binary.probs, class_names=["cat", "dog"])
    assert list(summary_values(two)) == ["accuracy", "roc_auc", "average_precision", "loss"]  # no top-2 of 2


def test_wandb_report_headline_shows_top_k_for_n_classes(tmp_path):
    from toolkit.reporting.wandb_headline import header_markdown, headline_markdown
    from toolkit.reporting.wandb_runs import LocalRun

    runs, names = [], NAMES + ["Sphynx", "boxer"]  # 7 classes: top-5 says something
    for seed in (0, 1):
        folder = write_multiclass_run(tmp_path / f"breeds-seed{seed}", names=names, splits=("test",), absent=(2,))
        runs.append(LocalRun(folder, f"id{seed}", [], yaml.safe_load((folder / "config.yaml").read_text())))
    text = headline_markdown({"breeds": runs})
    metrics = RunDir(runs[0].run_dir).read_metrics("test")
    assert "| top-5 accuracy | " in text and f"{metrics['top5_accuracy']:.4f}" in text
    assert "(dog)" not in text and "| ROC-AUC |" in text
    assert "| pug |" in text and "predicting the most probable class" in header_markdown({"breeds": runs})
    assert f"| {NAMES[2]} |" not in text  # no sample in the split: no row (the averages leave it out too)
