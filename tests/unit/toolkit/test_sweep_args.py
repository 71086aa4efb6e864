"""W&B's sweep agent passes ``--section.key=value`` (issue 31, item 6): read as the override ``section.key=value``,
while ordinary ``--flag=value`` words stay flags."""

from __future__ import annotations

import pytest

from toolkit.config import load_config, split_config_args
from toolkit.errors import UsageError


def test_the_agents_form_is_an_override_and_ordinary_flags_stay_flags():
    argv = ["--config=configs/smoke.yaml", "--optimizer.lr=1e-05", "train.epochs=2", "--progress", "bar"]
    assert split_config_args(argv) == (
        ["--config=configs/smoke.yaml", "--progress", "bar"],
        ["optimizer.lr=1e-05", "train.epochs=2"],
    )


def test_the_value_of_a_value_flag_is_never_an_override():
    argv = ["--shards", "--data.x=1", "--train.seed=3"]
    assert split_config_args(argv, value_flags={"--shards"}) == (["--shards", "--data.x=1"], ["train.seed=3"])


def test_values_as_wandb_writes_them_load():
    _, overrides = split_config_args(
        [
            "--optimizer.lr=1e-05",
            "--train.grad_clip=None",
            "--model.blocks_per_stage=[1, 1, 1, 1]",
            "--data.hflip=False",
        ]
    )
    cfg = load_config(None, overrides)
    assert cfg.optimizer.lr == 1e-05 and cfg.train.grad_clip is None
    assert cfg.model.blocks_per_stage == [1, 1, 1, 1] and cfg.data.hflip is False


def test_a_misspelt_swept_key_is_the_usual_one_line_error():
    _, overrides = split_config_args(["--optimizer.lrr=0.1"])
    with pytest.raises(UsageError, match="unknown config key optimizer.lrr; did you mean optimizer.lr"):
        load_config(None, overrides)
