"""``preprocessing.json``: what an exported graph (``model.onnx``) expects, written beside it.

A graph file holds the network only; a deployer also needs the exact preprocessing, the class names and
what the outputs mean. This record states them in plain terms, from the model file's metadata, so the
input can be rebuilt without the toolkit (``toolkit.predict`` uses the same steps: decode to RGB, resize
the shorter side with antialiased bilinear interpolation, center crop, scale to [0, 1], normalize).
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.errors import UsageError
from toolkit.fileio import atomic_write_json

PREPROCESSING_FILE = "preprocessing.json"
PREPROCESSING_VERSION = 1
INPUT_NAME, OUTPUT_NAMES = "image", ("logits", "probabilities")


def preprocessing_record(meta: dict) -> dict:
    """The record for a model file's metadata (image_size, resize_size, mean, std, class_names)."""
    return {
        "format_version": PREPROCESSING_VERSION,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", int(meta.get("in_chans", 3)), int(meta["image_size"]), int(meta["image_size"])],
            "dtype": "float32",
            "layout": "NCHW, RGB",
        },
        "steps": [
            {"op": "decode", "mode": "RGB", "note": "transparency composited on white"},
            {
                "op": "resize_shorter_side",
                "size": int(meta["resize_size"]),
                "interpolation": "bilinear",
                "antialias": True,
            },
            {"op": "center_crop", "size": int(meta["image_size"])},
            {"op": "scale", "divide_by": 255.0},
            {"op": "normalize", "mean": [float(m) for m in meta["mean"]], "std": [float(s) for s in meta["std"]]},
        ],
        "outputs": {
            OUTPUT_NAMES[0]: "[batch, classes] raw scores",
            OUTPUT_NAMES[1]: "[batch, classes] softmax of the logits, what toolkit.predict reports",
        },
        "class_names": list(meta["class_names"]),
    }


def write_preprocessing(folder: Path, meta: dict) -> dict:
    record = preprocessing_record(meta)
    atomic_write_json(Path(folder) / PREPROCESSING_FILE, record)
    return record


def read_preprocessing(folder: Path) -> dict:
    """The record beside an exported graph; a missing or foreign file is a one-line error."""
    path = Path(folder) / PREPROCESSING_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read the preprocessing record ({err}); re-export the model") from None
    if not isinstance(record, dict) or record.get("format_version") != PREPROCESSING_VERSION:
        raise UsageError(f"{path}: not a version {PREPROCESSING_VERSION} preprocessing record; re-export the model")
    return record


def step(record: dict, op: str) -> dict:
    """One step of the record by its op name."""
    for item in record["steps"]:
        if item["op"] == op:
            return item
    raise UsageError(f"the preprocessing record has no {op} step; re-export the model")
