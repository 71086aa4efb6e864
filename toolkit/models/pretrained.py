"""Initialise our ResNet from ImageNet weights (``model.init``): a local safetensors file or timm's own.

Our parameter names are timm's and torchvision's, so a pretrained state dict loads as it is.
Only the classifier is special: ImageNet has 1000 classes, a pets model 2 or 37, so ``fc.*``
is left at our fresh init when its shape differs. Everything else loads strictly, because a
silently skipped layer would quietly train from scratch and look like a bad recipe.

Weights are read from safetensors only (never ``torch.load``: a pickle can run code). Named timm
weights therefore come from the Hub's ``model.safetensors`` of timm's registry entry, rather than
``timm.create_model(name, pretrained=True)``, which may fall back to a pickled ``.pth`` download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file
from torch import nn

HEAD_KEYS: tuple[str, ...] = ("fc.weight", "fc.bias")
HUB_PREFIX = "hf-hub:"
HUB_WEIGHTS = "model.safetensors"
# BatchNorm's step counter is not a weight (it only matters with momentum=None) and torchvision's
# ImageNet files predate it; torch keeps our own value when it is absent.
OPTIONAL_SUFFIXES: tuple[str, ...] = (".num_batches_tracked",)
SHOW_KEYS = 3
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors",)
PICKLE_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")


def load_pretrained(model: nn.Module, init: str) -> list[str]:
    """Copy ImageNet weights named by ``init`` into ``model``; return the keys left at their fresh init.

    ``init`` is a ``.safetensors`` file in timm/torchvision naming, a timm model name with or
    without tag (``resnet101.a1h_in1k``) or a Hub id (``hf-hub:timm/resnet50.a1_in1k``). Any
    mismatch outside the head is a ``ValueError`` naming the keys (one line at the command layer).
    """
    state = read_pretrained_state(init)
    skipped = check_pretrained_state(model, state, source=f"model.init={init}")
    state = {key: value for key, value in state.items() if key not in skipped}
    model.load_state_dict(state, strict=False)  # everything but the skipped head and BN counters was checked above
    return skipped


def read_pretrained_state(init: str) -> dict[str, torch.Tensor]:
    """The state dict ``init`` names: a local file if it looks like a path, otherwise timm's Hub weights."""
    if not isinstance(init, str) or not init.strip():
        raise ValueError("model.init must be a .safetensors file, a timm model name or an hf-hub: id")
    init = init.strip()
    if _looks_like_path(init):
        return read_safetensors_state(Path(init).expanduser(), label=f"model.init={init}")
    return download_timm_state(init)


def _looks_like_path(init: str) -> bool:
    """A weights file name has a file suffix or a folder; a timm name has neither (Hub ids carry ``hf-hub:``)."""
    if init.startswith(HUB_PREFIX):
        return False
    return init.endswith(WEIGHT_SUFFIXES + PICKLE_SUFFIXES) or "/" in init or init.startswith(("~", "."))


def read_safetensors_state(path: Path, label: str) -> dict[str, torch.Tensor]:
    """Tensors of a local safetensors file, with one-line errors for a missing or foreign file."""
    if path.name.endswith(PICKLE_SUFFIXES):
        raise ValueError(f"{label}: {path.name} is a pickle; only .safetensors weights are loaded (convert it first)")
    if not path.is_file():
        raise ValueError(
            f"{label}: no such file {str(path)!r}; give a .safetensors file in timm/torchvision naming "
            f"(for a Hub repo write hf-hub:OWNER/NAME)"
        )
    try:
        return load_safetensors_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{label}: {str(path)!r} is not a safetensors file ({_one_line(err)})") from None


