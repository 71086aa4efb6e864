"""Typed, validated run configuration: a YAML file plus dotted ``key=value`` overrides.

Every run is described by one ``Config``. It is loaded from YAML, overridden from the command
line (``optimizer.lr=3e-4 model.blocks_per_stage=[1,1,1,1]``), checked field by field, and the
resolved result is written into the run folder. A mistake anywhere is one line naming the full
key, what was given and what is allowed (``UsageError``, exit code 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Optional, Sequence, Union

import yaml

from toolkit.errors import UsageError
from toolkit.fileio import dump_yaml, read_yaml_mapping
from toolkit.formats.manifest import MANIFEST_NAME, class_names
from toolkit.formats.run_dir import MONITORS
from toolkit.formats.sample_order import accumulation, default_streams
from toolkit.models import MODEL_ARCHS
from toolkit.models.resnet import BLOCKS
from toolkit.redaction import check_no_credentials

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("step", "cosine", "constant")
ACCELERATE_GRAD_ACCUM_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
WANDB_MODES = ("auto", "online", "offline", "disabled")
AUGMENTS = ("none", "trivialaugment", "randaugment")
TTA_MODES = ("none", "hflip", "hflip_crops")  # test-time augmentation: toolkit.evaluation.tta defines each
# The configs that ship with the package (toolkit/configs links to the repository's configs/ and is
# package data), so the commands' defaults are found from any folder, installed or not.
SHIPPED_CONFIGS = Path(__file__).parent / "configs"


def _choice(*allowed: str) -> dict:
    return {"choices": allowed}


def _range(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False) -> dict:
    return {"low": low, "high": high, "low_open": low_open}


@dataclass(frozen=True)
class DataConfig:
    shards: str = "shards"  # folder with info.json, a brace pattern, s3:// gs:// hf:// http(s):// or pipe: (README)
    endpoint_url: Optional[str] = None  # S3-compatible store (MinIO, SeaweedFS...); null: AWS_ENDPOINT_URL or AWS
    retry_deadline_s: float = field(default=120.0, metadata=_range(0.0, low_open=True))  # remote reads: stall limit
    read_block_kib: int = field(default=8192, metadata=_range(4))  # object stores: KiB per ranged GET of a shard
    image_size: int = field(default=224, metadata=_range(8, 4096))
    resize_size: int = field(default=255, metadata=_range(8, 4096))  # eval: resize shorter side, then center crop
    mean: Optional[list[float]] = None  # None: the train-split statistics from info.json
    std: Optional[list[float]] = None
    num_workers: int = field(default=4, metadata=_range(0))
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = field(default=2, metadata=_range(1))
    shuffle_buffer: int = field(default=1000, metadata=_range(0))
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    hflip: bool = True
    color_jitter: Optional[list[float]] = field(default_factory=lambda: [0.2, 0.2, 0.2, 0.1])
    # device: batched colour matrix on the training device (YIQ hue, cheap); workers: torchvision's
    # ColorJitter per image in the loader workers (HSV hue, ~2.5 ms per 224 px image on one core)
    jitter_on: str = field(default="device", metadata=_choice("device", "workers"))
    augment: str = field(default="none", metadata=_choice(*AUGMENTS))  # policy applied after crop/flip/jitter
    random_erasing: float = field(default=0.0, metadata=_range(0.0, 1.0))  # probability of erasing one random box
    strict: bool = False  # stop at the first bad sample instead of skipping and counting it
    decode: str = field(
        default="cpu", metadata=_choice("cpu", "gpu")
    )  # gpu: workers ship JPEG bytes, the accelerator decodes + augments (training)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet101"
    blocks_per_stage: Optional[list[int]] = None  # None: the preset's, e.g. [3, 4, 23, 3]
    block: Optional[str] = field(default=None, metadata=_choice(*BLOCKS))  # None: the preset's
    base_width: int = field(default=64, metadata=_range(1))
    num_classes: Optional[int] = field(default=None, metadata=_range(2))  # None: the shards' class count
    in_chans: int = field(default=3, metadata=_range(1))
    zero_init_residual: bool = False
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # BatchNorm statistics over all processes each step (SyncBatchNorm; CUDA/NCCL only)
    # ImageNet weights to start from: a timm name (resnet101.a1h_in1k), hf-hub:ID, or a local .safetensors file
    init: Optional[str] = None


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = field(default="adam", metadata=_choice(*OPTIMIZERS))
    lr: float = field(default=1e-3, metadata=_range(0.0, low_open=True))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    nesterov: bool = False
    weight_decay: float = field(default=1e-4, metadata=_range(0.0))
    decay_norm_and_bias: bool = True  # false: no weight decay on 1-D parameters (norm weights, biases)
    backbone_lr_scale: float = field(default=1.0, metadata=_range(0.0, 1.0, low_open=True))  # < 1: fine-tuning


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = field(default="step", metadata=_choice(*SCHEDULERS))
    step_epochs: int = field(default=30, metadata=_range(1))  # StepLR period, in epochs
    gamma: float = field(default=0.1, metadata=_range(0.0, 1.0, low_open=True))
    warmup_epochs: float = field(default=0.0, metadata=_range(0.0))
    min_lr_ratio: float = field(default=0.0, metadata=_range(0.0, 1.0))  # cosine floor, as a share of lr


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=30, metadata=_range(1))
    batch_size: int = field(default=32, metadata=_range(1))  # per process
    seed: int = field(default=42, metadata=_range(0, 2**63 - 1))  # torch takes 64-bit seeds; ours derive from it
    mixed_precision: Optional[str] = field(default=None, metadata=_choice(*MIXED_PRECISION))  # None: the launcher's
    # None: the launcher's (accelerate launch --gradient_accumulation_steps N), else 1; a number here wins
    grad_accum_steps: Optional[int] = field(default=None, metadata=_range(1))
    # samples per optimizer step over all processes; None: batch_size x processes x grad_accum_steps. Set, it
    # fixes the steps per epoch, the LR schedule and the samples of every step whatever the process count
    # (gradient accumulation fills the gap), so a checkpoint continues on any count that divides it
    global_batch_size: Optional[int] = field(default=None, metadata=_range(1))
    # streams the training shards are dealt to each epoch (the sample order's unit); None: one per piece
    # of a global step (formats.sample_order)
    streams: Optional[int] = field(default=None, metadata=_range(1))
    record_sample_keys: bool = False  # debugging: RUN/sample_keys.jsonl, the sample keys of every step
    grad_clip: Optional[float] = field(default=None, metadata=_range(0.0, low_open=True))
    label_smoothing: float = field(default=0.0, metadata=_range(0.0, 1.0))
    ema_decay: Optional[float] = field(default=None, metadata=_range(0.0, 1.0))
    resume: Optional[str] = None  # None, "auto", or a checkpoint folder
    checkpoint_every_steps: int = field(default=0, metadata=_range(0))  # 0: off
    checkpoint_every_epochs: int = field(default=1, metadata=_range(0))
    # also save when this much wall-clock time passed since the last checkpoint (or the start or resume),
    # decided at a step boundary on the slowest rank's clock; 0: off
    checkpoint_every_minutes: float = field(default=0.0, metadata=_range(0.0))
    # seconds a collective waits for a peer before this process fails (so an elastic agent restarts the
    # survivors after a frozen or unreachable node); None: torch's default (30 min gloo, 10 min NCCL)
    collective_timeout_s: Optional[float] = field(default=None, metadata=_range(0.0, low_open=True))
    keep_checkpoints: int = field(default=2, metadata=_range(1))
    skip_nonfinite: bool = False
    # BatchNorm running statistics before each validation with N processes (timm's --dist-bn): the mean over
    # processes, rank 0's, or each its own (then val metrics mix per-rank statistics the saved model lacks)
    dist_bn: str = field(default="reduce", metadata=_choice("reduce", "broadcast", "none"))
    max_steps: int = field(
        default=0, metadata=_range(0)
    )  # 0: no limit; else checkpoint and stop after N steps (resumable)
    log_every_steps: int = field(default=10, metadata=_range(1))
    # The val metric that picks the best model (timm's --eval-metric, Lightning's ModelCheckpoint(monitor=)):
    # auto is val_auc for two classes and val_acc (top-1) for more; val_top5 needs more than 5 classes
    monitor: str = field(default="auto", metadata=_choice("auto", *MONITORS))
    # max or min (Lightning's mode=); auto: the metric's own (min for val_loss, else max)
    monitor_mode: str = field(default="auto", metadata=_choice("auto", "max", "min"))
    # stop after this many validations without improving train.monitor by more than early_stop_min_delta
    # (Lightning's EarlyStopping(patience=, min_delta=), timm's --patience-epochs idea); 0: off
    early_stop_patience: int = field(default=0, metadata=_range(0))
    early_stop_min_delta: float = field(default=0.0, metadata=_range(0.0))
    # weights of the training loss per class: none, balanced (from the train split's class counts) or a list;
    # resolved into the run's config.yaml as the list used. Validation loss stays unweighted
    class_weights: Union[str, list[float]] = field(default="none", metadata=_choice("none", "balanced"))
    # Mixup / CutMix of each training micro-batch as timm's Mixup (mode batch), seeded per micro-batch
    # (toolkit.training.mixing); on when either alpha > 0 or cutmix_minmax is set
    mixup_alpha: float = field(default=0.0, metadata=_range(0.0))
    cutmix_alpha: float = field(default=0.0, metadata=_range(0.0))
    cutmix_minmax: Optional[list[float]] = None  # [min, max] box side ratio; set: CutMix with this box, alpha 1
    mix_prob: float = field(default=1.0, metadata=_range(0.0, 1.0))
    mix_switch_prob: float = field(default=0.5, metadata=_range(0.0, 1.0))

    @property
    def mixing(self) -> bool:
        """timm's ``mixup_active``: either alpha above 0, or a CutMix min/max ratio given."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.cutmix_minmax is not None


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = field(default=64, metadata=_range(1))
    threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))  # two classes: class 1 when P >= it; more: argmax
    test_split: Optional[str] = "test"  # evaluated with the best model when training ends; None: skip
    plots: bool = True
    num_images: int = field(default=8, metadata=_range(0))  # for the prediction grid and Grad-CAM
    gradcam_layer: str = "layer4"
    # test-time augmentation of the final evaluation after training (toolkit.evaluation.tta); per-epoch
    # validation stays plain so train.monitor is comparable across epochs and cheap
    tta: str = field(default="none", metadata=_choice(*TTA_MODES))


