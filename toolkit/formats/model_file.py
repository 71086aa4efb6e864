"""The model file: safetensors weights with the metadata needed to rebuild and use the model.

``model.safetensors`` / ``last.safetensors`` hold the unwrapped model's weights plus its
architecture, classes, image size and normalization. This is the only format models are
exchanged in; nothing pickled is ever loaded from it. Training writes it; evaluation, predict,
the reports and export read it through ``read_model_file``; ``toolkit.models.sources.load_model_file``
rebuilds the model, checking every size the file claims against its own tensors first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from toolkit.errors import UsageError
from toolkit.fileio import atomic_write_bytes

FORMAT_NAME = "pets-toolkit/resnet"
ARCHITECTURE_KEYS = ("arch", "block", "blocks_per_stage", "base_width", "in_chans", "num_classes")


def model_metadata(
    architecture: dict,
    *,
    class_names: Sequence[str],
    image_size: int,
    resize_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    extra: Optional[dict] = None,
) -> dict:
    """Everything needed to rebuild the model (``models.architecture``) and preprocess images for it."""
    if architecture["num_classes"] != len(class_names):  # a bug in the caller, never user input
        raise ValueError(f"model_metadata: {architecture['num_classes']} classes but {len(class_names)} class names")
    meta = {
        "format": FORMAT_NAME,
        **{key: architecture[key] for key in ARCHITECTURE_KEYS},
        "class_names": list(class_names),
        "image_size": image_size,
        "resize_size": resize_size,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }
    meta.update(extra or {})
    return meta


def save_model_file(model: torch.nn.Module, path: Path, metadata: dict) -> None:
    """Write the unwrapped model's weights with JSON-encoded metadata, atomically."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k in state if k.startswith(("module.", "_orig_mod."))]
    if bad:
        raise ValueError(f"refusing to save a wrapped model (key {bad[0]!r}); pass the unwrapped module")
    encoded = {key: json.dumps(value) for key, value in metadata.items()}
    atomic_write_bytes(path, save_safetensors_bytes(state, metadata=encoded))


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file {str(path)!r} not found; pass RUN/model.safetensors from a finished training run")
    data = path.read_bytes()
    try:
        state = load_safetensors_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(
            f"{str(path)!r} is not a safetensors file ({err}); models are exchanged as .safetensors only"
        ) from None
    raw_meta = header.get("__metadata__") or {}
    try:
        meta = {key: json.loads(value) for key, value in raw_meta.items()}
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != FORMAT_NAME:
        raise UsageError(
            f"{str(path)!r} is a safetensors file but not a pets-toolkit model (no '{FORMAT_NAME}' metadata)"
        )
    return state, meta


def check_classes(meta: dict, classes: Sequence[str], source: str, *, what: str) -> None:
    """Refuse a model whose classes are not ``classes`` (same names, same order), in one line.

    A model predicts indices; only the names it was trained with say what they mean, so a
    37-breed model must not score species shards, nor a folder model another folder's classes.
    """
    mine = [str(c) for c in meta.get("class_names") or []]
    theirs = [str(c) for c in classes]
    if int(meta["num_classes"]) != len(theirs) or (mine and mine != theirs):
        shown = ", ".join(mine[:5]) + (", ..." if len(mine) > 5 else "") if mine else "unnamed"
        wanted = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
        raise UsageError(
            f"{source} predicts {meta['num_classes']} classes ({shown}) but {what} have {len(theirs)} "
            f"({wanted}); use a model trained on data with these classes"
        )
