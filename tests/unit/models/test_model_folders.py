"""Model sources that are folders: a timm folder is prepared with its own pretrained config, and only its
safetensors are read."""

from __future__ import annotations

import pytest
import timm
import torch

from helpers import error_line, run_in_process
from toolkit import predict
from toolkit.models.sources import load_model


def test_a_timm_folder_is_prepared_with_its_own_pretrained_config(tmp_path):
    """A folder timm itself wrote (save_for_hf): timm builds it, and its mean, std, size and crop are used."""
    model = timm.create_model(
        "resnet18",
        num_classes=3,
        pretrained_cfg_overlay=dict(
            mean=(0.5, 0.4, 0.3),
            std=(0.2, 0.25, 0.3),
            input_size=(3, 40, 40),
            crop_pct=0.8,
            interpolation="bilinear",
            label_names=["a", "b", "c"],
        ),
    )
    timm.models.save_for_hf(
        model, str(tmp_path / "timm-model"), model_config={"label_names": ["a", "b", "c"]}, safe_serialization="both"
    )
    loaded, meta = load_model(f"local-dir:{tmp_path / 'timm-model'}")
    assert (meta["image_size"], meta["resize_size"]) == (40, 50)  # floor(40 / 0.8), timm's eval resize
    assert meta["mean"] == pytest.approx([0.5, 0.4, 0.3]) and meta["std"] == pytest.approx([0.2, 0.25, 0.3])
    assert meta["class_names"] == ["a", "b", "c"] and meta["num_classes"] == 3
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))  # the same weights, from model.safetensors


def test_only_safetensors_are_read_from_a_timm_folder(tmp_path, capsys):
    model = timm.create_model("resnet18", num_classes=2)
    timm.models.save_for_hf(model, str(tmp_path / "m"), safe_serialization=False)  # pytorch_model.bin only
    code = run_in_process(predict.main, ["--model", f"local-dir:{tmp_path / 'm'}", str(tmp_path / "x.jpg")])
    assert code == 2
    assert "no model.safetensors" in error_line(capsys.readouterr().err)
