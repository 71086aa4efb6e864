"""Export a trained model as a timm model folder, optionally pushed to the Hugging Face Hub, or as ONNX.

    python -m toolkit.export --run runs/NAME --out exported/NAME [--push-to-hub USER/NAME]
    python -m toolkit.export --run runs/NAME --out exported/NAME-onnx --format onnx

The folder holds what timm reads for its own Hub models, so anyone can use the model with timm
alone: timm.create_model("local-dir:exported/NAME", pretrained=True) (or "hf-hub:USER/NAME").
  model.safetensors  the plain state dict (our parameter names are timm's)
  config.json        timm architecture, classes (label_names), input size, crop, mean and std
  README.md          a short model card
Only standard-width ResNets (base_width 64) have a timm architecture; others are refused.

``--format onnx`` writes ``model.onnx`` (input ``image`` [batch, 3, H, W] with a dynamic batch size;
outputs ``logits`` and ``probabilities``) and ``preprocessing.json`` beside it (toolkit.formats.preprocessing),
for ONNX Runtime, TensorRT or Triton; any of the toolkit's models exports. TorchScript is not offered: torch
deprecates it in favour of torch.export, and its files are pickles that would need trusting to load.
"""

import argparse
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save as save_safetensors_bytes

from toolkit.cli import ArgumentParser, run_cli
from toolkit.errors import UsageError
from toolkit.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from toolkit.formats import RunDir
from toolkit.formats.preprocessing import INPUT_NAME, OUTPUT_NAMES, PREPROCESSING_FILE, write_preprocessing
from toolkit.models.resnet import MODEL_SPECS
from toolkit.models.sources import load_model_file

WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, ONNX_FILE = "model.safetensors", "config.json", "README.md", "model.onnx"
EXPORT_MARKER = ".pets-export"  # marks a folder export wrote: only such a folder is replaced by --overwrite
FORMATS = ("timm", "onnx")
ONNX_OPSET = 18
ONNX_HINT = 'pip install -e ".[onnx]"'  # onnx + onnxscript (torch's exporter) + onnxruntime
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
TIMM_STEM_WIDTH = 64  # timm's plain-stem ResNet hard-codes a 64-channel stem whatever its arguments
TIMM_BASE_ARCH = {"basic": "resnet18", "bottleneck": "resnet50"}  # entry points whose block type we reuse
INTERPOLATION = "bilinear"  # what toolkit.data.build_eval_transform resizes with (v2.Resize default)
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads HF_HUB_OFFLINE
EXAMPLE = """example:
  python -m toolkit.export --run runs/resnet101-pets --out exported/resnet101-pets
  then: timm.create_model("local-dir:exported/resnet101-pets", pretrained=True)
  python -m toolkit.export --run runs/resnet101-pets --out exported/resnet101-pets-onnx --format onnx"""
CARD_FACTS = (
    ("init", "initialised from"),
    ("epoch", "epoch of the exported weights"),
    ("val_metrics", "validation metrics"),
)  # metadata training may add, shown when present


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m toolkit.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLE,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a finished training run folder (exports RUN/model.safetensors)")
    source.add_argument("--model", type=Path, help="a model .safetensors file written by training")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must be empty or new)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export's files in --out")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="timm",
        help="timm (default): a timm model folder; onnx: model.onnx (dynamic batch) + preprocessing.json",
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="also upload the folder to this Hugging Face model repo (needs a token and network)",
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return parser.parse_args(argv)


def model_path(args: argparse.Namespace) -> Path:
    """The model file to export; a run folder's is RUN/model.safetensors (the best checkpoint's weights)."""
    if args.model is not None:
        return args.model
    if not args.run.is_dir():
        raise UsageError(f"--run {str(args.run)!r}: no such run folder")
    path = args.run / WEIGHTS_FILE
    if not path.is_file():
        raise UsageError(f"--run {str(args.run)!r} has no {WEIGHTS_FILE} (has training finished a first epoch?)")
    return path


def timm_architecture(meta: dict) -> tuple[str, dict]:
    """timm's name for our model and the ``model_args`` timm needs to rebuild it; refuse shapes timm cannot build.

    Depth is expressible (timm's ``layers`` argument); width is not, as timm's stem is always 64 wide.
    """
    width = int(meta.get("base_width", 64))
    if width != TIMM_STEM_WIDTH:
        raise UsageError(
            f"model has base_width {width}: timm has no such ResNet (its stem is {TIMM_STEM_WIDTH} "
            f"channels wide); only base_width {TIMM_STEM_WIDTH} models (resnet18..152, any depth) export"
        )
    block, layers = meta["block"], tuple(int(n) for n in meta["blocks_per_stage"])
    presets = [name for name, spec in MODEL_SPECS.items() if (spec.block, spec.blocks_per_stage) == (block, layers)]
    if presets:
        arch, model_args = (meta["arch"] if meta["arch"] in presets else presets[0]), {}
    else:
        arch, model_args = TIMM_BASE_ARCH[block], {"layers": list(layers)}
    if int(meta.get("in_chans", 3)) != 3:
        model_args["in_chans"] = int(meta["in_chans"])
    return arch, model_args