@dataclass(frozen=True)
class TrackingConfig:
    wandb: str = field(default="auto", metadata=_choice(*WANDB_MODES))
    project: str = "pets-toolkit"
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    group: Optional[str] = None  # W&B run group: compare_recipes sets the recipe's name
    tensorboard: bool = False  # also write TensorBoard event files to RUN/tensorboard (pip install -e ".[tensorboard]")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"
    run_name: Optional[str] = None  # None: a timestamp
    # RUN/.lock is a lease its writer renews every lock_expiry_s / 10 s: a dead writer's lock expires after this
    lock_expiry_s: float = field(default=300.0, metadata=_range(1.0))
    # how long each process waits to see the run folder the main process created (shared storage caches)
    shared_wait_s: float = field(default=30.0, metadata=_range(0.0))


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---------------------------------------------------------------------------------------------
# Loading and overriding


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides, validated into a ``Config``."""
    raw: dict = {}
    if path is not None:
        raw = read_yaml_mapping(path)
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(raw, key, value)
    return config_from_dict(raw)


def parse_override(text: str) -> tuple[str, Any]:
    """``optimizer.lr=3e-4`` -> ("optimizer.lr", 0.0003); values are YAML scalars or flow lists."""
    if "=" not in text:
        raise UsageError(f"override {text!r} is not of the form section.key=value, e.g. optimizer.lr=3e-4")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise UsageError(f"override {text!r} has an invalid key {key!r}; use section.key=value, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        raise UsageError(f"override {text!r}: value {value_text!r} is not a valid YAML scalar or list") from None
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise UsageError(f"override {key}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise UsageError(f"config must be a mapping of sections, got {type(raw).__name__}")
    return _build(Config, raw, prefix="")


def _build(cls: type, raw: Any, prefix: str):
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
        hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
        raise UsageError(f"unknown config key {prefix}{key}{hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        full = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], full + ".")
        else:
            value = _coerce(raw[name], hint, full)
            _check_metadata(value, f.metadata, full)
            values[name] = value
    return cls(**values)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = " or null" if type(None) in typing.get_args(hint) else ""
        return " or ".join(_type_name(a) for a in args) + nullable
    if origin is list:
        (item,) = typing.get_args(hint)
        return f"a list of {_type_name(item).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # a word or a list (train.class_weights): the value's own shape picks
            lists = [a for a in inner if typing.get_origin(a) is list]
            words = [a for a in inner if a not in lists]
            return _coerce(value, lists[0] if lists and isinstance(value, (list, tuple)) else words[0], key)
        return _coerce(value, inner[0], key)
    wrong = UsageError(f"{key} = {_show(value)} has the wrong type; expected {_type_name(hint)}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise wrong
        (item,) = typing.get_args(hint)
        try:
            return [_coerce(v, item, key) for v in value]
        except UsageError:
            raise wrong from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise wrong
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads a bare `no` / `yes` as a boolean (train.mixed_precision=no)
            return "yes" if value else "no"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise wrong
    raise wrong


def _check_metadata(value: Any, meta: typing.Mapping, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices and not isinstance(value, list) and value not in choices:  # a list is checked where it is resolved
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{key} = {_show(value)} is not allowed; choose one of {', '.join(choices)}{hint}")
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{key} = {_show(value)} must be a finite number")
    too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else (f"> {low}" if meta.get("low_open") else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        allowed = " and ".join(part for part in (lo, hi) if part)
        raise UsageError(f"{key} = {_show(value)} is out of range; it must be {allowed}")


# ---------------------------------------------------------------------------------------------
# Cross-field checks and output


def model_image_sizes(meta: dict, source: str) -> tuple[int, int]:
    """(image_size, resize_size) from a model file's metadata, held to data.image_size's and data.resize_size's
    own ranges (at most 4096): the one check evaluate and predict share.

    The sizes come from a file a user may have been sent; unchecked, a header asking for 60000 px makes
    every image a 10+ GB allocation. A file without resize_size resizes to image_size (older files).
    """
    raw = {"image_size": meta.get("image_size"), "resize_size": meta.get("resize_size", meta.get("image_size"))}
    try:
        data = _build(DataConfig, raw, prefix="data.")
        if data.image_size is None or data.resize_size < data.image_size:
            raise UsageError(f"resize_size {raw['resize_size']!r} must be >= image_size {raw['image_size']!r}")
    except (UsageError, TypeError) as err:
        raise UsageError(
            f"{source}: its metadata's image sizes are unusable ({err}); the file is damaged or "
            "not from a toolkit training run"
        ) from None
    return data.image_size, data.resize_size


def eval_data_config(meta: dict, source: str, *, shards: str = "shards", num_workers: int = 0) -> DataConfig:
    """The data section that evaluates, predicts with or plots a model: its own image sizes and normalization."""
    image_size, resize_size = model_image_sizes(meta, source)
    return DataConfig(
        shards=shards,
        image_size=image_size,
        resize_size=resize_size,
        num_workers=num_workers,
        mean=[float(m) for m in meta["mean"]],
        std=[float(s) for s in meta["std"]],
    )


def validate_config(cfg: Config) -> Config:
    """Checks that span several fields; called once after loading."""
    check_no_credentials(cfg.data.shards, "data.shards")
    if cfg.model.arch not in MODEL_ARCHS:
        close = difflib.get_close_matches(cfg.model.arch, MODEL_ARCHS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(
            f"model.arch = {cfg.model.arch!r} is not allowed; choose one of {', '.join(MODEL_ARCHS)}{hint}"
        )
    bps = cfg.model.blocks_per_stage
    if bps is not None and (len(bps) != 4 or any(b < 1 for b in bps)):
        raise UsageError(f"model.blocks_per_stage = {bps} must be 4 positive integers, e.g. [3, 4, 23, 3]")
    lo, hi = (cfg.data.crop_scale + [None, None])[:2] if len(cfg.data.crop_scale) == 2 else (None, None)
    if lo is None or not (0.0 < lo <= hi <= 1.0):
        raise UsageError(f"data.crop_scale = {cfg.data.crop_scale} must be [low, high] with 0 < low <= high <= 1")
    for name in ("mean", "std"):
        stats = getattr(cfg.data, name)
        if stats is not None and (len(stats) != cfg.model.in_chans or (name == "std" and min(stats) <= 0)):
            raise UsageError(
                f"data.{name} = {stats} must hold {cfg.model.in_chans} numbers (std > 0), or be null to use info.json"
            )
    if cfg.data.color_jitter is not None and len(cfg.data.color_jitter) != 4:
        raise UsageError(
            f"data.color_jitter = {cfg.data.color_jitter} must be [brightness, contrast, saturation, hue] or null"
        )
    if cfg.data.color_jitter is not None and not (min(cfg.data.color_jitter) >= 0 and cfg.data.color_jitter[3] <= 0.5):
        raise UsageError(f"data.color_jitter = {cfg.data.color_jitter} must be >= 0 each, with hue <= 0.5")
    if cfg.data.decode == "gpu" and cfg.data.augment != "none":
        raise UsageError(
            f"data.augment = {cfg.data.augment!r} runs in the CPU loader workers only; with "
            "data.decode=gpu set it to none, or use data.decode=cpu"
        )
    if cfg.data.decode == "gpu" and cfg.data.color_jitter and cfg.data.jitter_on == "workers":
        raise UsageError(
            "data.jitter_on = workers needs decoded images in the workers; with data.decode=gpu "
            "use data.jitter_on=device"
        )
    if len(cfg.optimizer.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optimizer.betas):
        raise UsageError(f"optimizer.betas = {cfg.optimizer.betas} must be two numbers in [0, 1)")
    if cfg.data.resize_size < cfg.data.image_size:
        raise UsageError(
            f"data.resize_size = {cfg.data.resize_size} must be >= data.image_size = {cfg.data.image_size}"
        )
    if cfg.scheduler.warmup_epochs >= cfg.train.epochs:
        raise UsageError(
            f"scheduler.warmup_epochs = {cfg.scheduler.warmup_epochs} must be shorter than train.epochs = {cfg.train.epochs}"
        )
    _check_mixing(cfg)
    resume = cfg.train.resume
    if resume not in (None, "auto") and not Path(resume).is_dir():
        raise UsageError(f"train.resume = {resume!r} is neither 'auto' nor an existing checkpoint folder")
    return cfg


def _check_mixing(cfg: Config) -> None:
    """CutMix's box ratios, and no class weights with mixing (the weighted loss is defined for hard labels)."""
    minmax, train = cfg.train.cutmix_minmax, cfg.train
    if minmax is not None and (
        len(minmax) != 2
        or not 0.0 <= minmax[0] < minmax[1] <= 1.0
        or int(cfg.data.image_size * minmax[0]) >= int(cfg.data.image_size * minmax[1])
    ):
        raise UsageError(
            f"train.cutmix_minmax = {minmax} must be [min, max] with 0 <= min < max <= 1 and a box of at least "
            f"one pixel between them at data.image_size = {cfg.data.image_size}, or null"
        )
    if train.mixing and train.class_weights != "none":
        raise UsageError(
            "train.class_weights cannot be combined with mixup/cutmix (train.mixup_alpha, cutmix_alpha, "
            "cutmix_minmax): set train.class_weights=none or turn the mixing off"
        )


