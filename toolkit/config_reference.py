"""docs/config.md, generated from the config dataclasses: every key with its type, default, meaning and
the matching flag of timm's ``train.py`` where there is one.

    python -m toolkit.config_reference              # rewrite docs/config.md
    python -m toolkit.config_reference --check      # exit 1 when docs/config.md is not current

Types, defaults and allowed values come from ``toolkit.config`` itself; only the meaning and the timm
flag are written here, and a key without them is an error (``tests/test_config_reference.py``), so a
new config key cannot be left out of the reference.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Optional, Sequence

from toolkit import config as config_module
from toolkit.config import Config

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
TIMM_TRAIN = "https://github.com/huggingface/pytorch-image-models/blob/main/train.py"

# key: (meaning, timm train.py flag or "")
KEYS: dict[str, tuple[str, str]] = {
    "data.shards": (
        "shard folder with info.json, a brace pattern, `s3://`, `gs://`, `hf://`, http(s) URL or `pipe:` command "
        "(README: Shards on object storage)",
        "--data-dir",
    ),
    "data.endpoint_url": (
        "S3-compatible store's endpoint (MinIO, SeaweedFS, R2; path-style); null: `AWS_ENDPOINT_URL` or AWS itself",
        "",
    ),
    "data.read_block_kib": (
        "object stores: KiB per ranged GET of a shard (memory per open shard; a retry resumes at the block being read)",
        "",
    ),
    "data.retry_deadline_s": (
        "remote shards: stop with one line when a shard makes no progress for this long (retries in between)",
        "",
    ),
    "data.image_size": ("training crop and eval center-crop size, px", "--img-size"),
    "data.resize_size": (
        "eval: resize the shorter side to this, then center-crop `image_size`",
        "--crop-pct (as image_size / resize_size)",
    ),
    "data.mean": ("normalization mean per channel; `null`: the train split's, from info.json", "--mean"),
    "data.std": ("normalization std per channel; `null`: the train split's, from info.json", "--std"),
    "data.num_workers": ("DataLoader worker processes per training process", "-j, --workers"),
    "data.pin_memory": ("pinned host memory for faster copies to the GPU", "--pin-mem"),
    "data.persistent_workers": ("keep loader workers alive between epochs", ""),
    "data.prefetch_factor": ("batches each worker prepares ahead", ""),
    "data.shuffle_buffer": ("samples in the webdataset shuffle buffer (train)", ""),
    "data.crop_scale": ("RandomResizedCrop area range", "--scale"),
    "data.hflip": ("random horizontal flip (p = 0.5)", "--hflip (a probability)"),
    "data.color_jitter": ("brightness, contrast, saturation, hue jitter; `null`: off", "--color-jitter"),
    "data.jitter_on": ("`device`: batched on the training device; `workers`: torchvision's ColorJitter per image", ""),
    "data.augment": ("extra policy after crop/flip/jitter: `none`, `trivialaugment`, `randaugment`", "--aa"),
    "data.random_erasing": ("probability of erasing one random box per image", "--reprob"),
    "data.strict": ("stop at the first bad sample instead of skipping and counting it", ""),
    "data.decode": ("`cpu`: workers decode; `gpu`: nvJPEG decode + augmentation on the GPU (training)", ""),
    "model.arch": ("ResNet preset: resnet18, 34, 50, 101, 152", "--model"),
    "model.blocks_per_stage": ("blocks in each of the 4 stages; `null`: the preset's", "--model-kwargs layers=..."),
    "model.block": ("`basic` or `bottleneck`; `null`: the preset's", ""),
    "model.base_width": ("channels of the stem and first stage (64 is standard; only 64 exports to timm)", ""),
    "model.num_classes": ("classifier outputs; `null`: the shards' class count", "--num-classes"),
    "model.in_chans": ("input channels", "--in-chans"),
    "model.zero_init_residual": (
        "zero the last BatchNorm of each residual branch at init",
        "(timm: zero_init_last, on by default)",
    ),
    "model.channels_last": ("channels_last memory format (faster with mixed precision on GPUs)", "--channels-last"),
    "model.compile": ("torch.compile the model", "--torchcompile"),
    "model.sync_bn": ("SyncBatchNorm across processes (CUDA/NCCL)", "--sync-bn"),
    "model.init": (
        "start from weights: a timm name, `hf-hub:ID` or a local .safetensors file",
        "--pretrained / --pretrained-path",
    ),
    "optimizer.name": ("`adam` (L2 in the gradient), `adamw`, `sgd`", "--opt"),
    "optimizer.lr": ("learning rate (peak, after warmup)", "--lr"),
    "optimizer.betas": ("Adam/AdamW betas", "--opt-betas"),
    "optimizer.momentum": ("SGD momentum", "--momentum"),
    "optimizer.nesterov": ("SGD with Nesterov momentum", "--opt (sgd is Nesterov in timm, momentum is not)"),
    "optimizer.weight_decay": ("weight decay (L2 for adam/sgd, decoupled for adamw)", "--weight-decay"),
    "optimizer.decay_norm_and_bias": ("`false`: no weight decay on norm weights and biases", "(timm: always excluded)"),
    "optimizer.backbone_lr_scale": ("backbone LR = lr x this; the new head keeps lr (fine-tuning)", ""),
    "scheduler.name": ("`step`, `cosine` or `constant`, stepped per optimizer step", "--sched"),
    "scheduler.step_epochs": ("StepLR period, epochs", "--decay-epochs"),
    "scheduler.gamma": ("StepLR factor", "--decay-rate"),
    "scheduler.warmup_epochs": ("linear warmup from 0, epochs (fractions allowed)", "--warmup-epochs"),
    "scheduler.min_lr_ratio": ("cosine floor as a share of lr", "--min-lr (absolute)"),
    "train.epochs": ("epochs", "--epochs"),
    "train.batch_size": ("batch size per process", "-b, --batch-size"),
    "train.seed": ("seed of everything: weights, shuffling, augmentation", "--seed"),
    "train.mixed_precision": (
        "`no`, `fp16` or `bf16`; `null`: the launcher's (`accelerate launch --mixed_precision`)",
        "--amp --amp-dtype",
    ),
    "train.grad_accum_steps": (
        "batches per optimizer step; `null`: from train.global_batch_size, else the launcher's, else 1",
        "--grad-accum-steps",
    ),
    "train.global_batch_size": (
        "samples per optimizer step over all processes; fixes steps per epoch, the LR schedule and each step's "
        "samples whatever the process count (accumulation fills the gap; a checkpoint continues on any process "
        "count dividing global / batch_size); `null`: batch_size x processes x grad_accum_steps",
        "(timm: --batch-size x --grad-accum-steps x world)",
    ),
    "train.streams": (
        "streams the training shards are dealt to each epoch (the unit of the sample order, saved in "
        "checkpoints); `null`: one per piece of a global step",
        "(MosaicML streaming: num_canonical_nodes)",
    ),
    "train.record_sample_keys": ("debugging: write RUN/sample_keys.jsonl, the sample keys of every step", ""),
    "train.grad_clip": ("clip the gradient norm to this; `null`: off", "--clip-grad"),
    "train.label_smoothing": ("label smoothing of the cross-entropy", "--smoothing"),
    "train.ema_decay": (
        "keep an EMA of the weights with this decay and save it; `null`: off",
        "--model-ema --model-ema-decay",
    ),
    "train.resume": (
        "`auto` (newest complete checkpoint of this run) or a checkpoint folder; `null`: fresh",
        "--resume",
    ),
    "train.checkpoint_every_steps": ("save training state every N optimizer steps; 0: off", ""),
    "train.checkpoint_every_epochs": ("save training state every N epochs; 0: off", ""),
    "train.checkpoint_every_minutes": (
        "also save training state at the first step boundary after this many minutes since the last "
        "checkpoint, start or resume (the slowest rank's clock, so every rank agrees); 0: off",
        "",
    ),
    "train.collective_timeout_s": (
        "seconds a collective waits for another process before this one fails, so that torchrun's agent "
        "restarts the survivors after a frozen or unreachable node (a killed one fails them at once); longer "
        "than any wait on the main process alone (the first download of model.init, the final report); "
        "`null`: torch's default (30 min gloo, 10 min NCCL)",
        "",
    ),
    "train.keep_checkpoints": ("checkpoints kept (oldest removed)", "--checkpoint-hist"),
    "train.skip_nonfinite": ("skip a step whose loss is NaN/inf instead of stopping", ""),
    "train.dist_bn": (
        "BatchNorm statistics before validation with N processes: `reduce`, `broadcast`, `none`",
        "--dist-bn",
    ),
    "train.max_steps": ("checkpoint and stop after N optimizer steps (time-sliced jobs); 0: no limit", ""),
    "train.log_every_steps": (
        "log train loss and lr every N steps (steps.csv, W&B, TensorBoard, and a plain line without a terminal)",
        "--log-interval",
    ),
    "train.monitor": (
        "val metric that picks the best epoch (model.safetensors, the `best` marker, final.json, the report "
        "headline, the W&B summary): `val_auc`, `val_acc` (top-1), `val_top5` (more than 5 classes), "
        "`val_balanced_acc`, `val_loss`; `auto`: `val_auc` for two classes, `val_acc` for more, resolved into the "
        "run's config.yaml. Lightning: `ModelCheckpoint(monitor=...)`",
        "--eval-metric",
    ),
    "train.monitor_mode": (
        "whether a higher (`max`) or lower (`min`) monitor is better; `auto`: `min` for `val_loss`, else `max`. "
        "Lightning: `ModelCheckpoint(mode=...)`",
        "(implied: loss decreasing)",
    ),
    "train.early_stop_patience": (
        "stop after this many validations in a row without a gain in `train.monitor` larger than "
        "`early_stop_min_delta` (checkpointed: a resumed run keeps its count); 0: off. Lightning: "
        "`EarlyStopping(patience=...)`",
        "",
    ),
    "train.early_stop_min_delta": (
        "the smallest change of `train.monitor` that counts as a gain for early stopping. Lightning: "
        "`EarlyStopping(min_delta=...)`",
        "",
    ),
    "train.class_weights": (
        "per-class weights of the training loss against class imbalance: `none`, `balanced` (scikit-learn's "
        "`class_weight='balanced'`: n_samples / (n_classes x count) over the train split's counts in info.json) "
        "or a list with one weight per class, in the shards' class order; resolved into the run's config.yaml as "
        "the list used and shown in the report. Combines with `label_smoothing` as "
        "`F.cross_entropy(weight=, label_smoothing=)`; the validation loss (`val_loss`) stays unweighted so runs "
        "stay comparable. Lightning/torch: `nn.CrossEntropyLoss(weight=...)`",
        "(timm: none)",
    ),
    "train.mixup_alpha": (
        "mixup: each training micro-batch mixed with its mirror batch (`x.flip(0)`) by a lambda ~ Beta(alpha, "
        "alpha), targets mixed the same way; 0: off. Mixup and CutMix are on when either alpha is above 0 (or "
        "`cutmix_minmax` is set) and follow timm's `Mixup` (its default `mode='batch'`, `correct_lam`) on the "
        "device after augmentation, training only: validation, evaluation and TTA see plain images. Each "
        "micro-batch draws from its own seed (train.seed, epoch, step, its slot in the global batch), so a "
        "resumed run and N processes mix exactly as the uninterrupted 1-process run. Soft targets are timm's "
        "`mixup_target` with `label_smoothing`, under timm's `SoftTargetCrossEntropy`; `train_loss` is that "
        "loss (higher than without mixing; there is no training accuracy). Cannot be combined with "
        "`class_weights`",
        "--mixup",
    ),
    "train.cutmix_alpha": (
        "CutMix: a box of area ~ 1 - lambda, lambda ~ Beta(alpha, alpha), pasted from the mirror batch; the "
        "target weight is the pasted area's share (timm's `correct_lam`); 0: off",
        "--cutmix",
    ),
    "train.cutmix_minmax": (
        "`[min, max]`: CutMix boxes with sides drawn between these shares of the image instead of from "
        "`cutmix_alpha` (which timm then forces to 1); `null`: off",
        "--cutmix-minmax",
    ),
    "train.mix_prob": (
        "probability that a micro-batch is mixed at all (0: never, the run trains as without)",
        "--mixup-prob",
    ),
    "train.mix_switch_prob": (
        "with both mixup and CutMix on: the probability a mixed micro-batch uses CutMix instead of mixup",
        "--mixup-switch-prob",
    ),
    "eval.batch_size": ("evaluation batch size per process", "-vb, --validation-batch-size"),
    "eval.threshold": ("two classes: predict class 1 when P(class 1) >= it; more: argmax", ""),
    "eval.test_split": ("split evaluated with the best model when training ends; `null`: skip", ""),
    "eval.plots": ("write the plots and report.html at the end", ""),
    "eval.num_images": ("images in the prediction grid and Grad-CAM", "--save-images (a flag)"),
    "eval.gradcam_layer": ("module Grad-CAM looks at", ""),
    "eval.tta": (
        "test-time augmentation of the final evaluation after training (val and test): `none`; `hflip` (softmax "
        "averaged over the image and its left-right flip); `hflip_crops` (10 views as torchvision's `TenCrop`: the "
        "eval input and its 4 corner crops of 7/8 its side, resized back, each also flipped). Per-epoch validation "
        "stays plain (cheap; `train.monitor` comparable across epochs). `evaluate`/`predict` take `--tta`. The "
        "split's metrics.json, the metrics line and the report record it. timm: train.py's `--tta N` (an "
        "oversampling factor; validate.py keeps it only for compatibility, and its `--test-pool` pools a larger "
        "input instead); torchvision: `TenCrop`",
        "--tta N (a factor)",
    ),
    "tracking.wandb": ("`auto`, `online`, `offline` or `disabled`", "--log-wandb"),
    "tracking.project": ("W&B project", "--wandb-project"),
    "tracking.entity": ("W&B entity (team or user); `null`: your default", ""),
    "tracking.tags": ("W&B run tags", "--wandb-tags"),
    "tracking.group": ("W&B run group (compare_recipes sets the recipe's name)", ""),
    "tracking.tensorboard": (
        'also write TensorBoard event files to RUN/tensorboard (needs `pip install -e ".[tensorboard]"`)',
        "",
    ),
    "output.dir": ("folder that holds the run folders", "--output"),
    "output.run_name": ("run folder name; `null`: a timestamp", "--experiment"),
    "output.lock_expiry_s": (
        "seconds after which a run lock that its writer stopped renewing counts as dead (a writer renews it every "
        "tenth of this); a requeued SLURM job takes its own lock back at once",
        "",
    ),
    "output.shared_wait_s": (
        "seconds every rank waits to see the main process's run-folder token before `output.dir` is declared "
        "not shared (NFS caches)",
        "",
    ),
}


def _sections() -> list[tuple[str, type]]:
    hints = typing.get_type_hints(Config)
    return [(field.name, hints[field.name]) for field in dataclasses.fields(Config)]


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def _shown(value) -> str:
    return "`null`" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def config_keys() -> list[tuple[str, str, str, str]]:
    """(key, type, default, allowed) of every config key, in the dataclasses' order."""
    rows = []
    for section, cls in _sections():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            allowed = ""
            if "choices" in field.metadata:
                allowed = ", ".join(f"`{c}`" for c in field.metadata["choices"])
            elif field.metadata.get("low") is not None or field.metadata.get("high") is not None:
                low, high = field.metadata.get("low"), field.metadata.get("high")
                sign = ">" if field.metadata.get("low_open") else ">="
                allowed = " and ".join(
                    part
                    for part in (f"{sign} {low}" if low is not None else "", f"<= {high}" if high is not None else "")
                    if part
                )
            rows.append(
                (
                    f"{section}.{field.name}",
                    config_module._type_name(hints[field.name]),
                    _shown(_default(field)),
                    allowed,
                )
            )
    return rows


