"""compare_recipes: both recipes trained on the same shards and seeds, tabulated from the runs' own test files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from helpers import isolate_wandb
from toolkit.compare_recipes import main
from toolkit.errors import UsageError
from toolkit.evaluation.metrics import mean_std
from toolkit.reporting.recipe_comparison import verdicts

TINY = [
    "model.arch=resnet18",
    "model.blocks_per_stage=[1,1,1,1]",
    "model.base_width=8",
    "data.image_size=32",
    "data.resize_size=36",
    "data.num_workers=0",
    "train.batch_size=8",
    "eval.batch_size=32",
    "eval.plots=false",
    'train.mixed_precision="no"',
    "model.channels_last=false",
    "scheduler.warmup_epochs=0",
]  # a 1-epoch run cannot warm up for the strong recipe's 2 epochs


@pytest.mark.slow
def test_compares_both_recipes_over_seeds(synthetic_shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "compare"
    args = ["--shards", str(synthetic_shards), "--epochs", "1", "--seeds", "0", "1", "--out", str(out)]
    assert main([*args, *TINY]) == 0
    printed = capsys.readouterr().out
    assert "[1/4] seed seed 0: training" in printed and "[4/4] strong seed 1: test ROC-AUC" in printed
    assert "epoch 1/1 |" in printed  # the runs' epoch lines are passed through

    report = json.loads((out / "comparison.json").read_text())
    assert list(report["recipes"]) == ["seed", "strong"] and report["seeds"] == [0, 1] and report["epochs"] == 1
    assert report["overrides"] == TINY and report["split"] == "test"
    for name, recipe in report["recipes"].items():
        runs = recipe["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for run in runs:
            run_dir = Path(run["run_dir"])
            assert run_dir == out / "runs" / f"{name}-seed{run['seed']}"
            # the table's numbers are the run's own evaluation of the test split ...
            test = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
            assert run["values"]["accuracy"] == test["accuracy"] and run["values"]["roc_auc"] == test["roc_auc"]
            assert run["per_class"]["dog"]["recall"] == test["per_class"]["dog"]["recall"]
            # ... of a run trained with the shared overrides, the fixed budget and its seed, without W&B
            used = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert used["model"]["base_width"] == 8 and used["train"]["epochs"] == 1
            assert used["train"]["seed"] == run["seed"] and used["tracking"]["wandb"] == "disabled"
            assert used["data"]["shards"] == str(synthetic_shards.resolve())
            assert (run_dir / "train.log").is_file()
        summary = recipe["summary"]
        accuracies = [r["values"]["accuracy"] for r in runs]
        assert summary["accuracy"]["mean"] == pytest.approx(statistics.fmean(accuracies))
        assert summary["accuracy"]["std"] == pytest.approx(statistics.stdev(accuracies))
        assert set(summary["per_class"]) == {"cat", "dog", "macro avg", "weighted avg"}
    # the two recipes really differ: the strong one uses its own normalization (train split) and optimizer
    seed_cfg = yaml.safe_load((out / "runs/seed-seed0/config.yaml").read_text())
    strong_cfg = yaml.safe_load((out / "runs/strong-seed0/config.yaml").read_text())
    assert seed_cfg["optimizer"]["name"] == "adam" and strong_cfg["optimizer"]["name"] != "adam"
    info = json.loads((synthetic_shards / "info.json").read_text())
    assert strong_cfg["data"]["mean"] == pytest.approx(info["normalization"]["mean"])

    table = (out / "comparison.md").read_text()
    assert table in printed
    for text in (
        "| metric | seed | strong | strong - seed |",
        "| test ROC-AUC |",
        "| test accuracy |",
        "| wall time per run (min) |",
        "| cat |",
        "| dog |",
        "| macro avg |",
        "| weighted avg |",
        " ± ",
    ):
        assert text in table, text
    assert sum(line.startswith(("| seed | ", "| strong | ")) for line in table.splitlines()) == 4  # one row per run


@pytest.mark.slow
def test_reuse_keeps_finished_runs_with_the_same_config(synthetic_shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "compare"
    args = ["--shards", str(synthetic_shards), "--epochs", "1", "--out", str(out)]
    assert main([*args, "--seeds", "0", *TINY]) == 0
    first = {
        name: (out / "runs" / f"{name}-seed0" / "model.safetensors").stat().st_mtime_ns for name in ("seed", "strong")
    }
    capsys.readouterr()

    assert main([*args, "--seeds", "0", "1", "--reuse", *TINY]) == 0  # add a seed: only its runs are trained
    printed = capsys.readouterr().out
    assert "[1/4] seed seed 0: reused the finished run" in printed and "[2/4] strong seed 0: reused" in printed
    assert "[3/4] seed seed 1: training" in printed and "[4/4] strong seed 1: training" in printed
    assert {n: (out / "runs" / f"{n}-seed0" / "model.safetensors").stat().st_mtime_ns for n in first} == first
    report = json.loads((out / "comparison.json").read_text())
    assert [r["seed"] for r in report["recipes"]["strong"]["runs"]] == [0, 1]
    assert all(r["values"]["wall_minutes"] > 0 for r in report["recipes"]["seed"]["runs"])  # kept from the first run

    saved = out / "runs" / "strong-seed0" / "config.yaml"  # a run made with other settings is not reused
    saved.write_text(saved.read_text().replace("label_smoothing: 0.1", "label_smoothing: 0.2"))
    assert main([*args, "--seeds", "0", "--reuse", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "seed seed 0: reused" in printed and "strong seed 0: training" in printed


@pytest.mark.slow
def test_ends_with_the_wandb_report_of_the_comparison(synthetic_shards: Path, tmp_path: Path, monkeypatch, capsys):
    """--wandb-report P: the runs log to W&B (offline here, grouped by recipe), then the Report's spec is written."""
    isolate_wandb(monkeypatch, tmp_path / "home")
    out = tmp_path / "compare"
    args = [
        "--shards",
        str(synthetic_shards),
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--out",
        str(out),
        "--wandb-report",
        "pets-compare",
    ]
    assert main([*args, *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"wrote the W&B report spec to {out / 'wandb-report.json'}" in printed
    assert "python -m toolkit.wandb_report --publish" in printed
    spec = json.loads((out / "wandb-report.json").read_text())
    assert spec["project"] == "pets-compare"
    assert [(rs["name"], len(rs["runs"])) for rs in spec["runsets"]] == [("seed", 1), ("strong", 1)]
    used = yaml.safe_load((out / "runs" / "strong-seed0" / "config.yaml").read_text())
    assert used["tracking"]["group"] == "strong" and used["tracking"]["project"] == "pets-compare"


def test_rejects_bad_plans_before_training(synthetic_shards: Path, tmp_path: Path):
    base = ["--epochs", "3", "--out", str(tmp_path / "out")]
    with pytest.raises(UsageError, match="no info.json"):
        main(["--shards", str(tmp_path / "missing"), *base])
    with pytest.raises(UsageError, match="one per config"):
        main(["--shards", str(synthetic_shards), "--names", "only-one", *base])
    with pytest.raises(UsageError, match="repeats a seed"):
        main(["--shards", str(synthetic_shards), "--seeds", "1", "1", *base])
    with pytest.raises(UsageError, match="not a valid W&B project name"):
        main(["--shards", str(synthetic_shards), *base, "--wandb-report", "a/b"])
    with pytest.raises(UsageError, match="unknown config key train.epoch"):
        main(["--shards", str(synthetic_shards), *base, "train.epoch=3"])
    assert not (tmp_path / "out").exists()


def test_the_shards_decide_the_class_count_so_recipes_compare_on_any_task(
    synthetic_source: Path, synthetic_shards: Path, tmp_path: Path
):
    from toolkit.compare_recipes import DEFAULT_CONFIGS, DEFAULT_OVERRIDES, Recipe, planned_config
    from toolkit.data.shards import pack_dataset

    breeds = tmp_path / "breeds"
    pack_dataset(synthetic_source, breeds, labels="breed", resize_shorter=48, workers=1, show_progress=False)
    recipe = Recipe("strong", DEFAULT_CONFIGS[1])
    overrides = [*DEFAULT_OVERRIDES, f"data.shards={breeds}"]
    assert planned_config(recipe, overrides, str(breeds))["model"]["num_classes"] == 7  # the synthetic breeds
    assert (
        planned_config(recipe, [*DEFAULT_OVERRIDES, f"data.shards={synthetic_shards}"], str(synthetic_shards))["model"][
            "num_classes"
        ]
        == 2
    )  # what training saves, so --reuse matches
    with pytest.raises(UsageError, match="model.num_classes=3 but the shards .* have 7 classes"):
        main(["--shards", str(breeds), "--epochs", "1", "--out", str(tmp_path / "out"), "model.num_classes=3"])
    assert not (tmp_path / "out").exists()


def test_mean_std_and_verdicts():
    assert mean_std([0.8, 0.9, None]) == {
        "mean": pytest.approx(0.85),
        "std": pytest.approx(0.0707107, abs=1e-6),
        "n": 2,
        "values": [0.8, 0.9],
    }
    assert mean_std([0.5])["std"] is None and mean_std([])["mean"] is None
    summaries = {
        "a": {"roc_auc": mean_std([0.80, 0.82]), "accuracy": mean_std([0.70, 0.74])},
        "b": {"roc_auc": mean_std([0.90, 0.91]), "accuracy": mean_std([0.71, 0.75])},
    }
    auc_line, acc_line = verdicts(["a", "b"], summaries)
    assert "+0.0950" in auc_line and "b is better by more than the spread" in auc_line
    assert "no clear winner" in acc_line


def test_strong_recipe_config_resolves():
    from toolkit.compare_recipes import DEFAULT_CONFIGS
    from toolkit.config import load_config, validate_config

    seed, strong = (validate_config(load_config(path)) for path in DEFAULT_CONFIGS)
    assert strong.data.mean is None and strong.data.std is None  # train-split statistics from info.json
    assert seed.data.mean == [0.4829, 0.4449, 0.3957]  # the seed keeps its own (leaky) statistics
    assert strong.model.arch == seed.model.arch == "resnet101" and strong.eval.test_split == "test"
    assert strong.train.batch_size == seed.train.batch_size


def test_train_transform_options():
    import torch
    from PIL import Image

    from toolkit.config import DataConfig
    from toolkit.data import build_train_transform

    image = Image.new("RGB", (48, 40), (120, 80, 40))

    def names(cfg):
        return [type(t).__name__ for t in build_train_transform(cfg).transforms]

    assert names(DataConfig(image_size=32, color_jitter=None)) == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ToImage",
        "ToPureTensor",
    ]
    assert "ColorJitter" not in names(DataConfig(image_size=32))  # default: batched on the device
    assert names(DataConfig(image_size=32, jitter_on="workers")) == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "ToImage",
        "ToPureTensor",
    ]
    torch.manual_seed(0)
    strong = build_train_transform(DataConfig(image_size=32, augment="trivialaugment", jitter_on="workers"))
    order = [
        [type(t).__name__ for t in strong.transforms].index(n) for n in ("ColorJitter", "TrivialAugmentWide", "ToImage")
    ]
    assert order == sorted(order)  # the policy on the PIL crop, after the jitter
    out = strong(image)
    assert type(out) is torch.Tensor and out.shape == (3, 32, 32) and out.dtype == torch.uint8
    rand = build_train_transform(DataConfig(image_size=32, augment="randaugment"))
    assert "RandAugment" in [type(t).__name__ for t in rand.transforms] and rand(image).shape == (3, 32, 32)