def launcher_grad_accum_steps(environ: Mapping[str, str]) -> int:
    """Gradient accumulation asked of ``accelerate launch`` (it exports it for the script), else 1."""
    text = environ.get(ACCELERATE_GRAD_ACCUM_ENV, "1")
    try:
        steps = int(text)
    except ValueError:
        raise UsageError(
            f"{ACCELERATE_GRAD_ACCUM_ENV}={text!r} from the launcher is not a whole number; "
            "set train.grad_accum_steps instead"
        ) from None
    if steps < 1:
        raise UsageError(f"{ACCELERATE_GRAD_ACCUM_ENV}={steps} from the launcher must be >= 1")
    return steps


# ---------------------------------------------------------------------------------------------
# Resolution: the values a run decides from its data and its launcher, once, before anything runs


def resolve_config(cfg: Config, info: dict, environ: Mapping[str, str] = os.environ, world_size: int = 1) -> Config:
    """The config a run trains with, every value decided; nothing changes it afterwards.

    The shards' manifest gives the head's class count and, unless the config sets them, the
    normalization statistics; the launcher gives gradient accumulation unless the config sets it, or
    ``train.global_batch_size`` and the ``world_size`` processes decide it.
    This is the config written to RUN/config.yaml and into every model file.
    """
    return dataclasses.replace(
        cfg,
        data=resolve_normalization(cfg.data, info),
        model=dataclasses.replace(cfg.model, num_classes=head_size(cfg, class_names(info))),
        train=dataclasses.replace(
            resolve_batches(resolve_monitor(cfg.train, len(class_names(info))), world_size, environ),
            class_weights=resolve_class_weights(cfg.train.class_weights, info),
        ),
    )