def timm_crop_pct(image_size: int, resize_size: int) -> float:
    """A crop_pct for which timm resizes to exactly ``resize_size``.

    timm resizes the shorter side to floor(image_size / crop_pct), and image_size / resize_size can
    round to one pixel less (32 / (32 / 36) = 35.99...); aiming half a pixel higher cannot.
    """
    exact = image_size / resize_size
    if math.floor(image_size / exact) == resize_size:
        return exact
    return image_size / (resize_size + 0.5)


def pool_size(image_size: int) -> int:
    """Side of the last feature map: the stem conv, max-pool and three stages each halve, rounding up."""
    side = image_size
    for _ in range(5):
        side = math.ceil(side / 2)
    return side


def timm_config(meta: dict, num_features: int) -> dict[str, Any]:
    """config.json as timm's own save_config_for_hf writes it, from our model file's metadata."""
    arch, model_args = timm_architecture(meta)
    size, chans = int(meta["image_size"]), int(meta.get("in_chans", 3))
    config: dict[str, Any] = {
        "architecture": arch,
        "num_classes": int(meta["num_classes"]),
        "num_features": int(num_features),
        "global_pool": "avg",
        "label_names": list(meta["class_names"]),
    }
    if model_args:
        config["model_args"] = model_args
    config["pretrained_cfg"] = {
        "custom_load": False,
        "input_size": [chans, size, size],
        "fixed_input_size": False,
        "interpolation": INTERPOLATION,
        "crop_pct": timm_crop_pct(size, int(meta["resize_size"])),
        "crop_mode": "center",
        "mean": [float(m) for m in meta["mean"]],
        "std": [float(s) for s in meta["std"]],
        "num_classes": int(meta["num_classes"]),
        "pool_size": [pool_size(size)] * 2,
        "first_conv": "conv1",
        "classifier": "fc",
    }
    return config


def model_card(meta: dict, config: dict, load_name: str) -> str:
    """A short README.md: what the model is, its classes and preprocessing, and how to load it."""
    pre = config["pretrained_cfg"]
    shape = f"blocks per stage {meta['blocks_per_stage']}" + (
        f", {meta['in_chans']} input channels" if int(meta.get("in_chans", 3)) != 3 else ""
    )
    lines = [
        "---",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- timm",
        "---",
        "",
        f"# {config['architecture']} image classifier ({config['num_classes']} classes)",
        "",
        f"A ResNet ({meta['block']} blocks, {shape}) trained with the pets toolkit and exported as a timm model.",
        f"Classes, in output order: {', '.join(config['label_names'])}.",
        "",
        "## Preprocessing",
        "",
        f"Resize the shorter side to {meta['resize_size']} px ({pre['interpolation']}), center-crop "
        f"{meta['image_size']} px, scale to [0, 1], normalize with mean {pre['mean']} and std {pre['std']} "
        "(timm's `resolve_data_config` + `create_transform` do exactly this).",
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        "import torch",
        "",
        f'model = timm.create_model("{load_name}", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
        "with torch.inference_mode():",
        "    probs = model(transform(image)[None]).softmax(dim=1)  # image: an RGB PIL image",
        "```",
    ]
    facts = [f"- {label}: {meta[key]}" for key, label in CARD_FACTS if meta.get(key) is not None]
    if facts:
        lines += ["", "## Training", "", *facts]
    return "\n".join(lines) + "\n"


def check_not_a_run_folder(out: Path, source: Path) -> None:
    """Refuse ``--out`` that is a training run (or the exported file's own folder): the export's plain
    model.safetensors would replace the run's, whose metadata evaluate, predict and resume need."""
    run = RunDir(out)
    marks = [p.name for p in (run.config, run.history, run.final, run.last_model, run.checkpoints) if p.exists()]
    if marks or out.resolve() == source.resolve().parent:
        what = f"a training run folder (it has {marks[0]})" if marks else f"the folder of {source.name}"
        raise UsageError(
            f"--out {str(out)!r} is {what}; the export would replace its {WEIGHTS_FILE} with one "
            f"without the toolkit's metadata: choose a folder of its own, e.g. exported/{out.name}"
        )


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix an export into a folder holding other things, so nothing unrelated is replaced or uploaded.

    ``--overwrite`` replaces an earlier export only: a folder export marked (``EXPORT_MARKER``) or one
    holding nothing but export's own files (an export of a version before the marker). Anything
    else (a shard folder, the repository with its README.md) is refused.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise UsageError(f"--out {str(out)!r} is not empty; pass --overwrite to replace an earlier export")
    earlier_export = EXPORT_MARKER in entries or (CONFIG_FILE in entries and set(entries) <= set(EXPORT_FILES))
    if entries and not earlier_export:
        others = [name for name in entries if name not in EXPORT_FILES and name != EXPORT_MARKER]
        raise UsageError(
            f"--out {str(out)!r} holds files that are not an earlier export (e.g. {others[0] if others else entries[0]}); "
            f"--overwrite replaces only a folder export wrote: choose an empty folder, e.g. exported/{out.name}"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / EXPORT_MARKER, "written by python -m toolkit.export; --overwrite may replace this folder\n")


