"""Config loading: YAML + overrides -> typed config, and a one-line error for every mistake."""

import dataclasses
import random

import pytest
import yaml

from helpers import ROOT
from toolkit.config import (
    Config,
    config_from_dict,
    load_config,
    parse_override,
    resolve_config,
    to_dict,
    validate_config,
)
from toolkit.errors import UsageError

CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name != "sweep.yaml")  # a W&B sweep, not a run


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_validate(path):
    cfg = validate_config(load_config(path))
    assert isinstance(cfg, Config)


def test_seed_config_reproduces_the_seed_experiment():
    cfg = validate_config(load_config(ROOT / "configs/oxford_pets_binary_resnet101.yaml"))
    assert cfg.model.arch == "resnet101" and cfg.model.blocks_per_stage == [3, 4, 23, 3]
    assert cfg.model.num_classes == 2
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.betas, cfg.optimizer.weight_decay) == (
        "adam",
        1e-3,
        [0.9, 0.999],
        1e-4,
    )
    assert (cfg.scheduler.name, cfg.scheduler.step_epochs, cfg.scheduler.gamma) == ("step", 30, 0.1)
    assert cfg.train.epochs == 30 and cfg.train.mixed_precision == "no"
    assert cfg.data.image_size == 224 and cfg.data.resize_size == 255 and cfg.data.crop_scale == [0.6, 1.0]
    assert cfg.data.mean == [0.4829, 0.4449, 0.3957] and cfg.data.std == [0.2592, 0.2532, 0.2598]
    assert cfg.data.color_jitter == [0.2, 0.2, 0.2, 0.1]


