"""The predict CLI: one JSON line per image, broken images reported without stopping the rest."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.cli import run_cli
from toolkit.config import DataConfig
from toolkit.data import build_eval_transform
from toolkit.data.shards import to_rgb
from toolkit.formats.model_file import model_metadata, save_model_file
from toolkit.models import architecture, create_model
from toolkit.predict import main

MEAN, STD = [0.48, 0.44, 0.40], [0.26, 0.25, 0.26]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> SimpleNamespace:
    """A tiny model file written through the checkpoint API, and good and broken images."""
    root = tmp_path_factory.mktemp("predict")
    data_cfg = DataConfig(image_size=32, resize_size=36, mean=MEAN, std=STD)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2, blocks_per_stage=[1, 1, 1, 1], base_width=8).eval()
    model_path = root / "model.safetensors"
    meta = model_metadata(
        architecture(model), class_names=["cat", "dog"], image_size=32, resize_size=36, mean=MEAN, std=STD
    )
    save_model_file(model, model_path, meta)

    rng = np.random.default_rng(0)
    good = {
        "rgb.jpg": Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA"),
        "gray.gif": Image.fromarray(rng.integers(0, 255, (45, 36), dtype=np.uint8), "L"),
    }
    for name, picture in good.items():
        picture.save(root / name)
    (root / "notes.jpg").write_text("this is not a picture\n")
    jpeg = (root / "rgb.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return SimpleNamespace(
        root=root, model=model, model_path=model_path, data_cfg=data_cfg, good=[root / name for name in good]
    )


def run_main(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, [json.loads(line) for line in out.splitlines()], err


def expected_probs(workspace, path: Path) -> list[float]:
    """The model applied by hand: decode as make_shards does, the eval transform, softmax."""
    transform = build_eval_transform(workspace.data_cfg)
    with Image.open(path) as picture:
        rgb = to_rgb(picture)
    with torch.inference_mode():
        return torch.softmax(workspace.model(transform(rgb)[None]), dim=1)[0].tolist()


def test_mixed_good_and_broken_images(workspace, capsys):
    root = workspace.root
    files = ["rgb.jpg", "missing.jpg", "notes.jpg", "rgba.png", "truncated.jpg", "gray.gif"]
    code, lines, err = run_main(
        ["--model", str(workspace.model_path), "--device", "cpu", "--batch-size", "2", *[str(root / f) for f in files]],
        capsys,
    )
    assert code == 1
    assert [Path(line["file"]).name for line in lines] == files  # input order, one line each
    by_name = {Path(line["file"]).name: line for line in lines}
    assert by_name["missing.jpg"] == {"file": str(root / "missing.jpg"), "error": "missing: no such file"}
    assert "not an image" in by_name["notes.jpg"]["error"]
    assert "truncated" in by_name["truncated.jpg"]["error"]
    for name in ("rgb.jpg", "rgba.png", "gray.gif"):
        line = by_name[name]
        assert set(line) == {"file", "pred", "label", "prob", "top"}
        assert line["pred"] == ["cat", "dog"][line["label"]]
        assert line["prob"]["dog"] + line["prob"]["cat"] == pytest.approx(1.0, abs=1e-5)
        assert line["label"] == int(line["prob"]["dog"] > line["prob"]["cat"])
    assert err == "3 of 6 images could not be read (see their error lines)\n"


@pytest.mark.parametrize("batch_size", ["1", "16"])
def test_all_good_images_exit_zero_with_the_model_s_own_probabilities(workspace, capsys, batch_size):
    code, lines, err = run_main(
        [
            "--model",
            str(workspace.model_path),
            "--device",
            "cpu",
            "--batch-size",
            batch_size,
            *map(str, workspace.good),
        ],
        capsys,
    )
    assert code == 0 and err == ""
    assert [line["file"] for line in lines] == [str(p) for p in workspace.good]
    for line, path in zip(lines, workspace.good):
        cat, dog = expected_probs(workspace, path)
        assert line["prob"] == pytest.approx({"cat": cat, "dog": dog}, abs=1e-5)


def test_model_file_that_is_missing_or_not_safetensors_is_one_line_exit_2(workspace, tmp_path, capsys):
    pickled = tmp_path / "model.pt"
    torch.save(workspace.model.state_dict(), pickled)
    for model_file in (tmp_path / "nope.safetensors", pickled):
        code, lines, err = run_main(["--model", str(model_file), *map(str, workspace.good)], capsys)
        assert code == 2 and lines == []
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(model_file) in err, err


def test_bad_arguments_exit_2(workspace, capsys):
    model, image = str(workspace.model_path), str(workspace.good[0])
    code, _, err = run_main(["--model", model, "--batch-size", "0", image], capsys)
    assert code == 2 and err.strip() == "error: --batch-size must be at least 1, got 0"
    if not torch.cuda.is_available():
        code, _, err = run_main(["--model", model, "--device", "cuda", image], capsys)
        assert code == 2 and "no CUDA GPU" in err
