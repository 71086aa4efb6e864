"""Training from an init file: only the head is fresh, and a file that does not fit is one line."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from toolkit.models import create_model


def test_training_starts_from_the_init_file_and_only_the_head_is_fresh(tmp_path, capsys):
    """A run with model.init begins from the file's weights (seen in the epoch-0 checkpoint-free model file)."""
    from safetensors.torch import load_file

    from helpers import pack_tiny, train_args, train_cli
    from toolkit.formats.model_file import read_model_file

    shards = pack_tiny(tmp_path)
    source = create_model("resnet18", num_classes=1000, blocks_per_stage=[1, 1, 1, 1])
    weights = tmp_path / "imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    overrides = [
        "model.base_width=64",
        f"model.init={weights}",
        "train.epochs=1",
        "optimizer.lr=1e-12",
        "optimizer.weight_decay=0",
        "scheduler.warmup_epochs=0",
    ]
    assert train_cli(train_args(shards, tmp_path / "runs", "init", *overrides)) == 0
    assert "model.init=" in capsys.readouterr().out
    trained, _ = read_model_file(tmp_path / "runs" / "init" / "last.safetensors")
    original = load_file(str(weights))
    convs = [k for k in original if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    assert convs and all(torch.allclose(trained[k], original[k], atol=1e-9) for k in convs)  # lr ~0: the file
    assert trained["fc.weight"].shape == (2, 512)  # the head was made for the dataset's two classes


def test_training_with_a_mismatched_init_file_is_one_line(tmp_path, capsys):

    from helpers import pack_tiny, train_args, train_cli

    shards = pack_tiny(tmp_path)
    other = create_model("resnet18", num_classes=1000)  # [2, 2, 2, 2] blocks: layer1.1.* is unexpected
    weights = tmp_path / "deeper.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    code = train_cli(train_args(shards, tmp_path / "runs", "bad", "model.base_width=64", f"model.init={weights}"))
    assert code == 2
    assert "layer1.1" in capsys.readouterr().err
