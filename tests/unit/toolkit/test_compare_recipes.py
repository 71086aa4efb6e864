"""compare_recipes' parts: the plan checks before training, class counts from the shards, mean/std and
verdicts, the strong recipe's config and transforms, and run folders claimed at once that never collide."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from helpers import file_hashes
from toolkit.compare_recipes import claim_run_dir, main
from toolkit.errors import UsageError
from toolkit.evaluation.metrics import mean_std
from toolkit.reporting.recipe_comparison import verdicts


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


def test_run_folders_claimed_at_once_are_new_and_distinct(tmp_path: Path):
    """Eight claims at the same moment: eight new folders, and the earlier run's files untouched."""
    runs = tmp_path / "runs"
    earlier = runs / "seed-seed0"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "model.safetensors").write_bytes(b"weights of an earlier run")
    (earlier / ".lock").write_text("somehost 123\n")
    before = file_hashes(earlier)
    start, claimed = threading.Barrier(8), []

    def claim() -> None:
        start.wait()
        claimed.append(claim_run_dir(runs, "seed-seed0"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(claimed)) == 8 and earlier not in claimed
    assert sorted(p.name for p in claimed) == sorted(f"seed-seed0-{v}" for v in range(2, 10))
    assert all(not any(p.iterdir()) for p in claimed)  # each is new and empty
    assert file_hashes(earlier) == before
