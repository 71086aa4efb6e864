"""Early stopping on train.monitor (issue 31, item 2): every rank stops at the same epoch, and a
SIGTERM in the middle of the patience is resumed with the patience count it had.

``train.early_stop_min_delta=1`` makes the planted outcome certain: no val metric can gain more than
1, so after the first epoch every validation counts against the patience, and the run stops at
epoch 1 + patience. The driver records, on every rank, each epoch the loop ends and its state.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, LAUNCH_2, ROOT, isolate_wandb, offline_contents, pack_tiny, train_args, train_cli, wait_for

pytestmark = pytest.mark.slow

DRIVER = r"""
import json, os, signal, sys
sys.path.insert(0, {root!r})
import toolkit.training.loop as loop
from toolkit.cli import run_cli

nth, record = int(sys.argv[1]), sys.argv[2]
seen = 0
build, end_epoch = loop.build_model, loop.end_epoch

def build_model(cfg):
    model = build(cfg)
    def hook(module, args):  # SIGTERM at the nth training forward pass (0: never)
        global seen
        if module.training:
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGTERM)
    model.register_forward_pre_hook(hook)
    return model

def recording_end_epoch(s, state, outcome, val):
    end_epoch(s, state, outcome, val)
    line = {{"epoch": state.epoch, "wait": state.stop_wait, "stopped": state.stopped_early_at}}
    with open(f"{{record}}.rank{{s.accelerator.process_index}}", "a") as out:
        out.write(json.dumps(line) + "\n")

loop.build_model, loop.end_epoch = build_model, recording_end_epoch
if os.environ.get("TERM_IN_FINISH"):  # the run is killed while it evaluates and reports, after the loop
    def finish_run(*args):
        os.kill(os.getpid(), signal.SIGTERM)
    loop.finish_run = finish_run
if os.environ.get("RANK1_NEVER_STOPS") and os.environ.get("RANK") == "1":  # its own numbers would say go on
    real_record_epoch = loop.record_epoch
    def record_epoch(state, row, train):
        improved = real_record_epoch(state, row, train)
        state.stopped_early_at = None
        return improved
    loop.record_epoch = record_epoch
