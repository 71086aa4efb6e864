"""Our hand-written ResNet against timm and torchvision: names, counts and small shapes (whole-model numbers: e2e/test_timm_parity.py)."""

from __future__ import annotations

import pytest
import timm
import torch

from toolkit.errors import UsageError
from toolkit.models import MODEL_ARCHS, BasicBlock, Bottleneck, create_model, model_summary

RESNET101_PARAMS = 44_549_160  # torchvision and timm resnet101 with a 1000-class head


@pytest.mark.parametrize("arch", ["resnet18", "resnet101"])
def test_state_dicts_load_strictly_both_ways_with_timm(arch):
    with torch.device("meta"):
        ours, reference = create_model(arch), timm.create_model(arch, pretrained=False)
    ours_sd, ref_sd = ours.state_dict(), reference.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    assert "conv1.weight" in ours_sd and "bn1.running_mean" in ours_sd and "fc.bias" in ours_sd
    assert "layer2.0.downsample.0.weight" in ours_sd and "layer2.0.downsample.1.running_var" in ours_sd
    ours.load_state_dict(ref_sd, strict=True, assign=True)
    reference.load_state_dict(ours_sd, strict=True, assign=True)


@pytest.mark.parametrize("arch", MODEL_ARCHS)
def test_parameter_count_equals_timm(arch):
    with torch.device("meta"):
        ours, reference = create_model(arch), timm.create_model(arch, pretrained=False)
    assert model_summary(ours)["num_params"] == sum(p.numel() for p in reference.parameters())


def test_resnet101_parameter_count():
    with torch.device("meta"):
        model = create_model("resnet101")
    summary = model_summary(model)
    assert summary["num_params"] == RESNET101_PARAMS
    assert summary["arch"] == "resnet101" and summary["blocks_per_stage"] == [3, 4, 23, 3]
    assert summary["block"] == "bottleneck" and summary["num_features"] == 2048


@pytest.mark.parametrize(
    "block, stages, width, chans, features",
    [
        ("basic", (1, 1, 1, 1), 8, 1, 64),
        ("bottleneck", (1, 2, 1, 1), 8, 4, 256),
        ("bottleneck", (2, 1, 1, 3), 16, 3, 512),
    ],
)
def test_custom_depth_width_and_channels(block, stages, width, chans, features):
    model = create_model(
        "resnet50", num_classes=5, block=block, blocks_per_stage=stages, base_width=width, in_chans=chans
    ).eval()
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == list(stages)
    assert model.conv1.weight.shape == (width, chans, 7, 7)
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, chans, 40, 40)).shape == (2, features, 2, 2)
        assert model(torch.randn(2, chans, 40, 40)).shape == (2, 5)
    assert model_summary(model)["arch"] == "custom"


def test_projection_shortcut_only_where_shape_changes():
    model = create_model("resnet50", blocks_per_stage=(2, 2, 2, 2), base_width=8)
    assert all(getattr(model, f"layer{i}")[0].downsample is not None for i in range(1, 5))
    assert all(getattr(model, f"layer{i}")[1].downsample is None for i in range(1, 5))
    basic = create_model("resnet18", base_width=8)
    assert basic.layer1[0].downsample is None and basic.layer2[0].downsample is not None
    assert basic.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (2, 2)
    assert model.layer2[0].conv1.stride == (1, 1)  # v1.5: the stride is on the 3x3 conv


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_zero_init_residual_zeroes_the_last_norm_of_every_branch(arch):
    model = create_model(arch, base_width=8, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == sum(model.blocks_per_stage)
    for block in blocks:
        last = block.bn2 if isinstance(block, BasicBlock) else block.bn3
        assert torch.count_nonzero(last.weight) == 0
        assert torch.all(block.bn1.weight == 1)
    default = create_model(arch, base_width=8)
    assert all(torch.all(b.last_norm.weight == 1) for b in default.modules() if isinstance(b, (BasicBlock, Bottleneck)))


def test_kaiming_fan_out_init():
    model = create_model("resnet50", base_width=8)
    weight = model.layer3[0].conv2.weight  # fan_out = out_channels * 3 * 3
    expected_std = (2.0 / (weight.shape[0] * 9)) ** 0.5
    assert abs(weight.std().item() / expected_std - 1) < 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "resnet99"}, "resnet18, resnet34, resnet50, resnet101, resnet152"),
        ({"arch": "resnet50", "block": "wide"}, "basic, bottleneck"),
        ({"arch": "resnet50", "blocks_per_stage": (1, 1, 1)}, "four positive integers"),
        ({"arch": "resnet50", "blocks_per_stage": (1, 0, 1, 1)}, "four positive integers"),
        ({"arch": "resnet50", "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    """As torchvision does: plain ValueError; the commands turn it into one line (toolkit.errors.usage_errors)."""
    with pytest.raises(ValueError, match=message):
        create_model(**kwargs)


def test_compare_timm_rejects_a_batch_batchnorm_cannot_train_on():
    from toolkit.compare_timm import main

    with pytest.raises(UsageError, match="--batch-size 2 or more"):
        main(["--arch", "resnet18", "--image-size", "32", "--batch-size", "1"])