def resolve_batches(train: TrainConfig, world_size: int, environ: Mapping[str, str]) -> TrainConfig:
    """Gradient accumulation, the global batch and the sample streams, decided for ``world_size`` processes.

    With ``train.global_batch_size`` set, accumulation follows from it (and a config or launcher value
    must agree); without it, the global batch follows from the accumulation, as before it existed.
    """
    asked = train.grad_accum_steps or launcher_grad_accum_steps(environ)
    global_batch = train.global_batch_size
    if global_batch is None:
        global_batch = train.batch_size * world_size * asked
    accum = accumulation(global_batch, train.batch_size, world_size)
    if train.global_batch_size is not None and asked not in (1, accum):
        raise UsageError(
            f"gradient accumulation {asked} disagrees with train.global_batch_size = {global_batch} on {world_size} "
            f"process(es) x train.batch_size {train.batch_size} (that needs {accum}); leave one of them out"
        )
    return dataclasses.replace(
        train,
        grad_accum_steps=accum,
        global_batch_size=global_batch,
        streams=train.streams or default_streams(global_batch, train.batch_size),
    )


def resolve_monitor(train: TrainConfig, num_classes: int) -> TrainConfig:
    """``train.monitor`` and ``train.monitor_mode`` decided: auto is val_auc for two classes, top-1 for more.

    Macro ROC-AUC of 37 breeds saturates early while top-1 still climbs, so it would pick the wrong epoch.
    """
    monitor = train.monitor if train.monitor != "auto" else ("val_auc" if num_classes == 2 else "val_acc")
    if monitor == "val_top5" and num_classes <= 5:
        raise UsageError(
            f"train.monitor = val_top5 needs more than 5 classes (the shards have {num_classes}: top-5 is always 1); "
            "choose val_acc, val_auc, val_balanced_acc or val_loss"
        )
    mode = train.monitor_mode if train.monitor_mode != "auto" else MONITORS[monitor]
    return dataclasses.replace(train, monitor=monitor, monitor_mode=mode)


