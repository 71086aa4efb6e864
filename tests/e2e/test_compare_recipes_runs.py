"""compare_recipes end to end: both recipes trained over seeds, tabulated from the runs' own test files; a new
comparison never deletes a run."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ENV, ROOT, TINY, file_hashes, isolate_wandb, wait_for
from toolkit.compare_recipes import main
from toolkit.compare_recipes import main as compare_main


def test_a_new_comparison_keeps_every_earlier_run(synthetic_shards: Path, tmp_path: Path, capsys):
    """Without --reuse, or with a changed override, the runs go to NAME-2 and the earlier ones stay byte for byte."""
    out = tmp_path / "compare"
    args = ["--shards", str(synthetic_shards), "--epochs", "1", "--seeds", "0", "--out", str(out)]
    assert compare_main([*args, *TINY]) == 0
    earlier = {name: file_hashes(out / "runs" / f"{name}-seed0") for name in ("seed", "strong")}
    assert all("eval/test/metrics.json" in files for files in earlier.values())
    capsys.readouterr()

    assert compare_main([*args, *TINY, "optimizer.weight_decay=0.001"]) == 0  # a changed override, no --reuse
    printed = capsys.readouterr().out
    assert "seed seed 0: training" in printed and "strong seed 0: training" in printed
    report = json.loads((out / "comparison.json").read_text())
    assert [Path(r["run_dir"]).name for n in ("seed", "strong") for r in report["recipes"][n]["runs"]] == [
        "seed-seed0-2",
        "strong-seed0-2",
    ]
    assert {name: file_hashes(out / "runs" / f"{name}-seed0") for name in earlier} == earlier

    assert compare_main([*args, "--reuse", *TINY]) == 0  # the original config again: the kept runs count
    printed = capsys.readouterr().out
    assert f"reused the finished run in {out / 'runs' / 'seed-seed0'}" in printed
    assert f"reused the finished run in {out / 'runs' / 'strong-seed0'}" in printed


@pytest.mark.timeout(600)
def test_two_comparisons_at_once_into_one_folder_keep_each_other_s_runs(synthetic_shards: Path, tmp_path: Path):
    """Two compare_recipes processes, same --out, same recipe and seed: two run folders, both complete."""
    out = tmp_path / "compare"
    command = [
        sys.executable,
        "-m",
        "toolkit.compare_recipes",
        "--shards",
        str(synthetic_shards),
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--configs",
        str(ROOT / "configs/smoke.yaml"),
        "--names",
        "smoke",
        "--out",
        str(out),
        *TINY,
    ]
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [wait_for(proc, timeout=280) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["smoke-seed0", "smoke-seed0-2"]
    for name in runs:  # each finished, each trained once, into its own folder
        run = out / "runs" / name
        assert (run / "eval" / "test" / "metrics.json").is_file() and (run / "final.json").is_file()
        assert len((run / "metrics.jsonl").read_text().splitlines()) >= 1
        assert not (run / ".lock").exists()
    printed = "".join(stdout for stdout, _ in results)
    assert all(f"training ({out / 'runs' / name / 'train.log'})" in printed for name in runs)


def test_compares_both_recipes_over_seeds(synthetic_shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "compare"
    args = ["--shards", str(synthetic_shards), "--epochs", "1", "--seeds", "0", "1", "--out", str(out)]
    assert main([*args, *TINY]) == 0
    printed = capsys.readouterr().out
    assert "[1/4] seed seed 0: training" in printed and "[4/4] strong seed 1: test ROC-AUC" in printed
    assert "epoch 1/1 |" in printed  # the runs' epoch lines are passed through

    report = json.loads((out / "comparison.json").read_text())
    assert list(report["recipes"]) == ["seed", "strong"] and report["seeds"] == [0, 1] and report["epochs"] == 1
    assert report["overrides"] == TINY and report["split"] == "test"
    for name, recipe in report["recipes"].items():
        runs = recipe["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for run in runs:
            run_dir = Path(run["run_dir"])
            assert run_dir == out / "runs" / f"{name}-seed{run['seed']}"
            # the table's numbers are the run's own evaluation of the test split ...
            test = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
            assert run["values"]["accuracy"] == test["accuracy"] and run["values"]["roc_auc"] == test["roc_auc"]
            assert run["per_class"]["dog"]["recall"] == test["per_class"]["dog"]["recall"]
            # ... of a run trained with the shared overrides, the fixed budget and its seed, without W&B
            used = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert used["model"]["base_width"] == 8 and used["train"]["epochs"] == 1
            assert used["train"]["seed"] == run["seed"] and used["tracking"]["wandb"] == "disabled"
            assert used["data"]["shards"] == str(synthetic_shards.resolve())
            assert (run_dir / "train.log").is_file()
        summary = recipe["summary"]
        accuracies = [r["values"]["accuracy"] for r in runs]
        assert summary["accuracy"]["mean"] == pytest.approx(statistics.fmean(accuracies))
        assert summary["accuracy"]["std"] == pytest.approx(statistics.stdev(accuracies))
        assert set(summary["per_class"]) == {"cat", "dog", "macro avg", "weighted avg"}
    # the two recipes really differ: the strong one uses its own normalization (train split) and optimizer
    seed_cfg = yaml.safe_load((out / "runs/seed-seed0/config.yaml").read_text())
    strong_cfg = yaml.safe_load((out / "runs/strong-seed0/config.yaml").read_text())
    assert seed_cfg["optimizer"]["name"] == "adam" and strong_cfg["optimizer"]["name"] != "adam"
    info = json.loads((synthetic_shards / "info.json").read_text())
    assert strong_cfg["data"]["mean"] == pytest.approx(info["normalization"]["mean"])

    table = (out / "comparison.md").read_text()
    assert table in printed
    for text in (
        "| metric | seed | strong | strong - seed |",
        "| test ROC-AUC |",
        "| test accuracy |",
        "| wall time per run (min) |",
        "| cat |",
        "| dog |",
        "| macro avg |",
        "| weighted avg |",
        " ± ",
    ):
        assert text in table, text
    assert sum(line.startswith(("| seed | ", "| strong | ")) for line in table.splitlines()) == 4  # one row per run


def test_reuse_keeps_finished_runs_with_the_same_config(synthetic_shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "compare"
    args = ["--shards", str(synthetic_shards), "--epochs", "1", "--out", str(out)]
    assert main([*args, "--seeds", "0", *TINY]) == 0
    first = {
        name: (out / "runs" / f"{name}-seed0" / "model.safetensors").stat().st_mtime_ns for name in ("seed", "strong")
    }
    capsys.readouterr()

    assert main([*args, "--seeds", "0", "1", "--reuse", *TINY]) == 0  # add a seed: only its runs are trained
    printed = capsys.readouterr().out
    assert "[1/4] seed seed 0: reused the finished run" in printed and "[2/4] strong seed 0: reused" in printed
    assert "[3/4] seed seed 1: training" in printed and "[4/4] strong seed 1: training" in printed
    assert {n: (out / "runs" / f"{n}-seed0" / "model.safetensors").stat().st_mtime_ns for n in first} == first
    report = json.loads((out / "comparison.json").read_text())
    assert [r["seed"] for r in report["recipes"]["strong"]["runs"]] == [0, 1]
    assert all(r["values"]["wall_minutes"] > 0 for r in report["recipes"]["seed"]["runs"])  # kept from the first run

    saved = out / "runs" / "strong-seed0" / "config.yaml"  # a run made with other settings is not reused
    saved.write_text(saved.read_text().replace("label_smoothing: 0.1", "label_smoothing: 0.2"))
    assert main([*args, "--seeds", "0", "--reuse", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "seed seed 0: reused" in printed and "strong seed 0: training" in printed


def test_ends_with_the_wandb_report_of_the_comparison(synthetic_shards: Path, tmp_path: Path, monkeypatch, capsys):
    """--wandb-report P: the runs log to W&B (offline here, grouped by recipe), then the Report's spec is written."""
    isolate_wandb(monkeypatch, tmp_path / "home")
    out = tmp_path / "compare"
    args = [
        "--shards",
        str(synthetic_shards),
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--out",
        str(out),
        "--wandb-report",
        "pets-compare",
    ]
    assert main([*args, *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"wrote the W&B report spec to {out / 'wandb-report.json'}" in printed
    assert "python -m toolkit.wandb_report --publish" in printed
    spec = json.loads((out / "wandb-report.json").read_text())
    assert spec["project"] == "pets-compare"
    assert [(rs["name"], len(rs["runs"])) for rs in spec["runsets"]] == [("seed", 1), ("strong", 1)]
    used = yaml.safe_load((out / "runs" / "strong-seed0" / "config.yaml").read_text())
    assert used["tracking"]["group"] == "strong" and used["tracking"]["project"] == "pets-compare"
