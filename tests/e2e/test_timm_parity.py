"""Whole ResNet-18 to -152 models, seconds each on CPU: our numbers equal timm's and torchvision's (eval
outputs, a training step, weights loaded both ways), every preset gives the expected shapes, the parity
check catches a misplaced stride, and the compare_timm command runs."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from torch import nn

from helpers import run_module
from toolkit.compare_timm import max_abs_diff, perturb_norms, train_step_differences
from toolkit.models import MODEL_ARCHS, create_model


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet101"])
def test_eval_outputs_match_timm(arch):
    ours, reference = timm_pair(arch, image_size=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_abs_diff(ours.eval()(x), reference.eval()(x)) <= 1e-5
        assert max_abs_diff(ours.forward_features(x), reference.forward_features(x)) <= 1e-5


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_train_step_matches_timm(arch):
    ours, reference = timm_pair(arch, image_size=48)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([3, 7])
    diffs = train_step_differences(ours, reference, x, y)
    assert diffs["grad_max_abs"] > 0  # the branches really got gradients
    assert diffs["loss_abs_diff"] <= 1e-5
    assert diffs["grad_max_abs_diff"] <= 1e-5 * max(1.0, diffs["grad_max_abs"])
    assert diffs["after_step_max_abs_diff"] <= 1e-5


def test_parity_check_catches_stride_on_the_1x1_conv():
    """The seed experiment's v1 block (stride on conv1) keeps every shape but must fail the comparison."""
    ours, reference = timm_pair("resnet50", image_size=64)
    block = ours.layer2[0]
    block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert ours.eval()(x).shape == reference.eval()(x).shape
        assert max_abs_diff(ours(x), reference(x)) > 1e-3


def test_compare_timm_cli_on_resnet18():
    result = run_module(
        "toolkit.compare_timm", "--arch", "resnet18", "--image-size", "64", "--steps", "1", "--warmup", "0", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and all(report["checks"].values())
    assert report["params"] == {"ours": 11_689_512, "timm": 11_689_512}
    assert report["stage_shapes"]["ours"]["layer4"] == [2, 512, 2, 2]
    assert report["eval_max_abs_diff"] <= 1e-5
    assert report["throughput"]["ours_img_per_s"] > 0 and report["throughput"]["ratio_ours_over_timm"] > 0


def timm_pair(arch: str, image_size: int, num_classes: int = 10) -> tuple[nn.Module, nn.Module]:
    """timm's model with perturbed norms (so every branch matters) and ours holding its weights."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    reference = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    perturb_norms(reference, torch.randn(4, 3, image_size, image_size, generator=generator), generator)
    ours = create_model(arch, num_classes=num_classes)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def test_torchvision_resnet50_weights_load_both_ways():
    tv = torchvision.models.resnet50(weights=None)
    ours = create_model("resnet50")
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert max_abs_diff(ours.eval()(x), tv.eval()(x)) <= 1e-5


@pytest.mark.parametrize("arch", MODEL_ARCHS)
def test_preset_output_shapes(arch):
    model = create_model(arch, num_classes=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (1, model.num_features, 2, 2)
        assert model.forward_head(features, pre_logits=True).shape == (1, model.num_features)
        assert model(x).shape == (1, 2)
    assert isinstance(model.layer4, nn.Sequential)  # Grad-CAM hooks here