def hub_location(init: str) -> tuple[str, str, str]:
    """(Hub repo id, file name, a name for messages) of timm's weights for a timm name or ``hf-hub:`` id."""
    if init.startswith(HUB_PREFIX):
        repo = init[len(HUB_PREFIX) :]
        if not repo:
            raise ValueError(f"model.init={init}: give a Hub repo id after {HUB_PREFIX}")
        return repo, HUB_WEIGHTS, repo
    cfg = _timm_pretrained_cfg(init)
    if not cfg.hf_hub_id:
        raise ValueError(
            f"model.init={init}: timm has no Hub (safetensors) weights for it; save them as a "
            f".safetensors file and set model.init=/path/file.safetensors"
        )
    filename = cfg.hf_hub_filename or HUB_WEIGHTS
    if not filename.endswith(".safetensors"):
        raise ValueError(
            f"model.init={init}: timm's weights for it are {filename!r}, a pickle; only safetensors "
            f"weights are loaded (convert them and set model.init=/path/file.safetensors)"
        )
    return cfg.hf_hub_id, filename, f"{cfg.architecture}.{cfg.tag}" if cfg.tag else init


def _timm_pretrained_cfg(name: str):
    """timm's registry entry for ``name`` (default tag if none), or a one-line error for an unknown name."""
    import timm.models  # heavy optional dependency: only needed for weights by name

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:  # known architecture, unknown tag
        tags = timm.list_pretrained(f"{name.split('.')[0]}.*")
        raise ValueError(f"model.init={name}: {_one_line(err)} Known: {', '.join(tags[:8]) or 'none'}") from None
    if cfg is None:
        raise ValueError(
            f"model.init={name}: not a timm model name with pretrained weights, nor a .safetensors "
            f"file (e.g. resnet101.a1h_in1k, hf-hub:timm/resnet50.a1_in1k, /path/weights.safetensors)"
        )
    return cfg


def download_timm_state(init: str) -> dict[str, torch.Tensor]:
    """Fetch (or take from the Hugging Face cache) timm's safetensors weights; offline: say what to download."""
    repo, filename, name = hub_location(init)
    from timm.models import load_state_dict_from_hf  # heavy optional dependency: only needed for weights by name

    try:
        return load_state_dict_from_hf(repo, filename=filename)
    except Exception as err:  # offline, no such repo, HTTP errors: all mean "not available here"
        reason = (
            "offline and not in the Hugging Face cache"
            if isinstance(err, FileNotFoundError)
            else f"{type(err).__name__}: {_one_line(err)[:120]}"
        )
        raise ValueError(
            f"model.init={init}: cannot download {filename} of https://huggingface.co/{repo} ({reason}); "
            f"save timm's {name} weights as a .safetensors file and set model.init=/path/file.safetensors "
            f"(where there is network: hf download {repo} {filename} --local-dir DIR)"
        ) from None


def check_pretrained_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """The head keys to skip (shape differs, or absent from ``state``); a ValueError for any other mismatch."""
    own = model.state_dict()
    head = [key for key in HEAD_KEYS if key in own and (key not in state or state[key].shape != own[key].shape)]
    missing = [k for k in own if k not in state and k not in head and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs ours {tuple(own[k].shape)}"
        for k in state
        if k in own and k not in head and state[k].shape != own[k].shape
    ]
    problems = [
        f"{len(keys)} {what} ({_first(keys)})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong))
        if keys
    ]
    if problems:
        raise ValueError(
            f"{source}: weights do not fit this model: {'; '.join(problems)}; "
            f"use weights of the same architecture as model.arch"
        )
    return head


def pretrained_normalization(init: str) -> Optional[tuple[list[float], list[float]]]:
    """The (mean, std) timm's pretrained cfg gives for ``init``; None for a local file or when unknown offline.

    ImageNet weights expect their own input normalization; fine-tuning is usually best with it.
    """
    init = init.strip()
    if _looks_like_path(init):
        return None
    if init.startswith(HUB_PREFIX):
        from timm.models import load_model_config_from_hf  # heavy optional dependency, see above

        try:
            cfg, _, _ = load_model_config_from_hf(init[len(HUB_PREFIX) :])
        except Exception:  # offline: the caller keeps its own normalization
            return None
        mean, std = cfg.get("mean"), cfg.get("std")
    else:
        found = _timm_pretrained_cfg(init)
        mean, std = found.mean, found.std
    if not mean or not std:
        return None
    return [float(m) for m in mean], [float(s) for s in std]


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    return shown + (", ..." if len(keys) > SHOW_KEYS else "")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
