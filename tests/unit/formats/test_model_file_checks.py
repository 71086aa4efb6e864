"""Model files that do not fit, lie in their metadata or hold pickles: refused in one line naming the problem,
by evaluate and predict, before anything is built or unpickled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers import (
    Planted,
    error_line,
    plant_pickle,
    run_in_process,
    save_tiny_model,
)


def _bad_model(kind: str, path: Path) -> str:
    """Write a broken model file of ``kind``; returns a pattern the error line must contain."""
    if kind == "not-safetensors":
        path.write_bytes(b"PK\x03\x04 this is a zip archive")
        return "is not a safetensors file"
    if kind == "pickle":
        torch.save({"fc.weight": torch.zeros(2, 64)}, path)
        return "is not a safetensors file"
    if kind == "foreign-safetensors":
        save_file({"weight": torch.zeros(2, 2)}, str(path))
        return "not a pets-toolkit model"
    if kind == "wrong-architecture":
        save_tiny_model(path, "model.blocks_per_stage=[2,1,1,1]", meta={"blocks_per_stage": [1, 1, 1, 1]})
        return r"weights do not fit the model architecture: \d+ unexpected \(e\.g\. layer1\.1\."
    if kind == "wrong-width":
        save_tiny_model(path, "model.base_width=16", meta={"base_width": 8})
        return r"weight \S+ has shape \(\d+[^)]*\) but the model expects \(\d+[^)]*\)"
    if kind == "wrong-class-count":
        save_tiny_model(path, "model.num_classes=3", meta={"num_classes": 2, "class_names": ["cat", "dog"]})
        return (
            r"weight fc\.(weight|bias) has shape \(3,( 64)?\) but the model expects \(2,( 64)?\) "
            r"\(different number of classes\)"
        )
    raise ValueError(kind)


MODEL_PROBLEMS = [
    "not-safetensors",
    "pickle",
    "foreign-safetensors",
    "wrong-architecture",
    "wrong-width",
    "wrong-class-count",
]


@pytest.mark.parametrize("tool", ["evaluate", "predict"])
@pytest.mark.parametrize("kind", MODEL_PROBLEMS)
def test_model_file_that_does_not_fit_is_one_line_naming_the_mismatch(tiny_shards, tmp_path, capsys, tool, kind):
    from toolkit.evaluate import main as evaluate_main
    from toolkit.predict import main as predict_main

    model = tmp_path / "model.safetensors"
    expected = _bad_model(kind, model)
    if tool == "evaluate":
        code = run_in_process(evaluate_main, ["--model", str(model), "--shards", str(tiny_shards), "--split", "val"])
    else:
        image = tmp_path / "cat.jpg"
        from PIL import Image

        Image.new("RGB", (40, 32), (120, 80, 40)).save(image)
        code = run_in_process(predict_main, ["--model", str(model), str(image)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    line = error_line(captured.err)
    assert re.search(expected, line) and str(model) in line, line


def test_model_with_other_classes_than_the_shards_is_refused_by_evaluate(tiny_shards, tmp_path, capsys):
    from toolkit.evaluate import main as evaluate_main

    model = tmp_path / "model.safetensors"
    save_tiny_model(model, "model.num_classes=3")
    assert run_in_process(evaluate_main, ["--model", str(model), "--shards", str(tiny_shards)]) == 2
    line = error_line(capsys.readouterr().err)
    assert "3 classes" in line and "cat, dog" in line


def set_header_metadata(path: Path, **claims) -> None:
    """Rewrite a safetensors file's ``__metadata__`` in place, as a hostile sender could (tensors untouched)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"].update({key: json.dumps(value) for key, value in claims.items()})
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keep the tensors 8-byte aligned
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])


@pytest.mark.parametrize(
    "claims, words",
    [
        ({"image_size": 60000, "resize_size": 60000}, "data.image_size = 60000 is out of range"),
        ({"resize_size": 60000}, "data.resize_size = 60000 is out of range"),
        ({"image_size": "224"}, "data.image_size = '224' has the wrong type"),
        ({"image_size": 64, "resize_size": 48}, "resize_size 48 must be >= image_size 64"),
    ],
)
@pytest.mark.parametrize("tool", ["predict", "evaluate"])
def test_model_file_image_sizes_are_held_to_evaluate_s_cap(
    synthetic_shards: Path, tmp_path: Path, capsys, monkeypatch, claims: dict, words: str, tool: str
):
    """One check (config.model_image_sizes) for both tools, before any image is decoded or resized."""
    from PIL import Image

    import toolkit.predict
    from toolkit.evaluate import main as evaluate_main

    model = tmp_path / "model.safetensors"
    save_tiny_model(model)
    set_header_metadata(model, **claims)
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 40)).save(image)
    real = toolkit.predict.build_eval_transform

    def guarded(sizes, mean, std):  # without the check, fail here instead of allocating 10+ GB per image
        assert max(sizes.image_size, sizes.resize_size) <= 4096, f"built a transform for {sizes}"
        return real(sizes, mean, std)

    monkeypatch.setattr(toolkit.predict, "build_eval_transform", guarded)
    if tool == "predict":
        code = run_in_process(toolkit.predict.main, ["--model", str(model), str(image)])
    else:
        code = run_in_process(
            evaluate_main,
            [
                "--model",
                str(model),
                "--shards",
                str(synthetic_shards),
                "--num-workers",
                "0",
                "--out",
                str(tmp_path / "eval"),
            ],
        )
    line = error_line(capsys.readouterr().err)
    assert code == 2 and str(model) in line and words in line, line
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    "claim", [{"num_classes": 10**9}, {"base_width": 10**6}, {"blocks_per_stage": [10**5, 1, 1, 1]}]
)
def test_model_file_metadata_cannot_ask_for_a_huge_allocation(tmp_path, capsys, monkeypatch, claim):
    import toolkit.models.sources as model_sources
    from toolkit.predict import main as predict_main

    model = tmp_path / "model.safetensors"
    save_tiny_model(model, meta=claim)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(image)
    built = []
    monkeypatch.setattr(model_sources, "create_model", lambda *a, **k: built.append(k) or pytest.fail(f"built {k}"))
    code = run_in_process(predict_main, ["--model", str(model), str(image)])
    assert code == 2 and "metadata claims" in error_line(capsys.readouterr().err)
    assert built == []  # refused before any model of the claimed size was built


@pytest.mark.parametrize("tool", ["evaluate", "predict"])
def test_a_pickled_model_file_is_refused_without_being_unpickled(tiny_shards, tmp_path, capsys, tool):
    from toolkit.evaluate import main as evaluate_main
    from toolkit.predict import main as predict_main

    model, marker = tmp_path / "model.safetensors", tmp_path / "pwned"
    plant_pickle(model, marker)
    torch_file = tmp_path / "model.pt"  # a real torch.save file holding the same payload
    torch.save({"fc.weight": Planted(marker)}, torch_file)
    for path in (model, torch_file):
        if tool == "evaluate":
            code = run_in_process(evaluate_main, ["--model", str(path), "--shards", str(tiny_shards)])
        else:
            code = run_in_process(predict_main, ["--model", str(path), str(tmp_path / "any.jpg")])
        assert code == 2 and "is not a safetensors file" in error_line(capsys.readouterr().err)
    assert not marker.exists()
