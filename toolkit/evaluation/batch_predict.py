"""Prediction over image files (files, folders, globs, image-folder trees) on any number of processes.

The files are dealt to the processes (every Nth), each predicts its share in batches, and the shares are
gathered and merged by ``merge_predictions``, the function that merges ``evaluate_split``'s shard results:
duplicates dropped by key, the count of predicted + unreadable checked against the input, rows sorted by
path. So 1 and N processes give the same rows. A file that cannot be read is skipped with its reason and
counted, never a traceback. Shards are predicted by ``evaluate_split`` itself.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from accelerate.utils import gather_object
from PIL import Image

from toolkit.cli import progress
from toolkit.data.image_folder import IMAGE_EXTENSIONS
from toolkit.data.shards import decode_error, strict_decoding, to_rgb
from toolkit.data.transforms import open_image
from toolkit.errors import UsageError
from toolkit.evaluation.evaluator import EvalResult, merge_predictions
from toolkit.evaluation.tta import apply_tta

GLOB_CHARACTERS = set("*?[")


class ImageReadError(Exception):
    """One input image cannot be used; the message says why."""


def read_image(path: Path) -> Image.Image:
    """Decode ``path`` as ``make_shards`` does (strict, transparency on white, RGB), or raise ImageReadError."""
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


@dataclass
class ImageInputs:
    """The files to predict, in the order given, and their labels where an image-folder tree names them."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # -1: unknown
    not_images: int = 0  # files in the folders without an image extension, left out

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and min(self.labels) >= 0


def collect_images(inputs: Sequence[str], class_names: Sequence[str]) -> ImageInputs:
    """Files as given; folders walked (sorted, hidden entries skipped) for image files; globs expanded.

    Below a folder, an image whose enclosing folder is named like one of the model's classes gets that
    class as its label (``DIR/<class>/...``, also ``DIR/test/<class>/...``): an image-folder tree.
    """
    found, classes = ImageInputs(), {name: i for i, name in enumerate(class_names)}
    for item in inputs:
        if Path(item).is_dir():
            _walk(Path(item), classes, found)
        elif GLOB_CHARACTERS & set(item) and not Path(item).exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UsageError(f"{item!r} matches no file; quote a pattern so the shell leaves it to predict")
            for match in (m for m in matches if Path(m).is_file()):
                _add(found, match, Path(match).parent.name, classes)
        else:  # a file, or a missing path that gets its error line
            _add(found, item, None, classes)
    seen: dict[str, int] = {}
    for index, path in enumerate(found.paths):
        seen.setdefault(path, index)
    keep = sorted(seen.values())  # a file named twice is predicted once
    return ImageInputs([found.paths[i] for i in keep], [found.labels[i] for i in keep], found.not_images)


def _walk(root: Path, classes: dict[str, int], found: ImageInputs) -> None:
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                _add(found, os.path.join(folder, name), Path(folder).name if Path(folder) != root else None, classes)
            else:
                found.not_images += 1


def _add(found: ImageInputs, path: str, folder: str | None, classes: dict[str, int]) -> None:
    found.paths.append(str(path))
    found.labels.append(classes.get(folder, -1) if folder is not None else -1)


@torch.no_grad()
def predict_images(
    accelerator,
    model: torch.nn.Module,
    transform: Callable[[Image.Image], torch.Tensor],
    images: ImageInputs,
    *,
    batch_size: int,
    num_classes: int,
    tta: str = "none",
) -> tuple[EvalResult, list[tuple[str, str]]]:
    """Every file once over all processes: the merged result (sorted by path) and the unreadable files.

    ``tta``: a ``toolkit.evaluation.tta`` mode, applied as ``evaluate_split`` applies it.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(images.paths), world))
    local = {"keys": [], "labels": [], "logits": [], "breeds": [], "failed": []}
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    model.eval()
    for batch in progress(batches, desc="predict", unit="batch"):
        tensors, kept = [], []
        for index in batch:
            try:
                tensors.append(transform(read_image(Path(images.paths[index]))))
                kept.append(index)
            except ImageReadError as err:
                local["failed"].append((images.paths[index], str(err)))
        if tensors:
            images_t = torch.stack(tensors).to(accelerator.device)
            local["logits"].extend(apply_tta(model, images_t, tta).float().cpu().numpy())
            local["keys"].extend(images.paths[i] for i in kept)
            local["labels"].extend(images.labels[i] for i in kept)
            local["breeds"].extend("" for _ in kept)
    local["skipped"] = len(local["failed"])
    parts = gather_object([local]) if world > 1 else [local]
    for part in parts:
        part["logits"] = np.array(part["logits"], dtype=np.float32).reshape(-1, num_classes)
    result = merge_predictions("images", parts, expected=len(images.paths))
    result.tta = tta
    failed = sorted(item for part in parts for item in part["failed"])
    return result, [tuple(item) for item in failed]
