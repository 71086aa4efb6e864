"""Classify images with a trained model: files, folders, globs, image-folder trees or shards, on any
number of processes; one JSON line per image on stdout, or one CSV (``--out``).

    python -m toolkit.predict --model runs/NAME/model.safetensors cat.jpg dog.png
    {"file": "cat.jpg", "pred": "cat", "label": 0, "prob": {"cat": 0.93, "dog": 0.07}, "top": [["cat", 0.93], ...]}
    python -m toolkit.predict --model runs/NAME/model.safetensors photos/ "more/**/*.jpg" --out predictions.csv
    python -m toolkit.predict --model runs/NAME/model.safetensors --shards shards/pets --split test --out test.csv
    accelerate launch --num_processes 2 -m toolkit.predict --model ... photos/ --out predictions.csv
    python -m toolkit.predict --model runs/NAME/model.safetensors photos/ --tta hflip   # test-time augmentation

``pred`` and ``label`` are the predicted class, ``prob`` maps every class to its probability and
``top`` lists the K most probable classes, most probable first (``--top-k``; default 5, or every
class of a model with fewer), e.g. ``[["Bengal", 0.61], ["Egyptian_Mau", 0.2], ...]`` for the breeds.

Images are decoded exactly as ``make_shards`` decodes them (Pillow, strict about truncated
files, transparency on white, RGB) and preprocessed with the model's own eval transform and
normalization from the file's metadata. An image that cannot be read gets an error line
``{"file": ..., "error": ...}`` (with ``--out``: a ``skipped`` line on stderr) and the rest are still
classified; the exit code is then 1. stdout carries only JSON lines, so the output can be piped to ``jq``.

A folder is searched for image files; in an image-folder tree (``DIR/<class>/<images>``) the class folders
give the labels, and the metrics are reported (and, with ``--out``, written beside the CSV as
``NAME.metrics.json``), as for shards. 1 and N processes give the same CSV (toolkit.evaluation.batch_predict).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from accelerate import Accelerator
from PIL import Image

from toolkit.cli import ArgumentParser, add_progress_argument, add_tta_argument, run_cli, set_progress
from toolkit.config import eval_data_config, model_image_sizes
from toolkit.data import build_eval_transform, check_shards_exist, check_split_has_samples, load_info
from toolkit.data.image_folder import IMAGE_EXTENSIONS
from toolkit.device import resolve_device
from toolkit.errors import UsageError
from toolkit.evaluation.batch_predict import ImageReadError, collect_images, predict_images, read_image  # noqa: F401
from toolkit.evaluation.evaluator import EvalResult, evaluate_split, score, with_scores
from toolkit.evaluation.metrics import TOP_K, metrics_line, predict
from toolkit.evaluation.tta import TTA_MODES
from toolkit.fileio import atomic_write_json, atomic_write_text
from toolkit.formats import class_names
from toolkit.formats.model_file import check_classes
from toolkit.formats.predict_csv import predict_csv, top_k_order
from toolkit.models.sources import load_model


def eval_transform(meta: dict) -> Callable[[Image.Image], torch.Tensor]:
    """The training run's eval preprocessing, rebuilt from the model file's metadata."""
    missing = [key for key in ("image_size", "resize_size", "mean", "std") if key not in meta]
    if missing:
        raise UsageError(f"the model file's metadata lacks {', '.join(missing)}; re-export it with toolkit.train")
    return build_eval_transform(eval_data_config(meta, "the model file"))  # evaluate's cap: at most 4096 px


def default_top_k(num_classes: int) -> int:
    """The ``top`` list's length unless ``--top-k`` says otherwise: as top-k accuracy counts it."""
    return min(TOP_K, num_classes)


def model_class_names(meta: dict) -> list[str]:
    """The model's class names; a foreign or older file's classes are numbered rather than guessed."""
    num_classes = int(meta["num_classes"])
    names = list(meta.get("class_names") or [])
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def json_line(key_name: str, key: str, probs: Sequence[float], pred: int, names: Sequence[str], top_k: int) -> dict:
    """One image's JSON line: ``pred``/``label`` (the predicted class), ``prob`` (every class), ``top`` (k best)."""
    row = torch.as_tensor(probs)
    return {
        key_name: key,
        "pred": names[pred],
        "label": pred,
        "prob": {name: round(float(p), 6) for name, p in zip(names, row)},
        "top": [[names[i], round(float(row[i]), 6)] for i in top_k_order(row.numpy(), top_k)],
    }


def print_json_lines(
    result: EvalResult, order: Sequence[str], failed: dict[str, str], names, top_k: int, key_name: str
) -> None:
    """stdout: one line per input in ``order`` (the order given), an error line for each unreadable one."""
    probs, preds = result.probs, predict(result.probs) if len(result.keys) else []
    at = {key: i for i, key in enumerate(result.keys)}
    for key in order:
        if key in failed:
            print(json.dumps({key_name: key, "error": failed[key]}), flush=True)
        elif key in at:
            i = at[key]
            print(json.dumps(json_line(key_name, key, probs[i], int(preds[i]), names, top_k)), flush=True)


def write_outputs(args: argparse.Namespace, result: EvalResult, names: list[str], labelled: bool, top_k: int) -> None:
    """--out: the CSV (and NAME.metrics.json with labels); the metrics line whenever the labels are known."""
    probs = result.probs
    preds = predict(probs).tolist() if len(result.keys) else []
    metrics = score(result, threshold=0.5, class_names=names, extra={"model": str(args.model)}) if labelled else None
    if args.out is not None:
        labels = result.labels.tolist()
        atomic_write_text(args.out, predict_csv(result.keys, labels, preds, probs, names, top_k))
        if metrics is not None:
            atomic_write_json(metrics_path(args.out), metrics)
    if metrics is not None:
        where = f" -> {args.out}" if args.out is not None else ""
        print(
            f"{result.split}: {metrics_line(metrics)}{where}",
            file=sys.stderr if args.out is None else sys.stdout,
            flush=True,
        )