def write_export(model: torch.nn.Module, meta: dict, out: Path, load_name: str) -> dict:
    """Write the three files (each atomically) and return the config."""
    config = timm_config(meta, num_features=model.num_features)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, save_safetensors_bytes(state, metadata={"format": "pt"}))
    atomic_write_json(out / CONFIG_FILE, config)
    atomic_write_text(out / CARD_FILE, model_card(meta, config, load_name))
    return config


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when it was set after huggingface_hub was imported."""
    import huggingface_hub.constants  # optional dependency: only for --push-to-hub

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE_VALUES


def push_to_hub(folder: Path, repo: str, private: bool) -> str:
    """Upload the export's files to a Hub model repo; one-line UsageError when offline, without token or on failure."""
    import huggingface_hub  # optional dependency: only for --push-to-hub

    later = f"the export is in {str(folder)!r}; upload it later with: hf upload {repo} {folder}"
    if hub_offline():
        raise UsageError(f"--push-to-hub: offline (HF_HUB_OFFLINE is set), nothing uploaded; {later}")
    token = huggingface_hub.get_token()
    if not token:
        raise UsageError(f"--push-to-hub: no Hugging Face token (run `hf auth login` or set HF_TOKEN); {later}")
    api = huggingface_hub.HfApi(token=token)
    try:
        repo_id = api.create_repo(repo, private=private, exist_ok=True, repo_type="model").repo_id
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=list(EXPORT_FILES),
            repo_type="model",
            commit_message="Add model exported by the pets toolkit",
        )
    except Exception as err:  # network down, bad token, no permission: all end the same way
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise UsageError(f"--push-to-hub {repo}: upload failed ({type(err).__name__}: {reason}); {later}") from None
    return f"https://huggingface.co/{repo_id}"


class WithProbabilities(torch.nn.Module):
    """The model with its softmax: the graph gives what predict reports, beside the raw logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, torch.softmax(logits.float(), dim=1)


def require_onnx() -> None:
    """torch's exporter needs onnxscript (and onnx): say what to install before anything is written."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError(f"--format onnx needs the onnx packages: {ONNX_HINT}") from None


def write_onnx(model: torch.nn.Module, meta: dict, out: Path) -> dict:
    """model.onnx through torch's own exporter (torch.export based), batch size left free; preprocessing.json beside."""
    size, chans = int(meta["image_size"]), int(meta.get("in_chans", 3))
    example = torch.zeros(2, chans, size, size)  # 2: a batch of 1 would be specialised into the graph
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        WithProbabilities(model.float()).eval(),
        (example,),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: batch},),
        opset_version=ONNX_OPSET,
        dynamo=True,
        verbose=False,
    )
    atomic_write_bytes(out / ONNX_FILE, program.model_proto.SerializeToString())
    return write_preprocessing(out, meta)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    path = model_path(args)
    model, meta = load_model_file(path)
    if args.format == "onnx":
        require_onnx()
        check_not_a_run_folder(args.out, path)
        prepare_out_dir(args.out, args.overwrite)
        write_onnx(model, meta, args.out)
        print(
            f"exported {path} as ONNX to {args.out / ONNX_FILE} (preprocessing in {args.out / PREPROCESSING_FILE})",
            flush=True,
        )
        return 0
    timm_architecture(meta)  # refuse before creating anything
    check_not_a_run_folder(args.out, path)
    prepare_out_dir(args.out, args.overwrite)
    load_name = f"hf-hub:{args.push_to_hub}" if args.push_to_hub else f"local-dir:{args.out}"
    config = write_export(model, meta, args.out, load_name)
    print(
        f"exported {path} as timm {config['architecture']} to {args.out}: "
        f'timm.create_model("local-dir:{args.out}", pretrained=True)',
        flush=True,
    )
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(args.out, args.push_to_hub, args.private)}", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