def test_no_weight_decay_on_norm_and_bias():
    from toolkit.config import OptimizerConfig
    from toolkit.models import create_model
    from toolkit.training.optim import build_optimizer

    model = create_model("resnet18", 2, blocks_per_stage=[1, 1, 1, 1], base_width=8)
    params = list(model.parameters())
    assert len(build_optimizer(params, OptimizerConfig()).param_groups) == 1  # default: everything decays, as before
    optimizer = build_optimizer(params, OptimizerConfig(name="adamw", weight_decay=0.05, decay_norm_and_bias=False))
    decay, exempt = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and {p.ndim for p in exempt["params"]} == {1}
    assert len(decay["params"]) + len(exempt["params"]) == len(params)
    assert any(p is model.fc.bias for p in exempt["params"])


def test_cpu_only_augmentations_are_refused_with_gpu_decoding():
    from toolkit.config import load_config, validate_config

    with pytest.raises(UsageError, match="CPU loader workers only"):
        validate_config(load_config(None, ["data.decode=gpu", "data.augment=trivialaugment"]))
    with pytest.raises(UsageError, match="use data.jitter_on=device"):
        validate_config(load_config(None, ["data.decode=gpu", "data.jitter_on=workers"]))
    with pytest.raises(UsageError, match="hue <= 0.5"):
        validate_config(load_config(None, ["data.color_jitter=[0.2,0.2,0.2,0.7]"]))
    validate_config(load_config(None, ["data.decode=gpu", "data.random_erasing=0.25"]))  # erasing runs on the device
