"""The round trip closes: evaluate and predict take the model a run wrote, the folder export wrote (as DIR
or timm's ``local-dir:DIR``), and any timm model folder with its own preprocessing; the export gives
the run's own test metrics."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from helpers import error_line, pack_tiny, run_in_process, train_args, train_cli
from toolkit import evaluate, export, predict

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(shards, run folder, exported folder): a standard-width (exportable) model trained for 2 epochs."""
    root = tmp_path_factory.mktemp("sources")
    shards = pack_tiny(root)
    assert train_cli(train_args(shards, root / "runs", "run", "model.base_width=64")) == 0
    run = root / "runs" / "run"
    assert run_in_process(export.main, ["--run", str(run), "--out", str(root / "exported")]) == 0
    return shards, run, root / "exported"


def metrics_of(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {key: metrics[key] for key in ("num_samples", "loss", "accuracy", "roc_auc", "average_precision")}


def test_the_export_gives_the_runs_own_test_metrics(trained, tmp_path):
    shards, run, exported = trained
    own = metrics_of(run / "eval" / "test")  # what training's own evaluation of its best model wrote
    for source, out in (
        (str(run / "model.safetensors"), tmp_path / "file"),
        (str(exported), tmp_path / "dir"),
        (f"local-dir:{exported}", tmp_path / "local-dir"),
        (str(run), tmp_path / "run"),
    ):
        code = run_in_process(
            evaluate.main,
            ["--model", source, "--shards", str(shards), "--split", "test", "--out", str(out), "--num-workers", "0"],
        )
        assert code == 0, source
        got = metrics_of(out)
        assert got["num_samples"] == own["num_samples"]
        for key in ("loss", "accuracy", "roc_auc", "average_precision"):
            assert math.isclose(got[key], own[key], rel_tol=1e-5, abs_tol=1e-6), (source, key, got[key], own[key])


def test_evaluate_writes_into_the_exported_folder_by_default(trained):
    shards, _, exported = trained
    copy = exported.parent / "exported-copy"
    shutil.copytree(exported, copy, dirs_exist_ok=True)
    assert (
        run_in_process(
            evaluate.main,
            ["--model", f"local-dir:{copy}", "--shards", str(shards), "--split", "test", "--num-workers", "0"],
        )
        == 0
    )
    assert (copy / "eval" / "test" / "metrics.json").is_file()


def test_predict_gives_the_same_probabilities_from_the_run_and_the_export(trained, tmp_path, capsys):
    _, run, exported = trained
    from PIL import Image

    image = tmp_path / "pet.png"
    Image.new("RGB", (50, 40), (180, 120, 60)).save(image)
    lines = []
    for source in (str(run / "model.safetensors"), f"local-dir:{exported}"):
        assert run_in_process(predict.main, ["--model", source, str(image), "--device", "cpu"]) == 0
        lines.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert lines[0]["pred"] == lines[1]["pred"]
    for name, prob in lines[0]["prob"].items():
        assert math.isclose(prob, lines[1]["prob"][name], abs_tol=1e-5)


def test_bad_model_sources_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    code = run_in_process(evaluate.main, ["--model", str(tmp_path / "empty"), "--shards", str(tmp_path)])
    assert code == 2 and "holds neither config.json" in error_line(capsys.readouterr().err)
    code = run_in_process(evaluate.main, ["--model", "hf-hub:timm/resnet18.a1_in1k", "--shards", str(tmp_path)])
    assert code == 2 and "pass --out DIR" in error_line(capsys.readouterr().err)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = run_in_process(predict.main, ["--model", "hf-hub:timm/resnet18.a1_in1k", str(tmp_path / "x.jpg")])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and "cannot get config.json and model.safetensors from the Hub" in line and "local-dir:" in line


def test_visualize_draws_with_the_exported_model(trained, capsys):
    from toolkit.visualize import main as visualize_main

    _, run, exported = trained
    plots = run / "plots"
    for png in plots.glob("*.png"):
        png.unlink()
    code = run_in_process(
        visualize_main,
        [
            "--run",
            str(run),
            "--model",
            f"local-dir:{exported}",
            "--what",
            "gradcam,filters",
            "--num-images",
            "2",
            "--no-report",
        ],
    )
    assert code == 0
    made = {path.name for path in plots.glob("*.png")}
    assert any(name.startswith("gradcam") for name in made) and any(name.startswith("filters") for name in made), made
