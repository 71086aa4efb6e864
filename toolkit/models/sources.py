"""Where a model to evaluate, predict with or visualize comes from, and how its images are prepared.

``load_model(source)`` takes any of:

- a model file written by training (``runs/NAME/model.safetensors``), or a run folder holding one;
- a timm model folder, as ``toolkit.export`` writes it or timm's ``save_for_hf`` does (``config.json``
  + ``model.safetensors``), given as ``DIR`` or ``local-dir:DIR``;
- a timm model on the Hugging Face Hub, ``hf-hub:OWNER/NAME`` (its ``config.json`` and
  ``model.safetensors`` are downloaded where the network allows).

A timm model is built by timm from its ``config.json`` (architecture, ``model_args``, classes) and
prepared with its own pretrained config: mean, std, input size and ``crop_pct`` (resize the shorter
side to ``floor(size / crop_pct)``, as timm's eval transform does, then center crop). Weights are
read from safetensors only, never from a pickle, whatever timm would fall back to.

The metadata returned has the keys of a toolkit model file that evaluation and predict use:
``num_classes``, ``class_names`` (a timm model without ``label_names`` has none), ``image_size``,
``resize_size``, ``mean``, ``std``, ``arch``.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Optional

import torch

from toolkit.errors import UsageError, usage_errors
from toolkit.formats.model_file import read_model_file
from toolkit.models.resnet import MODEL_SPECS, create_model

LOCAL_DIR, HF_HUB = "local-dir:", "hf-hub:"
TIMM_CONFIG, WEIGHTS = "config.json", "model.safetensors"
INTERPOLATION = "bilinear"  # what toolkit.data.build_eval_transform resizes with
MAX_INPUT_SIZE = 4096  # pixels per side: larger is a damaged or hostile config, not a classifier's input


def load_model(source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) for a model file, a run folder, a timm folder or an ``hf-hub:`` id."""
    if source.startswith(HF_HUB):
        return load_timm_folder(download_hub_model(source[len(HF_HUB) :]), name=source)
    if source.startswith(LOCAL_DIR):
        return load_timm_folder(Path(source[len(LOCAL_DIR) :]), name=source)
    path = Path(source)
    if path.is_dir():
        if (path / TIMM_CONFIG).is_file():
            return load_timm_folder(path, name=f"{LOCAL_DIR}{path}")
        if (path / WEIGHTS).is_file():  # a run folder: its best model
            return load_model_file(path / WEIGHTS)
        raise UsageError(
            f"model folder {source!r} holds neither {TIMM_CONFIG} (a timm model folder) nor {WEIGHTS} (a training run)"
        )
    return load_model_file(path)


def default_output_folder(source: str) -> Optional[Path]:
    """Where results about a model go unless told: beside a model file, inside a folder; None for the Hub."""
    if source.startswith(HF_HUB):
        return None
    path = Path(source.removeprefix(LOCAL_DIR))
    return path if path.is_dir() else path.resolve().parent