def resolve_class_weights(weights: Union[str, list[float]], info: dict) -> Union[str, list[float]]:
    """``train.class_weights`` as the run uses it: ``none``, or one weight per class (in the manifest's order).

    ``balanced`` is scikit-learn's ``compute_class_weight('balanced')``: n_samples / (n_classes * count_c)
    over the train split's counts, so each class contributes equally to the training loss.
    """
    classes = class_names(info)
    if weights == "none":
        return weights
    if weights == "balanced":
        counts = dict((info.get("splits", {}).get("train") or {}).get("class_counts") or {})
        missing = [name for name in classes if int(counts.get(name, 0)) <= 0]
        if missing:
            raise UsageError(
                f"train.class_weights = balanced needs train images of every class, but {', '.join(missing[:5])} "
                "has none in the shards' train split; re-pack with images of it, or give an explicit list"
            )
        total = sum(int(counts[name]) for name in classes)
        return [total / (len(classes) * int(counts[name])) for name in classes]
    if len(weights) != len(classes):
        raise UsageError(
            f"train.class_weights has {len(weights)} weights but the shards have {len(classes)} classes "
            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); give one weight per class in that order"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise UsageError(f"train.class_weights = {_show(weights)} must be finite numbers >= 0, at least one > 0")
    return [float(w) for w in weights]