def metrics_path(out: Path) -> Path:
    return out.with_name(out.stem + ".metrics.json")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="toolkit.predict",
        description="Classify images with a trained model (cat or dog, breeds, your own classes): files, folders, "
        "globs or shards; one JSON line per image, or one CSV with --out.",
        epilog="example: python -m toolkit.predict --model runs/NAME/model.safetensors my_cat.jpg photos/ "
        "--out predictions.csv. Exit code: 0 all images classified, 1 some could not be read (named on "
        "stderr or in their error lines), 2 bad arguments or model file.",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="RUN/model.safetensors written by toolkit.train, a run folder, an exported or other timm "
        "model folder (DIR or local-dir:DIR), or hf-hub:OWNER/NAME (safetensors only)",
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files, folders (searched for images; DIR/<class>/... gives labels) or quoted globs "
        "('photos/**/*.jpg')",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto (cuda when available)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass and process (default: 16)")
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="the K most probable classes per image (default: 5, or every class of a model with fewer)",
    )
    parser.add_argument(
        "--shards",
        default=None,
        metavar="DIR",
        help="shards (folder with info.json, or URL pattern): with --split, predict that split; with images, "
        "only check the model has the shards' classes (a one-line error instead of predictions of another task)",
    )
    parser.add_argument("--split", default=None, help="the split of --shards to predict (e.g. test)")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="FILE.csv", help="write one CSV instead of JSON lines"
    )
    parser.add_argument("--num-workers", type=int, default=2, help="data loader workers for --shards (default: 2)")
    add_tta_argument(parser, TTA_MODES)
    add_progress_argument(parser, default=None)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.split is not None and (args.shards is None or args.images):
        raise UsageError("--split predicts a split of --shards: pass --shards DIR --split SPLIT and no images")
    if not args.images and args.split is None:
        raise UsageError("nothing to predict: pass image files, folders or globs, or --shards DIR --split SPLIT")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    set_progress(args.progress or ("auto" if args.out is not None else "none"))  # JSON lines: stderr stays quiet
    device = resolve_device(args.device)
    model, meta = load_model(args.model)  # UsageError (exit 2) for a missing or non-safetensors file
    model_image_sizes(meta, str(args.model))  # before any image: a hostile header's 60000 px is one line
    info = load_info(args.shards) if args.shards is not None else None
    if info is not None:
        check_classes(meta, class_names(info), str(args.model), what=f"the shards {args.shards}")
    names = model_class_names(meta)
    top_k = default_top_k(len(names)) if args.top_k is None else min(args.top_k, len(names))
    accelerator = Accelerator(cpu=device.type == "cpu")  # without CUDA: gloo across launched processes
    model.to(accelerator.device).eval()
    if args.split is not None:
        predict_split(args, accelerator, model, meta, info, names, top_k)
        failed = 0  # as evaluate: a bad sample is skipped, named by the loader and counted in the metrics
    else:
        failed = predict_files(args, accelerator, model, meta, names, top_k)
    accelerator.end_training()
    # JSON lines keep their contract (exit 1 when an image failed); a CSV run, like evaluate, names and counts
    # what it skipped and succeeds, so N launched processes are not reported as a crash by the launcher
    return 1 if failed and args.out is None else 0


def predict_split(args, accelerator, model, meta: dict, info: dict, names: list[str], top_k: int) -> None:
    """A split of the shards, through evaluate's own loader and gather: every sample once, on N processes."""
    check_shards_exist(args.shards, info, [args.split])
    check_split_has_samples(args.shards, info, args.split, "--split")
    data = eval_data_config(meta, str(args.model), shards=args.shards, num_workers=args.num_workers)
    result = evaluate_split(accelerator, model, data, info, args.split, batch_size=args.batch_size, tta=args.tta)
    if accelerator.is_main_process:
        if args.out is None:
            print_json_lines(result, result.keys, {}, names, top_k, "key")
        write_outputs(args, result, names, True, top_k)
        if result.skipped:
            print(
                f"{result.skipped} sample(s) of {args.split} could not be decoded and were skipped",
                file=sys.stderr,
                flush=True,
            )


def predict_files(args, accelerator, model, meta: dict, names: list[str], top_k: int) -> int:
    """Files, folders and globs: every file once over all processes; unreadable ones named and counted."""
    images = collect_images(args.images, names)
    if not images.paths:
        raise UsageError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {' '.join(args.images)}")
    result, failed = predict_images(
        accelerator,
        model,
        eval_transform(meta),
        images,
        batch_size=args.batch_size,
        num_classes=len(names),
        tta=args.tta,
    )
    if not accelerator.is_main_process:
        return len(failed)
    labelled = images.labelled and len(result.keys) > 0
    if labelled:
        with_scores(result, names)
    if args.out is None:
        print_json_lines(result, images.paths, dict(failed), names, top_k, "file")
    elif failed:
        for path, reason in failed:
            print(f"skipped {path}: {reason}", file=sys.stderr, flush=True)
    write_outputs(args, result, names, labelled, top_k)
    if images.not_images:
        print(f"{images.not_images} file(s) without an image extension left out", file=sys.stderr, flush=True)
    if failed:
        print(
            f"{len(failed)} of {len(images.paths)} images could not be read (see their error lines)"
            if args.out is None
            else f"{len(failed)} of {len(images.paths)} images could not be read and were skipped (named above)",
            file=sys.stderr,
            flush=True,
        )
    return len(failed)


if __name__ == "__main__":
    run_cli(main)
