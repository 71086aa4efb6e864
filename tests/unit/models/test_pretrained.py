"""model.init: ImageNet weights in timm naming load into our ResNet, the head is kept, every mismatch is one line.

timm's randomly initialised resnet18 stands in for ImageNet weights (no download); the network is
blocked in every test, so the "by name" cases exercise the offline path for real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from helpers import ROOT
from toolkit.models import create_model
from toolkit.models.pretrained import HEAD_KEYS, load_pretrained, pretrained_normalization

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

pytestmark = pytest.mark.usefixtures("no_network")  # tests never touch the network


@pytest.fixture(scope="module")
def timm_state() -> dict[str, torch.Tensor]:
    """timm's resnet18 (1000 classes) with every tensor randomised, so nothing matches a fresh init by chance."""
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.rand_like(value) + 0.5 if key.endswith("running_var") else torch.randn_like(value)
        else:
            state[key] = torch.randint_like(value, 1, 100)
    return state


@pytest.fixture(scope="module")
def timm_file(timm_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pretrained") / "resnet18-timm.safetensors"
    save_file(timm_state, str(path))
    return path


def save_variant(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_timm_weights_load_and_head_is_kept(timm_file, timm_state):
    model = create_model("resnet18", num_classes=2)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k in HEAD_KEYS}
    skipped = load_pretrained(model, str(timm_file))
    assert skipped == list(HEAD_KEYS)
    loaded = model.state_dict()
    for key, value in loaded.items():
        if key in HEAD_KEYS:
            assert torch.equal(value, fresh_head[key]), key
        else:
            assert torch.equal(value, timm_state[key]), key
    # and the features are timm's own, number for number
    reference = timm.create_model("resnet18", pretrained=False)
    reference.load_state_dict(timm_state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval().forward_features(x), reference.eval().forward_features(x))


def test_same_head_shape_loads_the_head_too(timm_file, timm_state):
    model = create_model("resnet18", num_classes=1000)
    assert load_pretrained(model, str(timm_file)) == []
    assert torch.equal(model.fc.weight, timm_state["fc.weight"])


def test_torchvision_style_file_without_bn_counters_loads(timm_state, tmp_path):
    state = {k: v for k, v in timm_state.items() if not k.endswith("num_batches_tracked")}
    model = create_model("resnet18", num_classes=2)
    assert load_pretrained(model, str(save_variant(state, tmp_path / "tv.safetensors"))) == list(HEAD_KEYS)
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_renamed_key_is_named(timm_state, tmp_path):
    state = dict(timm_state)
    state["layer2.0.conv1.weight_renamed"] = state.pop("layer2.0.conv1.weight")
    model = create_model("resnet18", num_classes=2)
    before = model.conv1.weight.clone()
    with pytest.raises(ValueError) as err:
        load_pretrained(model, str(save_variant(state, tmp_path / "renamed.safetensors")))
    message = one_line(err)
    assert "1 missing (layer2.0.conv1.weight)" in message
    assert "1 unexpected (layer2.0.conv1.weight_renamed)" in message
    assert torch.equal(model.conv1.weight, before)  # nothing half-loaded


def test_many_missing_keys_are_counted_not_listed(timm_state, tmp_path):
    state = {k: v for k, v in timm_state.items() if not k.startswith("layer4.")}
    with pytest.raises(ValueError) as err:
        load_pretrained(create_model("resnet18", num_classes=2), str(save_variant(state, tmp_path / "cut.safetensors")))
    message = one_line(err)
    count = sum(1 for k in timm_state if k.startswith("layer4.") and not k.endswith("num_batches_tracked"))
    assert f"{count} missing (layer4." in message and ", ...)" in message


def test_wrong_shape_conv_is_named(timm_state, tmp_path):
    state = dict(timm_state)
    state["layer1.0.conv2.weight"] = torch.randn(64, 64, 1, 1)
    with pytest.raises(ValueError) as err:
        load_pretrained(
            create_model("resnet18", num_classes=2), str(save_variant(state, tmp_path / "shape.safetensors"))
        )
    assert "layer1.0.conv2.weight (64, 64, 1, 1) vs ours (64, 64, 3, 3)" in one_line(err)


def test_other_architecture_is_refused(timm_file):
    with pytest.raises(ValueError) as err:
        load_pretrained(create_model("resnet34", num_classes=2), str(timm_file))
    assert "missing (layer1.2." in one_line(err)


def test_missing_and_foreign_files(tmp_path, monkeypatch):
    model = create_model("resnet18", num_classes=2)
    with pytest.raises(ValueError) as err:
        load_pretrained(model, str(tmp_path / "nope.safetensors"))
    assert "no such file" in one_line(err)

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError) as err:
        load_pretrained(model, str(junk))
    assert "is not a safetensors file" in one_line(err)

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_pickles)
    pickle = tmp_path / "weights.pth"
    pickle.write_bytes(b"\x80\x04pickled")
    with pytest.raises(ValueError) as err:
        load_pretrained(model, str(pickle))
    assert "is a pickle" in one_line(err)


def test_timm_name_offline_says_what_to_download(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    model = create_model("resnet18", num_classes=2)
    for init, name in (
        ("resnet18.tv_in1k", "resnet18.tv_in1k"),
        ("resnet18", "resnet18.a1_in1k"),
        ("hf-hub:timm/resnet18.a1_in1k", "timm/resnet18.a1_in1k"),
    ):
        with pytest.raises(ValueError) as err:
            load_pretrained(model, init)
        message = one_line(err)
        assert f"save timm's {name} weights as a .safetensors file and set model.init=/path/file.safetensors" in message
        assert "offline" in message


def test_bad_names(monkeypatch):
    model = create_model("resnet18", num_classes=2)
    with pytest.raises(ValueError) as err:
        load_pretrained(model, "resnet18.no_such_tag")
    assert "resnet18.tv_in1k" in one_line(err)  # the known tags are listed
    with pytest.raises(ValueError) as err:
        load_pretrained(model, "no_such_model")
    assert "not a timm model name" in one_line(err)


def test_pretrained_normalization():
    assert pretrained_normalization("resnet18.tv_in1k") == (IMAGENET_MEAN, IMAGENET_STD)
    assert pretrained_normalization("/some/file.safetensors") is None


# ---------------------------------------------------------------------------------------------
# model.init in a training run


def test_fine_tuning_gives_the_backbone_a_smaller_learning_rate_than_the_new_head():
    from toolkit.config import OptimizerConfig, load_config, validate_config
    from toolkit.training.optim import build_optimizer

    model = create_model("resnet18", num_classes=2, blocks_per_stage=[1, 1, 1, 1])
    optimizer = build_optimizer(
        model,
        OptimizerConfig(name="adamw", lr=1e-3, backbone_lr_scale=0.1, weight_decay=0.05, decay_norm_and_bias=False),
    )
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(lr_of) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    for name, param in model.named_parameters():
        assert lr_of[id(param)] == pytest.approx(1e-3 if name in HEAD_KEYS else 1e-4), name
    assert len(build_optimizer(model, OptimizerConfig()).param_groups) == 1  # scale 1: one group, as before

    recipe = validate_config(load_config(ROOT / "configs/oxford_pets_binary_resnet101_finetune.yaml"))
    assert recipe.model.init and recipe.optimizer.backbone_lr_scale < 1 and recipe.data.mean == IMAGENET_MEAN
