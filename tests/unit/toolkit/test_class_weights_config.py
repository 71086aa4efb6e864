"""train.class_weights (issue 31, class imbalance): resolved once from the shards' train counts, no training."""

from __future__ import annotations

import pytest
import yaml

from toolkit.config import config_from_dict, load_config, resolve_class_weights, resolve_config, to_dict
from toolkit.errors import UsageError


def info(counts: dict[str, int]) -> dict:
    """A manifest with these train counts (and a val split, normalization) as resolve_config reads it."""
    split = {"num_samples": sum(counts.values()), "class_counts": counts, "shards": []}
    return {
        "classes": list(counts),
        "splits": {"train": split, "val": split, "test": split},
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }


def test_balanced_is_scikit_learns_n_samples_over_n_classes_times_count():
    weights = resolve_class_weights("balanced", info({"cat": 90, "dog": 10, "fox": 20}))
    # sklearn.utils.class_weight.compute_class_weight('balanced'): 120 / (3 * count)
    assert weights == pytest.approx([120 / 270, 120 / 30, 120 / 60])
    assert sum(w * n for w, n in zip(weights, (90, 10, 20))) == pytest.approx(120)  # every class weighs n / k


def test_the_resolved_weights_are_recorded_in_the_runs_config():
    cfg = resolve_config(load_config(overrides=["train.class_weights=balanced"]), info({"a": 30, "b": 10}))
    assert cfg.train.class_weights == pytest.approx([40 / 60, 40 / 20])
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))  # config.yaml and model files
    assert again.train.class_weights == cfg.train.class_weights
    assert resolve_config(again, info({"a": 30, "b": 10})).train.class_weights == cfg.train.class_weights


def test_none_stays_none_and_an_explicit_list_is_kept():
    assert resolve_config(load_config(), info({"a": 3, "b": 1})).train.class_weights == "none"
    cfg = load_config(overrides=["train.class_weights=[1, 2.5]"])
    assert resolve_config(cfg, info({"a": 3, "b": 1})).train.class_weights == [1.0, 2.5]


@pytest.mark.parametrize(
    "value, counts, expected",
    [
        ("[1, 2, 3]", {"a": 3, "b": 1}, "has 3 weights but the shards have 2 classes (a, b)"),
        ("[1]", {"a": 3, "b": 1}, "has 1 weights but the shards have 2 classes"),
        ("balanced", {"a": 3, "b": 0}, "needs train images of every class, but b has none"),
        ("[1, -1]", {"a": 3, "b": 1}, "must be finite numbers >= 0"),
        ("[0, 0]", {"a": 3, "b": 1}, "at least one > 0"),
    ],
)
def test_class_weight_mistakes_are_one_line(value, counts, expected):
    with pytest.raises(UsageError) as err:
        resolve_config(load_config(overrides=[f"train.class_weights={value}"]), info(counts))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("balance", "is not allowed; choose one of none, balanced (did you mean 'balanced'?)"),
        ("[a, b]", "has the wrong type; expected a list of numbers"),
        ("{a: 1}", "has the wrong type; expected a string"),
    ],
)
def test_bad_values_are_refused_when_the_config_loads(value, expected):
    with pytest.raises(UsageError) as err:
        load_config(overrides=[f"train.class_weights={value}"])
    assert str(err.value).startswith("train.class_weights = ") and expected in str(err.value)