def render() -> str:
    lines = [
        "# Config keys",
        "",
        "Generated from `toolkit/config.py` by `python -m toolkit.config_reference` (a test fails when it is "
        "stale). Set a key in a YAML config (`section:` then `key: value`) or on the command line after the "
        "flags (`optimizer.lr=3e-4`); `python -m toolkit.train --print-config [key=value ...]` shows the "
        'resolved values. "timm" is the closest flag of timm\'s '
        f"[train.py]({TIMM_TRAIN}), for readers coming from it.",
        "",
    ]
    current = None
    for key, type_name, default, allowed in config_keys():
        section = key.split(".")[0]
        if section != current:
            lines += [
                "",
                f"## {section}",
                "",
                "| key | type | default | allowed | meaning | timm |",
                "|---|---|---|---|---|---|",
            ]
            current = section
        meaning, timm_flag = KEYS[key]
        flag, _, note = timm_flag.partition(" (")
        timm_cell = (f"`{flag}`" + (f" ({note}" if note else "")) if flag.startswith("-") else timm_flag
        lines.append(f"| `{key}` | {type_name} | {default} | {allowed} | {meaning} | {timm_cell} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    missing = [key for key, *_ in config_keys() if key not in KEYS]
    stale = sorted(set(KEYS) - {key for key, *_ in config_keys()})
    if missing or stale:
        print(f"error: toolkit/config_reference.py: describe {missing}; remove {stale}", file=sys.stderr)
        return 1
    text = render()
    if args == ["--check"]:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"error: {DOC} is stale; run python -m toolkit.config_reference", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