def load_timm_folder(folder: Path, *, name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model timm describes in ``folder/config.json`` and load ``folder/model.safetensors`` into it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = folder / TIMM_CONFIG, folder / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UsageError(
                f"{name}: no {path.name} in {str(folder)!r} (a timm model folder has {TIMM_CONFIG} and "
                f"{WEIGHTS}; only safetensors weights are read)"
            )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{name}: {config_path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{name}: {config_path} is not a JSON object")
    shapes = weight_shapes(weights_path, name)
    check_fits(build_timm(folder, name, on_meta=True), shapes, config, name)  # no memory spent on a hostile config
    model = build_timm(folder, name, on_meta=False)
    try:
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    except (SafetensorError, OSError, RuntimeError) as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{name}: {weights_path} cannot be loaded ({type(err).__name__}: {detail})") from None
    model.eval()
    return model, timm_metadata(model, config, name)


def build_timm(folder: Path, name: str, *, on_meta: bool) -> torch.nn.Module:
    """The model ``config.json`` describes; on the meta device its shapes only, allocating nothing."""
    import timm

    try:
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            return timm.create_model(f"{LOCAL_DIR}{folder}", pretrained=False)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as err:
        raise UsageError(f"{name}: timm cannot build the model its {TIMM_CONFIG} describes ({err})") from None


def weight_shapes(path: Path, name: str) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the safetensors header alone (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{name}: {path} is not a readable safetensors file ({err})") from None


def check_fits(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], config: dict, name: str) -> None:
    """``config.json`` and the weights describe the same model: every tensor's name and shape agree.

    Checked on the meta-device model before a real one is built, so a config asking for 500,000
    classes costs nothing, and a mismatch is one line instead of load_state_dict's RuntimeError.
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise UsageError(
            f"{name}: weights do not fit {config.get('architecture')}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected (e.g. {(missing or unexpected)[0]})"
        )
    wrong = [key for key in expected if expected[key] != shapes[key]]
    if wrong:
        key = wrong[0]
        raise UsageError(
            f"{name}: {TIMM_CONFIG} does not match the weights: {key} is {list(shapes[key])} in {WEIGHTS}, "
            f"{list(expected[key])} by {TIMM_CONFIG} (num_classes={config.get('num_classes')}); "
            f"{len(wrong)} tensor(s) differ"
        )


def timm_metadata(model: torch.nn.Module, config: dict, name: str) -> dict[str, Any]:
    """The toolkit's preprocessing and class metadata from a timm model's pretrained config."""
    pretrained = dict(getattr(model, "pretrained_cfg", None) or config.get("pretrained_cfg") or {})
    num_classes = int(getattr(model, "num_classes", 0) or config.get("num_classes") or 0)
    if num_classes < 2:
        raise UsageError(
            f"{name}: a classifier with {num_classes} output(s) cannot be evaluated (it needs >= 2 classes)"
        )
    labels = config.get("label_names") or pretrained.get("label_names")  # absent: unnamed, only the count is checked
    class_names = [str(label) for label in labels] if labels else None
    if class_names is not None and len(class_names) != num_classes:
        raise UsageError(f"{name}: {len(class_names)} label_names for {num_classes} outputs")
    try:
        size = int(pretrained["input_size"][-1])
        crop_pct = float(pretrained.get("crop_pct") or 1.0)
        mean, std = [float(v) for v in pretrained["mean"]], [float(v) for v in pretrained["std"]]
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        raise UsageError(f"{name}: its pretrained_cfg lacks input_size, mean or std") from None
    problem = preprocessing_problem(size, crop_pct, mean, std)
    if problem:
        raise UsageError(f"{name}: its pretrained_cfg has {problem}; fix {TIMM_CONFIG}")
    interpolation = pretrained.get("interpolation", INTERPOLATION)
    if interpolation != INTERPOLATION:  # the difference is small, but the user should know the numbers are ours
        print(f"note: {name} was made for {interpolation} resizing; images are resized {INTERPOLATION}", flush=True)
    return {
        "format": "timm",
        "source": name,
        "arch": config.get("architecture", type(model).__name__),
        "num_classes": num_classes,
        "class_names": class_names,
        "image_size": size,
        "resize_size": math.floor(size / crop_pct),  # timm's eval transform: scale_size = floor(size / crop_pct)
        "mean": mean,
        "std": std,
    }


def preprocessing_problem(size: int, crop_pct: float, mean: list[float], std: list[float]) -> Optional[str]:
    """What is impossible in a pretrained config's preprocessing (None: nothing)."""
    if not 1 <= size <= MAX_INPUT_SIZE:
        return f"input_size {size} (expected 1 to {MAX_INPUT_SIZE} pixels)"
    if not (math.isfinite(crop_pct) and 0 < crop_pct <= 1):
        return f"crop_pct {crop_pct} (expected a number in (0, 1])"
    if len(mean) != len(std) or not mean:
        return f"{len(mean)} mean and {len(std)} std values"
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        return f"mean {mean} / std {std} (expected finite numbers, std > 0)"
    return None


def download_hub_model(repo: str) -> Path:
    """The Hub repo's config.json and model.safetensors in the local cache; one line when that is impossible."""
    from huggingface_hub import hf_hub_download

    if not repo or repo.count("/") != 1:
        raise UsageError(f"{HF_HUB}{repo}: give a Hub model id, {HF_HUB}OWNER/NAME")
    try:
        config = hf_hub_download(repo, TIMM_CONFIG)
        hf_hub_download(repo, WEIGHTS)
    except Exception as err:  # offline, unknown repo, no safetensors: huggingface_hub has many error types
        raise UsageError(
            f"{HF_HUB}{repo}: cannot get {TIMM_CONFIG} and {WEIGHTS} from the Hub "
            f"({type(err).__name__}); where there is network: hf download {repo} {TIMM_CONFIG} {WEIGHTS} "
            f"--local-dir DIR, then pass local-dir:DIR"
        ) from None
    return Path(config).parent


# ---------------------------------------------------------------------------------------------
# Model files written by training


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