def test_overrides_are_parsed_as_yaml_scalars():
    cfg = load_config(
        ROOT / "configs/smoke.yaml",
        [
            "optimizer.lr=3e-4",
            "model.blocks_per_stage=[2,1,1,1]",
            "train.grad_clip=1",
            "data.mean=null",
            "output.run_name=abc",
            "tracking.tags=[a, b]",
            "train.resume=auto",
        ],
    )
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.model.blocks_per_stage == [2, 1, 1, 1]
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.data.mean is None and cfg.output.run_name == "abc" and cfg.tracking.tags == ["a", "b"]
    assert cfg.train.resume == "auto"
    assert parse_override("train.epochs=5") == ("train.epochs", 5)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.lrr=1", "unknown config key optimizer.lrr; did you mean optimizer.lr?"),
        ("trian.epochs=1", "unknown config key trian; did you mean train?"),
        ("train.epochs=abc", "train.epochs = 'abc' has the wrong type; expected an integer"),
        ("train.epochs=1.5", "train.epochs = 1.5 has the wrong type; expected an integer"),
        ("train.epochs=0", "train.epochs = 0 is out of range; it must be >= 1"),
        ("optimizer.lr=-1", "optimizer.lr = -1.0 is out of range; it must be > 0.0"),
        (
            "optimizer.name=adamm",
            "optimizer.name = 'adamm' is not allowed; choose one of adam, adamw, sgd (did you mean 'adam'?)",
        ),
        ("data.hflip=maybe", "data.hflip = 'maybe' has the wrong type; expected true/false"),
        ("model.blocks_per_stage=[1,x,1,1]", "model.blocks_per_stage = [1, 'x', 1, 1] has the wrong type"),
        ("model=3", "model must be a mapping, got 3"),
        ("justtext", "is not of the form section.key=value"),
        ("=3", "invalid key"),
        ("optimizer.lr=[1", "is not a valid YAML scalar or list"),
        ("optimizer.lr=nan", "optimizer.lr = nan must be a finite number"),
    ],
)
def test_every_config_mistake_is_one_clear_line(override, expected):
    with pytest.raises(UsageError) as err:
        load_config(ROOT / "configs/smoke.yaml", [override])
    message = str(err.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.arch=resnet101x", "model.arch = 'resnet101x' is not allowed"),
        ("model.blocks_per_stage=[1,1,1]", "must be 4 positive integers"),
        ("data.crop_scale=[0.9,0.5]", "data.crop_scale"),
        ("data.resize_size=16", "data.resize_size = 16 must be >= data.image_size = 32"),
        ("data.mean=[0.5,0.5]", "data.mean"),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas"),
        ("train.resume=/no/such/checkpoint", "train.resume"),
    ],
)
def test_cross_field_checks(override, expected):
    with pytest.raises(UsageError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_config(load_config(ROOT / "configs/smoke.yaml", [override]))


def test_bad_yaml_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML at line"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        load_config(listing)
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config(ROOT / "configs/smoke.yaml", ["train.epochs=7"])
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert to_dict(again) == to_dict(cfg)


def _random_value(rng: random.Random):
    return rng.choice([None, 0, -3, 1.5, "x", "adam", True, [1, 2], {"a": 1}, [], "1e-3", 10**12, float("inf")])


def test_fuzzed_configs_never_escape_as_tracebacks():
    """Random documents and overrides: either a valid config or a UsageError, nothing else."""
    rng = random.Random(0)
    sections = list(to_dict(Config()).items())
    outcomes = {"valid": 0, "refused": 0}
    for _ in range(400):
        raw = {}
        for _ in range(rng.randint(0, 4)):
            section, fields = rng.choice(sections)
            key = rng.choice(list(fields) + ["typo_key"])
            raw.setdefault(section, {})[key] = _random_value(rng)
        if rng.random() < 0.1:
            raw = _random_value(rng)
        try:
            validate_config(config_from_dict(raw))
            outcomes["valid"] += 1
        except UsageError as err:
            assert str(err) and "\n" not in str(err)
            outcomes["refused"] += 1
    # both outcomes happened often: a validator that refused (or passed) everything would fail here
    assert min(outcomes.values()) >= 20, outcomes


def test_gradient_accumulation_comes_from_the_launcher_unless_the_config_sets_it(monkeypatch):
    smoke = ROOT / "configs/smoke.yaml"
    info = {"classes": ["cat", "dog"], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}

    def accumulation(overrides=()):
        return resolve_config(validate_config(load_config(smoke, list(overrides))), info).train.grad_accum_steps

    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    assert accumulation() == 1
    monkeypatch.setenv(
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4"
    )  # accelerate launch --gradient_accumulation_steps 4
    assert accumulation() == 4
    assert accumulation(["train.grad_accum_steps=2"]) == 2  # ours wins
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "four")
    with pytest.raises(UsageError, match="ACCELERATE_GRADIENT_ACCUMULATION_STEPS='four'"):
        accumulation()


def test_the_resolved_config_is_frozen_and_holds_what_the_shards_decide():
    info = {"classes": ["a", "b", "c"], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    cfg = validate_config(load_config(ROOT / "configs/smoke.yaml", ["model.num_classes=null"]))
    resolved = resolve_config(cfg, info, environ={})
    assert resolved.model.num_classes == 3 and resolved.data.mean == [0.5] * 3 and resolved.data.std == [0.25] * 3
    assert cfg.model.num_classes is None and cfg.data.mean is None  # the loaded config is left as it was
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.model.num_classes = 2
    with pytest.raises(UsageError, match="model.num_classes=2 but the shards"):
        resolve_config(validate_config(load_config(ROOT / "configs/smoke.yaml")), info, environ={})


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.seed=18446744073709551616", "train.seed"),  # 2**64: torch.manual_seed would raise later
        ("train.seed=-1", "train.seed"),
        ("data.image_size=100000", "data.image_size"),
        ("data.resize_size=100000", "data.resize_size"),
    ],
)
def test_config_values_that_would_crash_later_are_refused(override, words):
    with pytest.raises(UsageError, match=words):
        validate_config(load_config(None, [override]))
