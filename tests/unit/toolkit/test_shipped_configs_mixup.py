"""The mixup recipe is the strong recipe plus timm's mixing, and nothing else (its header says so)."""

from __future__ import annotations

import dataclasses

from toolkit.config import SHIPPED_CONFIGS, load_config, validate_config


def test_the_mixup_recipe_differs_from_the_strong_one_only_in_its_mixing():
    strong = validate_config(load_config(SHIPPED_CONFIGS / "oxford_pets_binary_resnet101_strong.yaml"))
    mixup = validate_config(load_config(SHIPPED_CONFIGS / "oxford_pets_binary_resnet101_strong_mixup.yaml"))
    assert not strong.train.mixing and mixup.train.mixing
    assert (mixup.train.mixup_alpha, mixup.train.cutmix_alpha, mixup.train.cutmix_minmax) == (0.2, 1.0, None)
    same = dataclasses.replace(
        mixup,
        train=dataclasses.replace(mixup.train, mixup_alpha=0.0, cutmix_alpha=0.0),
        output=dataclasses.replace(mixup.output, run_name=strong.output.run_name),
    )
    assert same == strong
