"""The model file: safetensors weights with the metadata needed to rebuild and use the model.

``model.safetensors`` / ``last.safetensors`` hold the unwrapped model's weights plus its
architecture, classes, image size and normalization. This is the only format models are
exchanged in; nothing pickled is ever loaded from it. Training writes it; evaluation, predict,
the reports and export read it, all through the functions here, and every size a file claims is
checked against its own tensors before anything is allocated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from toolkit.errors import UsageError, usage_errors
from toolkit.fileio import atomic_write_bytes
from toolkit.models import create_model
from toolkit.models.resnet import MODEL_SPECS

FORMAT_NAME = "pets-toolkit/resnet"


def model_metadata(cfg, *, mean, std, class_names, extra: Optional[dict] = None) -> dict:
    """Everything needed to rebuild the model and preprocess images for it."""
    num_classes = len(class_names) if cfg.model.num_classes is None else cfg.model.num_classes
    if num_classes != len(class_names):  # a bug in the caller, never user input
        raise ValueError(f"model_metadata: {num_classes} classes but {len(class_names)} class names")
    preset = MODEL_SPECS[cfg.model.arch]
    block = cfg.model.block or preset.block
    blocks = cfg.model.blocks_per_stage or preset.blocks_per_stage
    meta = {
        "format": FORMAT_NAME,
        "arch": cfg.model.arch,
        "block": block,
        "blocks_per_stage": list(blocks),
        "base_width": cfg.model.base_width,
        "in_chans": cfg.model.in_chans,
        "num_classes": num_classes,
        "class_names": list(class_names),
        "image_size": cfg.data.image_size,
        "resize_size": cfg.data.resize_size,
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


def check_metadata(meta: dict, state: dict[str, torch.Tensor], source: str) -> None:
    """No size the metadata claims may exceed the stored tensors' before anything is built from them.

    A hostile file could otherwise ask for a model of any size and have it allocated before the
    shape check; this way the allocation is bounded by the file's own tensors. Smaller claims are
    left to ``load_state_strict``, which names the keys that differ.
    """
    try:
        classes, width = int(meta["num_classes"]), int(meta.get("base_width", 64))
        channels = int(meta.get("in_chans", 3))
        blocks = [int(b) for b in meta.get("blocks_per_stage") or MODEL_SPECS[meta["arch"]].blocks_per_stage]
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{source}: its metadata lacks arch, num_classes or readable sizes") from None
    stored = {
        stage: len({key.split(".")[1] for key in state if key.startswith(f"layer{stage}.")}) for stage in range(1, 5)
    }
    claims = {  # name: (what the metadata claims, what the tensors hold)
        "num_classes": ((classes,), tuple(state["fc.weight"].shape)[:1] if "fc.weight" in state else (0,)),
        "base_width, in_chans": (
            (width, channels),
            tuple(state["conv1.weight"].shape)[:2] if "conv1.weight" in state else (0, 0),
        ),
        "blocks_per_stage": (tuple(blocks), tuple(stored[s] for s in range(1, 5))),
    }
    for name, (claimed, found) in claims.items():
        if len(claimed) != len(found) or any(
            c > f for c, f in zip(claimed, found)
        ):  # smaller: the strict load names it
            raise UsageError(
                f"{source}: metadata claims {name} {list(claimed)} but its tensors hold {list(found)}; "
                "the file is damaged or not a pets-toolkit model"
            )


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


def build_model_from_metadata(meta: dict) -> torch.nn.Module:
    with usage_errors("the model file's architecture"):
        return create_model(
            meta["arch"],
            num_classes=int(meta["num_classes"]),
            blocks_per_stage=meta.get("blocks_per_stage"),
            block=meta.get("block"),
            base_width=int(meta.get("base_width", 64)),
            in_chans=int(meta.get("in_chans", 3)),
        )


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights and turn any mismatch into one line naming it."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UsageError(f"{source}: weights do not fit the model architecture: {', '.join(parts)}")
    for key, tensor in state.items():
        if own[key].shape != tensor.shape:
            raise UsageError(
                f"{source}: weight {key} has shape {tuple(tensor.shape)} but the model expects {tuple(own[key].shape)}"
                + (" (different number of classes)" if key.startswith("fc.") else "")
            )
    model.load_state_dict(state, strict=True)


def load_model_file(path: Path, expect: Optional[dict] = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from a ``.safetensors`` file; ``expect`` checks metadata (e.g. num_classes)."""
    state, meta = read_model_file(path)
    for key, wanted in (expect or {}).items():
        if key in meta and meta[key] != wanted:
            raise UsageError(f"{str(path)!r} has {key}={meta[key]!r} but {wanted!r} was expected")
    check_metadata(meta, state, str(path))
    model = build_model_from_metadata(meta)
    load_state_strict(model, state, str(path))
    model.eval()
    return model, meta
