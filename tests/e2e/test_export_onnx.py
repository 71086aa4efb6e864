"""ONNX export: ONNX Runtime, fed images prepared only from preprocessing.json (Pillow and numpy, no toolkit
code), gives predict's probabilities within 1e-4, at any batch size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_in_process, save_tiny_model
from toolkit import export, predict
from toolkit.formats.preprocessing import read_preprocessing, step

pytestmark = pytest.mark.slow
ort = pytest.importorskip("onnxruntime", reason='the onnx extra is not installed: pip install -e ".[onnx]"')


def make_images(folder: Path) -> list[Path]:
    """Odd sizes, portrait and landscape, grey, palette, transparency: what a folder of photos holds."""
    rng = np.random.default_rng(0)
    shapes = [(97, 61, "RGB"), (40, 120, "RGB"), (300, 200, "L"), (64, 64, "RGBA"), (55, 77, "P"), (36, 36, "RGB")]
    paths = []
    for index, (width, height, mode) in enumerate(shapes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        path = folder / f"img{index}.png"
        image.save(path)
        paths.append(path)
    return paths


def prepare(path: Path, record: dict) -> np.ndarray:
    """One image as preprocessing.json describes it, with Pillow and numpy only."""
    image = Image.open(path)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("RGB")
    size, crop = step(record, "resize_shorter_side")["size"], step(record, "center_crop")["size"]
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = int(round((new[0] - crop) / 2.0)), int(round((new[1] - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32) / step(record, "scale")["divide_by"]
    norm = step(record, "normalize")
    array = (array - np.array(norm["mean"], dtype=np.float32)) / np.array(norm["std"], dtype=np.float32)
    return array.transpose(2, 0, 1)


def test_onnx_runtime_gives_predict_s_probabilities(tmp_path: Path, capsys):
    model_file = tmp_path / "model.safetensors"
    save_tiny_model(model_file, class_names=["cat", "dog", "bird"], seed=1)
    out = tmp_path / "onnx"
    assert run_in_process(export.main, ["--model", str(model_file), "--out", str(out), "--format", "onnx"]) == 0
    images = make_images(tmp_path)
    capsys.readouterr()
    assert run_in_process(predict.main, ["--model", str(model_file), "--top-k", "3", *map(str, images)]) == 0
    expected = {line["file"]: line["prob"] for line in map(json.loads, capsys.readouterr().out.splitlines())}

    record = read_preprocessing(out)
    assert record["class_names"] == ["cat", "dog", "bird"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == record["input"]["name"] and session.get_inputs()[0].shape[0] == "batch"
    batch = np.stack([prepare(path, record) for path in images])
    for rows in (batch, batch[:1], batch[2:5]):  # the batch size is free
        logits, probs = session.run(["logits", "probabilities"], {"image": rows})
        assert logits.shape == probs.shape == (len(rows), 3)
    logits, probs = session.run(["logits", "probabilities"], {"image": batch})
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-6)
    for path, row in zip(images, probs):
        want = [expected[str(path)][name] for name in record["class_names"]]
        np.testing.assert_allclose(row, want, atol=1e-4, err_msg=str(path))


def test_onnx_export_refuses_a_run_folder_and_a_full_folder(tmp_path: Path, capsys):
    model_file = tmp_path / "run" / "model.safetensors"
    model_file.parent.mkdir()
    save_tiny_model(model_file)
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    assert (
        run_in_process(
            export.main, ["--run", str(tmp_path / "run"), "--out", str(tmp_path / "run"), "--format", "onnx"]
        )
        == 2
    )
    assert "training run folder" in capsys.readouterr().err
