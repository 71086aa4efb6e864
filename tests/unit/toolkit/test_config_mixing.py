"""The mixup/cutmix keys: refused combinations and box ratios, each one line (exit 2)."""

from __future__ import annotations

import pytest

from toolkit.config import load_config as load
from toolkit.config import validate_config
from toolkit.errors import UsageError


def load_config(overrides=()):
    return validate_config(load(overrides=overrides))


def test_mixing_is_off_by_default_and_on_with_either_alpha_or_a_box():
    assert not load_config().train.mixing
    assert load_config(overrides=["train.mixup_alpha=0.2"]).train.mixing
    assert load_config(overrides=["train.cutmix_alpha=1.0"]).train.mixing
    assert load_config(overrides=["train.cutmix_minmax=[0.2,0.8]"]).train.mixing
    assert not load_config(overrides=["train.mix_prob=0"]).train.mixing


@pytest.mark.parametrize("weights", ["balanced", "[1.0,2.0]"])
def test_class_weights_with_mixing_are_refused(weights):
    with pytest.raises(UsageError, match="class_weights cannot be combined with mixup/cutmix"):
        load_config(overrides=["train.cutmix_alpha=1.0", f"train.class_weights={weights}"])
    assert load_config(overrides=[f"train.class_weights={weights}"]).train.class_weights != "none"


@pytest.mark.parametrize("minmax", ["[0.8,0.2]", "[0.2]", "[0.2,1.5]", "[0.50,0.51]"])
def test_unusable_cutmix_boxes_are_refused(minmax):
    with pytest.raises(UsageError, match="train.cutmix_minmax"):
        load_config(overrides=[f"train.cutmix_minmax={minmax}", "data.image_size=32"])
