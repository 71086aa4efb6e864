"""Classify image files with a trained model: one JSON line per image on stdout.

    python -m toolkit.predict --model runs/NAME/model.safetensors cat.jpg dog.png
    {"file": "cat.jpg", "pred": "cat", "label": 0, "prob": {"cat": 0.93, "dog": 0.07}, "top": [["cat", 0.93], ...]}

``pred`` and ``label`` are the predicted class, ``prob`` maps every class to its probability and
``top`` lists the K most probable classes, most probable first (``--top-k``; default 5, or every
class of a model with fewer), e.g. ``[["Bengal", 0.61], ["Egyptian_Mau", 0.2], ...]`` for the breeds.

Images are decoded exactly as ``make_shards`` decodes them (Pillow, strict about truncated
files, transparency on white, RGB) and preprocessed with the model's own eval transform and
normalization from the file's metadata. An image that cannot be read gets an error line
``{"file": ..., "error": ...}`` and the rest are still classified; the exit code is then 1.
stdout carries only JSON lines, so the output can be piped to ``jq`` or a file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from toolkit.cli import ArgumentParser, run_cli
from toolkit.config import eval_data_config, model_image_sizes
from toolkit.data import build_eval_transform, load_info
from toolkit.data.shards import decode_error, strict_decoding, to_rgb
from toolkit.data.transforms import open_image
from toolkit.device import resolve_device
from toolkit.errors import UsageError
from toolkit.evaluation.metrics import TOP_K, predict
from toolkit.formats import class_names
from toolkit.formats.model_file import check_classes
from toolkit.models.sources import load_model


class ImageReadError(Exception):
    """One input image cannot be used; the message goes into its error line."""


def read_image(path: Path) -> Image.Image:
    """Decode ``path`` to an RGB image, or raise ImageReadError saying why not."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError("missing: no such file") from None
    except IsADirectoryError:
        raise ImageReadError("unreadable: is a directory, pass image files") from None
    except OSError as err:
        raise ImageReadError(f"unreadable: {type(err).__name__}: {err.strerror or err}") from None
    with strict_decoding():
        try:
            with open_image(data) as image:
                image.load()
                return to_rgb(image)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for broken files
            raise ImageReadError(decode_error(err)) from None


def eval_transform(meta: dict) -> Callable[[Image.Image], torch.Tensor]:
    """The training run's eval preprocessing, rebuilt from the model file's metadata."""
    missing = [key for key in ("image_size", "resize_size", "mean", "std") if key not in meta]
    if missing:
        raise UsageError(f"the model file's metadata lacks {', '.join(missing)}; re-export it with toolkit.train")
    return build_eval_transform(eval_data_config(meta, "the model file"))  # evaluate's cap: at most 4096 px


def default_top_k(num_classes: int) -> int:
    """The ``top`` list's length unless ``--top-k`` says otherwise: as top-k accuracy counts it."""
    return min(TOP_K, num_classes)


@torch.inference_mode()
def predict_batch(
    model: torch.nn.Module, batch: torch.Tensor, class_names: Sequence[str], top_k: Optional[int] = None
) -> list[dict]:
    """One result per image: ``pred``/``label`` (``metrics.predict`` at threshold 0.5), ``prob`` (every class),
    and with ``top_k`` the ``top`` list of the k most probable [name, prob] pairs, most probable first."""
    probs = torch.softmax(model(batch).float(), dim=1).cpu()
    results = []
    for row, label in zip(probs, predict(probs.double().numpy()).tolist()):
        result = {
            "pred": class_names[label],
            "label": label,
            "prob": {name: round(float(p), 6) for name, p in zip(class_names, row)},
        }
        if top_k:
            # most probable first; ties go to the lower index
            order = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))[:top_k]
            result["top"] = [[class_names[i], round(float(row[i]), 6)] for i in order]
        results.append(result)
    return results


def predict_files(
    model: torch.nn.Module,
    meta: dict,
    files: Sequence[Path],
    device: torch.device,
    batch_size: int,
    emit: Callable[[dict], None],
    top_k: Optional[int] = None,
) -> int:
    """Classify ``files`` in batches, emitting one result per file in input order; return #failed.

    ``top_k``: how many of the most probable classes each result lists under ``top`` (None: the
    default, 5 for more than two classes and no list for two; clipped to the number of classes).
    """
    transform = eval_transform(meta)
    num_classes = int(meta["num_classes"])
    class_names = list(meta.get("class_names") or [])
    if len(class_names) != num_classes:  # a foreign or older file: number the classes rather than guess names
        class_names = [str(i) for i in range(num_classes)]
    top_k = default_top_k(num_classes) if top_k is None else min(int(top_k), num_classes)
    failed = 0
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        results: list[dict] = [{"file": str(path)} for path in chunk]
        tensors, positions = [], []
        for position, path in enumerate(chunk):
            try:
                tensors.append(transform(read_image(path)))
                positions.append(position)
            except ImageReadError as err:
                results[position]["error"] = str(err)
                failed += 1
        if tensors:
            batch = torch.stack(tensors).to(device)
            for position, prediction in zip(positions, predict_batch(model, batch, class_names, top_k)):
                results[position].update(prediction)
        for result in results:
            emit(result)
    return failed


def print_json_line(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(
        prog="toolkit.predict",
        description="Classify images with a trained model (cat or dog, breeds, your own classes); prints one JSON "
        "line per image.",
        epilog="example: python -m toolkit.predict --model runs/NAME/model.safetensors my_cat.jpg. "
        "Exit code: 0 all images classified, 1 some could not be read (see their error lines), "
        "2 bad arguments or model file.",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="RUN/model.safetensors written by toolkit.train, a run folder, an exported or other timm "
        "model folder (DIR or local-dir:DIR), or hf-hub:OWNER/NAME (safetensors only)",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, GIF, ...)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run the model (default: auto = cuda when available)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help='list the K most probable classes per image under "top" (default: 5, or every class '
        "of a model with fewer)",
    )
    parser.add_argument(
        "--shards",
        default=None,
        metavar="DIR",
        help="shards (folder with info.json, or URL pattern) whose classes the model must have: "
        "a one-line error instead of predictions of another task (e.g. breeds for cat/dog)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")

    device = resolve_device(args.device)
    model, meta = load_model(args.model)  # UsageError (exit 2) for a missing or non-safetensors file
    model_image_sizes(meta, str(args.model))  # before any image: a hostile header's 60000 px is one line
    if args.shards is not None:
        check_classes(meta, class_names(load_info(args.shards)), str(args.model), what=f"the shards {args.shards}")
    model.to(device).eval()
    failed = predict_files(model, meta, args.images, device, args.batch_size, print_json_line, args.top_k)
    if failed:
        print(
            f"{failed} of {len(args.images)} images could not be read (see their error lines)",
            file=sys.stderr,
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