import toolkit.train
run_cli(toolkit.train.main, sys.argv[3:])
"""
EARLY = ("train.early_stop_patience=2", "train.early_stop_min_delta=1", "train.log_every_steps=100")


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("early-stop"))


def driven(tmp_path: Path, nth: int, record: str, *args: str, launch: tuple = (sys.executable,)) -> list[str]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    return [*launch, str(driver), str(nth), str(tmp_path / record), *args]


def run(argv: list[str], **env: str) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        argv, cwd=ROOT, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = wait_for(proc, 200)
    return proc.returncode, out, err


def records(tmp_path: Path, name: str, rank: int) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / f"{name}.rank{rank}").read_text().splitlines()]


@pytest.mark.timeout(400)
def test_two_processes_stop_early_at_the_same_epoch(tiny_shards, tmp_path):
    args = train_args(tiny_shards, tmp_path, "run", *EARLY, "train.epochs=6", "eval.test_split=null")
    launch = (*LAUNCH_2, "--main_process_port", "29731")
    code, out, err = run(driven(tmp_path, 0, "two", *args, launch=launch))
    assert code == 0, (out[-2000:], err[-3000:])
    ranks = [records(tmp_path, "two", rank) for rank in (0, 1)]
    assert ranks[0] == ranks[1]  # the same epochs, patience counts and decision on both ranks
    assert [r["epoch"] for r in ranks[0]] == [1, 2, 3] and ranks[0][-1]["stopped"] == 3
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["early_stop"] == {"patience": 2, "min_delta": 1.0, "stopped_at_epoch": 3}
    assert (final["monitor"], final["num_processes"]) == ("val_auc", 2) and 1 <= final["best_epoch"] <= 3
    assert len(set(final["rank_weight_checksums"])) == 1
    best = final["best_epoch"]
    assert f"stopped early at epoch 3, best at {best}" in out
    assert f"Stopped early at epoch 3, best at {best}" in (tmp_path / "run" / "report.html").read_text()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.timeout(400)
def test_the_main_process_decision_stops_a_rank_whose_own_numbers_would_go_on(tiny_shards, tmp_path):
    """Rank 1 is made to never decide to stop (as if its val numbers differed): it still stops with rank 0."""
    args = train_args(tiny_shards, tmp_path, "run", *EARLY, "train.epochs=6", "eval.test_split=null")
    launch = (*LAUNCH_2, "--main_process_port", "29732")
    code, out, err = run(driven(tmp_path, 0, "two", *args, launch=launch), RANK1_NEVER_STOPS="1")
    assert code == 0, (out[-2000:], err[-3000:])
    ranks = [records(tmp_path, "two", rank) for rank in (0, 1)]
    assert [r["epoch"] for r in ranks[1]] == [r["epoch"] for r in ranks[0]] == [1, 2, 3]
    assert ranks[1][-1]["stopped"] == ranks[0][-1]["stopped"] == 3


@pytest.mark.timeout(400)
def test_a_sigterm_in_the_middle_of_the_patience_resumes_with_its_count(tiny_shards, tmp_path):
    args = train_args(tiny_shards, tmp_path, "run", *EARLY, "train.epochs=6", "eval.test_split=null")
    # 8 steps per epoch: the 20th forward pass is in epoch 3, after epoch 2 counted 1 of 2
    code, out, err = run(driven(tmp_path, 20, "first", *args))
    assert code == 128 + signal.SIGTERM, (out[-2000:], err[-3000:])
    assert "stopped by a stop signal at epoch 3" in out
    assert records(tmp_path, "first", 0)[-1] == {"epoch": 2, "wait": 1, "stopped": None}
    code, out, err = run(driven(tmp_path, 0, "second", *args, "train.resume=auto"))
    assert code == 0, (out[-2000:], err[-3000:])
    assert records(tmp_path, "second", 0) == [{"epoch": 3, "wait": 2, "stopped": 3}]  # not 4: the count was kept
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["early_stop"]["stopped_at_epoch"] == 3 and 1 <= final["best_epoch"] <= 3
    assert [json.loads(r)["epoch"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.timeout(300)
def test_the_monitor_chooses_the_model_and_every_record_of_it(tiny_shards, tmp_path, monkeypatch, capsys):
    """val_loss (min): the saved model is the lowest-loss epoch's, and final.json, the log line, the report
    headline and the W&B summary all name that epoch."""
    isolate_wandb(monkeypatch, tmp_path / "home")
    args = train_args(tiny_shards, tmp_path, "run", "train.epochs=3", "train.monitor=val_loss", "eval.test_split=null")
    assert train_cli([*args, "tracking.wandb=offline"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lowest = min(rows, key=lambda r: r["val_loss"])
    final = json.loads((run / "final.json").read_text())
    assert (final["monitor"], final["monitor_mode"]) == ("val_loss", "min")
    assert (final["best_epoch"], final["best_value"]) == (lowest["epoch"], lowest["val_loss"])
    assert final["best_val_auc"] == lowest["val_auc"] and final["early_stop"]["stopped_at_epoch"] is None
    model_epoch = json.loads((run / "eval" / "val" / "metrics.json").read_text())["model_epoch"]
    assert model_epoch == lowest["epoch"]
    assert f"done: best val_loss {lowest['val_loss']:.4f} at epoch {lowest['epoch']}" in out
    assert all(r["val_balanced_acc"] is not None and r["val_top5"] is None for r in rows)  # 2 classes: no top-5
    assert f"best val_loss during training (epoch {lowest['epoch']}" in (run / "report.html").read_text()
    summary = offline_contents(run).summary
    assert summary["best/val_loss"] == pytest.approx(lowest["val_loss"]) and summary["best/epoch"] == lowest["epoch"]


@pytest.mark.timeout(400)
def test_a_run_killed_after_stopping_early_resumes_into_its_end_not_into_more_epochs(tiny_shards, tmp_path):
    """The stop is checkpointed with its epoch (also between train.checkpoint_every_epochs): resuming a run
    killed while it evaluated and reported goes straight to the end."""
    args = train_args(
        tiny_shards,
        tmp_path,
        "run",
        *EARLY,
        "train.epochs=6",
        "train.checkpoint_every_epochs=2",
        "eval.test_split=null",
    )
    code, out, err = run(driven(tmp_path, 0, "first", *args), TERM_IN_FINISH="1")
    assert code == -signal.SIGTERM, (code, out[-2000:], err[-3000:])
    assert records(tmp_path, "first", 0)[-1] == {"epoch": 3, "wait": 2, "stopped": 3}
    code, out, err = run(driven(tmp_path, 0, "second", *args, "train.resume=auto"))
    assert code == 0, (out[-2000:], err[-3000:])
    assert "resumed from" in out and not (tmp_path / "second.rank0").exists()  # no epoch trained again
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["early_stop"]["stopped_at_epoch"] == 3
    assert [json.loads(r)["epoch"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