def head_size(cfg: Config, classes: Sequence[str]) -> int:
    """The shards name the classes; ``model.num_classes`` follows them, or must agree when it is set."""
    if cfg.model.num_classes is None or cfg.model.num_classes == len(classes):
        return len(classes)
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    raise UsageError(
        f"model.num_classes={cfg.model.num_classes} but the shards {cfg.data.shards} have "
        f"{len(classes)} classes ({shown}); leave model.num_classes out (the shards decide) or "
        "point data.shards at shards packed for this task"
    )


def resolve_normalization(data: DataConfig, info: dict) -> DataConfig:
    """``data`` with mean/std decided: the config's if given, else the train-split statistics in the manifest."""
    stats = info.get("normalization") or {}
    mean = data.mean if data.mean is not None else stats.get("mean")
    std = data.std if data.std is not None else stats.get("std")
    if mean is None or std is None:
        raise UsageError(
            f"{MANIFEST_NAME} has no normalization statistics; set data.mean and data.std "
            "(three numbers each) or re-create the shards"
        )
    try:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
    except (TypeError, ValueError):
        raise UsageError(f"normalization mean={mean!r} std={std!r} must be lists of three numbers") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UsageError(f"normalization mean={mean} std={std} needs three numbers each, std > 0")
    return dataclasses.replace(data, mean=mean, std=std)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def raw_section(config: dict, name: str) -> dict:
    """``config[name]`` of a config read back as plain YAML (``{}`` when absent or not a mapping)."""
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def to_yaml(cfg: Config) -> str:
    return dump_yaml(to_dict(cfg))


def split_config_args(argv: Sequence[str], value_flags: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from ordinary ``--flags`` on a command line.

    ``--section.key=value`` (the form W&B's sweep agent passes as ``${args}``) is the same override as
    ``section.key=value``. The word after a flag in ``value_flags`` (one that takes one value) is that
    flag's value even when it holds ``=`` (``--shards 'pipe:curl ...?a=b'``), never an override.
    """
    flags, overrides = [], []
    is_value = False
    for arg in argv:
        dashed = None if is_value else dashed_override(arg)
        if dashed is not None:
            overrides.append(dashed)
        elif "=" in arg and not arg.startswith("-") and not is_value:
            overrides.append(arg)
        else:
            flags.append(arg)
        is_value = not is_value and arg in value_flags
    return flags, overrides


def dashed_override(arg: str) -> Optional[str]:
    """``--optimizer.lr=0.001`` -> ``optimizer.lr=0.001``; None for anything else (``--config=x.yaml`` has no section).

    W&B writes each value with Python's ``str``, so its ``None`` is read as null.
    """
    if not arg.startswith("--") or "=" not in arg:
        return None
    key, _, value = arg[2:].partition("=")
    parts = key.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        return None
    return f"{key}={'null' if value == 'None' else value}"
