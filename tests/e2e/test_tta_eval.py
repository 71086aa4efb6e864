"""Test-time augmentation end to end: ``evaluate --tta hflip`` on 1 and 2 processes gives the same metrics and
predictions, which differ from plain evaluation; metrics.json, the metrics line and the report name it; ``predict
--tta hflip`` on the same split gives evaluate's probabilities (one implementation), and on files the mean of the softmax of
each image and its mirror. Training's eval.tta applies to its final evaluation only."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import (
    ENV,
    LAUNCH_2,
    ROOT,
    assert_json_close,
    make_folder,
    run_in_process,
    save_tiny_model,
    train_args,
    train_cli,
    wait_for,
)
from toolkit import evaluate, predict
from toolkit.evaluation.batch_predict import read_image
from toolkit.formats import RunDir
from toolkit.models.sources import load_model
from toolkit.reporting.report import render_report

pytestmark = pytest.mark.slow
TIMEOUT_S = 300


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def probs(row: dict) -> list[float]:
    return [float(v) for k, v in row.items() if k.startswith("prob_")]


@pytest.mark.timeout(2 * TIMEOUT_S)
def test_evaluate_with_hflip_tta_on_one_and_two_processes(synthetic_shards, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    model = run / "model.safetensors"
    save_tiny_model(model, seed=4)
    common = ["--model", str(model), "--shards", str(synthetic_shards), "--split", "test", "--tuning-split", "none"]
    two = subprocess.Popen(
        [*LAUNCH_2, "--main_process_port", "29631", "-m", "toolkit.evaluate", *common, "--tta", "hflip"]
        + ["--out", str(tmp_path / "two"), "--num-workers", "2"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run_in_process(evaluate.main, [*common, "--tta", "hflip", "--num-workers", "0"]) == 0  # -> run/eval/test
    assert "tta=hflip" in capsys.readouterr().out
    assert run_in_process(evaluate.main, [*common, "--out", str(tmp_path / "plain"), "--num-workers", "0"]) == 0
    out, err = wait_for(two, TIMEOUT_S)
    assert two.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert out.count("test: n=") == 1 and "tta=hflip" in out

    one_dir, two_dir = run / "eval" / "test", tmp_path / "two"
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one_dir, two_dir)]
    assert metrics[0]["tta"] == metrics[1]["tta"] == "hflip"
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["tta"] == "none"
    assert_json_close(metrics[0], metrics[1])
    one, two_rows, plain = (
        rows(one_dir / "predictions.csv"),
        rows(two_dir / "predictions.csv"),
        rows(tmp_path / "plain" / "predictions.csv"),
    )
    assert [(r["key"], r["label"], r["pred"]) for r in one] == [(r["key"], r["label"], r["pred"]) for r in two_rows]
    for a, b in zip(one, two_rows):
        assert probs(b) == pytest.approx(probs(a), abs=2e-6)
    assert max(abs(p - q) for a, b in zip(one, plain) for p, q in zip(probs(a), probs(b))) > 1e-4  # TTA did act

    section = render_report(RunDir(run))
    assert "test-time augmentation" in section and "hflip" in section

    csv_out = tmp_path / "predict.csv"
    argv = ["--model", str(model), "--shards", str(synthetic_shards), "--split", "test", "--tta", "hflip"]
    assert run_in_process(predict.main, [*argv, "--out", str(csv_out), "--num-workers", "0"]) == 0
    assert "tta=hflip" in capsys.readouterr().out
    assert json.loads((tmp_path / "predict.metrics.json").read_text())["tta"] == "hflip"
    predicted = {r["key"]: r for r in rows(csv_out)}
    assert sorted(predicted) == [r["key"] for r in one]
    for row in one:  # predict's CSV lists the top classes with their probability (6 digits)
        got = predicted[row["key"]]
        for i in (1, 2):
            assert float(got[f"prob{i}"]) == pytest.approx(float(row[f"prob_{got[f'top{i}']}"]), abs=1e-6)


def test_predict_files_with_hflip_tta_averages_the_image_and_its_mirror(tmp_path, capsys):
    model_path = tmp_path / "model.safetensors"
    save_tiny_model(model_path, seed=5)
    photos = make_folder(tmp_path / "photos", {"cat": 3, "dog": 3})  # an image-folder tree: labelled, metrics
    out = tmp_path / "files.csv"
    argv = ["--model", str(model_path), str(photos), "--tta", "hflip", "--top-k", "2", "--out", str(out)]
    assert run_in_process(predict.main, argv) == 0
    assert "tta=hflip" in capsys.readouterr().out
    assert json.loads((tmp_path / "files.metrics.json").read_text())["tta"] == "hflip"
    model, meta = load_model(str(model_path))
    transform = predict.eval_transform(meta)
    for row in rows(out):
        x = transform(read_image(Path(row["key"])))[None]
        with torch.no_grad():
            mean = (torch.softmax(model(x), 1) + torch.softmax(model(torch.flip(x, dims=[-1])), 1)) / 2
        names = list(meta["class_names"])
        for i in (1, 2):
            assert float(row[f"prob{i}"]) == pytest.approx(float(mean[0, names.index(row[f"top{i}"])]), abs=2e-6)


def test_training_applies_eval_tta_to_the_final_evaluation_only(tiny_shards, tmp_path, capsys):
    overrides = ("train.epochs=1", "eval.test_split=null", "eval.tta=hflip")
    assert train_cli(train_args(tiny_shards, tmp_path, "run", *overrides)) == 0
    run = tmp_path / "run"
    final = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert final["tta"] == "hflip"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    plain = tmp_path / "plain"
    argv = ["--model", str(run / "model.safetensors"), "--shards", str(tiny_shards), "--split", "val"]
    assert (
        run_in_process(evaluate.main, [*argv, "--tuning-split", "none", "--out", str(plain), "--num-workers", "0"]) == 0
    )
    plain_loss = json.loads((plain / "metrics.json").read_text())["loss"]
    assert logged["val_loss"] == pytest.approx(plain_loss, abs=1e-5)  # per-epoch validation: no TTA
    assert abs(final["loss"] - plain_loss) > 1e-5  # the final evaluation: with it
    assert "test-time augmentation" in render_report(RunDir(run))
