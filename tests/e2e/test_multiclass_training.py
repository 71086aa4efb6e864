"""Beyond cats vs dogs, end to end on the real sample images.

The 37-breed task packs, trains a tiny model for a few steps, evaluates identically on 1 and 2
processes and reports top-1/top-5, the per-class table and the confusion matrix; an image folder
made of three real breeds goes make_shards -> train -> evaluate -> predict; a model is refused on
data whose classes it was not trained for.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from helpers import ENV, LAUNCH_2, ROOT, assert_json_close, error_line, train_args, train_cli, wait_for
from toolkit.formats import RunDir, read_manifest

TIMEOUT_S = 300
N_CLASS = ["model.num_classes=null", "train.epochs=1", "train.batch_size=16", "eval.batch_size=32"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = wait_for(proc, TIMEOUT_S)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def breed_run(mini_breed_shards, tmp_path_factory) -> RunDir:
    """A tiny model trained one epoch (32 steps) on the 37 real breeds."""
    out = tmp_path_factory.mktemp("breed-run")
    assert train_cli(train_args(mini_breed_shards, out, "breeds", *N_CLASS)) == 0
    return RunDir(out / "breeds")


@pytest.mark.timeout(3 * TIMEOUT_S)
def test_breeds_train_and_evaluate_identically_on_one_and_two_processes(mini_breed_shards, breed_run, tmp_path):
    info = read_manifest(mini_breed_shards)
    classes = info["classes"]
    trained = breed_run.read_metrics("test")
    assert trained["class_names"] == classes and trained["num_classes"] == 37
    assert trained["num_samples"] == info["splits"]["test"]["num_samples"]
    assert 0 <= trained["accuracy"] <= trained["top5_accuracy"] <= 1 and trained["top_k"] == 5
    assert list(trained["per_class"]) == classes
    assert [sum(row) for row in trained["confusion_matrix"]] == [trained["per_class"][c]["support"] for c in classes]
    worst = trained["per_class_accuracy"]
    assert [r["accuracy"] for r in worst] == sorted(r["accuracy"] for r in worst)
    for confusion in trained["largest_confusions"]:
        t, p = classes.index(confusion["true"]), classes.index(confusion["pred"])
        assert t != p and trained["confusion_matrix"][t][p] == confusion["count"]
    assert trained["roc_auc"] is not None and trained["best_threshold"] is None
    assert breed_run.report.is_file()

    model = str(breed_run.model)
    common = ["--model", model, "--shards", str(mini_breed_shards), "--split", "test"]
    one = run([sys.executable, "-m", "toolkit.evaluate", *common, "--out", str(tmp_path / "one"), "--num-workers", "0"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(
        [
            *LAUNCH_2,
            "--main_process_port",
            "29618",
            "-m",
            "toolkit.evaluate",
            *common,
            "--out",
            str(tmp_path / "two"),
            "--num-workers",
            "2",
        ]
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("test: n=") == 1 and " top5=" in two.stdout
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two")]
    assert_json_close(metrics[0], metrics[1])
    assert_json_close(
        {k: v for k, v in trained.items() if k not in ("model", "model_epoch")},
        {k: v for k, v in metrics[0].items() if k not in ("model", "model_epoch")},
    )
    rows = [list(csv.reader(io.StringIO((tmp_path / name / "predictions.csv").read_text()))) for name in ("one", "two")]
    assert rows[0][0] == ["key", "label", "pred", "breed"] + [f"prob_{c}" for c in classes]
    assert [r[:4] for r in rows[0]] == [r[:4] for r in rows[1]]
    assert len(rows[0]) - 1 == metrics[0]["num_samples"]


def test_models_are_refused_on_data_with_other_classes(
    breed_run, synthetic_shards, mini_breed_shards, mini_pets, tmp_path
):
    done = run(
        [
            sys.executable,
            "-m",
            "toolkit.evaluate",
            "--model",
            str(breed_run.model),
            "--shards",
            str(synthetic_shards),
            "--split",
            "test",
        ]
    )
    assert done.returncode == 2
    assert "predicts 37 classes (Abyssinian, american_bulldog" in error_line(done.stderr)
    assert "have 2 (cat, dog)" in error_line(done.stderr)

    code = train_cli(train_args(mini_breed_shards, tmp_path, "wrong", "model.num_classes=2"))
    assert code == 2

    image = next((mini_pets / "images").glob("Bengal_*.jpg"))
    refused = run(
        [
            sys.executable,
            "-m",
            "toolkit.predict",
            "--model",
            str(breed_run.model),
            "--shards",
            str(synthetic_shards),
            str(image),
        ]
    )
    assert refused.returncode == 2 and "have 2 (cat, dog)" in error_line(refused.stderr) and refused.stdout == ""
    fits = run(
        [
            sys.executable,
            "-m",
            "toolkit.predict",
            "--model",
            str(breed_run.model),
            "--shards",
            str(mini_breed_shards),
            str(image),
        ]
    )
    assert fits.returncode == 0 and len(json.loads(fits.stdout)["top"]) == 5


def test_an_image_folder_goes_from_make_shards_to_predict(three_breed_folder, tmp_path):
    shards = tmp_path / "shards"
    packed = run(
        [
            sys.executable,
            "-m",
            "toolkit.make_shards",
            "--source",
            str(three_breed_folder),
            "--out",
            str(shards),
            "--resize-shorter",
            "48",
            "--workers",
            "2",
        ]
    )
    assert packed.returncode == 0, packed.stderr[-2000:]
    assert "(3 classes by class)" in packed.stdout
    info = read_manifest(shards)
    assert info["classes"] == ["Abyssinian", "Bengal", "beagle"]  # sorted folder names
    assert run([sys.executable, "-m", "toolkit.make_shards", "--verify", str(shards)]).returncode == 0

    assert train_cli(train_args(shards, tmp_path, "folder", *N_CLASS)) == 0
    run_dir = RunDir(tmp_path / "folder")
    evaluated = run(
        [
            sys.executable,
            "-m",
            "toolkit.evaluate",
            "--model",
            str(run_dir.model),
            "--shards",
            str(shards),
            "--split",
            "val",
            "--out",
            str(tmp_path / "val"),
        ]
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert metrics["class_names"] == info["classes"] and metrics["num_samples"] == info["splits"]["val"]["num_samples"]
    assert metrics["top_k"] == 3 and metrics["top5_accuracy"] == 1.0  # top-3 of 3 classes

    images = sorted((three_breed_folder / "beagle").iterdir())[:3] + [
        three_breed_folder / "Abyssinian" / "Abyssinian_5.jpg"
    ]
    predicted = run([sys.executable, "-m", "toolkit.predict", "--model", str(run_dir.model), *map(str, images)])
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(lines) == 4  # Abyssinian_5.jpg is a PNG named .jpg: decoded all the same
    for line in lines:
        assert set(line["prob"]) == set(info["classes"]) and line["pred"] in info["classes"]
        assert line["pred"] == max(line["prob"], key=line["prob"].get)
        assert sum(line["prob"].values()) == pytest.approx(1, abs=1e-4)
