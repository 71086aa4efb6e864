"""W&B tracking never hurts training, and secrets never reach a file.

The offline run is read back from W&B's own transaction log (``run-*.wandb``: LevelDB-style
framed records holding ``wandb.proto`` Records), because wandb 0.31 writes no config.yaml or
wandb-summary.json for offline runs and no longer ships a Python reader for that file.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from helpers import CAT_DOG, isolate_wandb, two_class_probs
from toolkit.formats import RunDir
from toolkit.redaction import REDACTED
from toolkit.reporting.tracking import Tracker, has_api_key, resolve_mode
from toolkit.reporting.wandb_runs import read_wandb_records

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex chars, the shape of a real W&B key


def tracking_cfg(mode: str, **extra) -> SimpleNamespace:
    values = {"wandb": mode, "project": "pets-toolkit-tests", "entity": None, "tags": ["test"], "group": None}
    values.update(extra)
    return SimpleNamespace(**values)


class Echo(list):
    """Collects the tracker's messages (it prints to stderr by default)."""

    def __call__(self, message: str) -> None:
        self.append(message)

    @property
    def warnings(self) -> list[str]:
        return [m for m in self if m.startswith("warning:")]


# ---------------------------------------------------------------------------------------------
# Reading an offline run back


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def offline_run_contents(run_folder: Path) -> dict:
    """Config, history rows by step, summary and artifacts recorded in an offline run."""
    (log_file,) = run_folder.glob("run-*.wandb")
    config, history, summary, artifacts = {}, {}, {}, []
    for record in read_wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        else:
            updates = []
        for item in updates:
            config[_item_key(item)] = json.loads(item.value_json)
        if kind == "history":
            row = {_item_key(item): json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = row
        elif kind == "summary":
            for item in record.summary.update:
                summary[_item_key(item)] = json.loads(item.value_json)
        elif kind == "artifact":
            artifacts.append(
                {
                    "type": record.artifact.type,
                    "name": record.artifact.name,
                    "metadata": json.loads(record.artifact.metadata or "{}"),
                }
            )
    return {"config": config, "history": history, "summary": summary, "artifacts": artifacts}


# ---------------------------------------------------------------------------------------------
# One shared offline run (W&B init costs about a second)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    run_dir = root / "RUN"
    run_dir.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        isolate_wandb(mp, root / "home", mode=None)
        mp.setenv("WANDB_API_KEY", FAKE_KEY)
        mp.setenv("PETS_TEST_TOKEN", "hunter2-hunter2")
        Image.new("RGB", (16, 16), (200, 30, 30)).save(run_dir / "roc.png")
        (run_dir / "model.safetensors").write_bytes(b"stand-in weights")
        config = {
            "optimizer": {"lr": 0.001, "api_key": FAKE_KEY},
            "output": {"dir": "runs", "note": f"login with {FAKE_KEY}"},
            "data": {"shards": "shards", "image_size": 224},
        }
        echo = Echo()
        tracker = Tracker(
            tracking_cfg("offline"), RunDir(run_dir), config, is_main=True, run_name="unit-test", echo=echo
        )
        assert tracker.active and tracker.mode == "offline", echo

        for step in range(1, 6):
            tracker.log({"train/loss": 1.0 / step, "train/lr": np.float32(0.001)}, step=step)
        tracker.log({"epoch/val_acc": 0.75}, step=5)
        tracker.log({"train/loss": 9.0}, step=3)  # backwards: dropped with one warning
        tracker.log({"train/loss": 9.0}, step=2)
        labels = np.array([0, 0, 1, 1, 1, 0, 1, 1])
        tracker.log_curves(
            labels, two_class_probs([0.1, 0.4, 0.8, 0.6, 0.3, 0.2, 0.9, 0.7]), CAT_DOG, "val", threshold=0.35
        )
        tracker.log_images({"plots/roc": run_dir / "roc.png"})
        tracker.log_images({"plots/missing": run_dir / "missing.png"})  # fails: one warning
        tracker.log_images({"plots/missing2": run_dir / "missing2.png"})  # fails again: counted only
        pictures = [Image.new("RGB", (8, 8), (0, 0, 255)), np.zeros((8, 8, 3), dtype=np.uint8)]
        tracker.log_predictions_table(
            [
                {"key": "cat_1", "label": 0, "prob_pred": 0.8, "pred": "cat"},
                {"key": "dog_1", "label": 1, "prob_pred": np.float64(0.9), "pred": "dog"},
            ],
            pictures,
        )
        tracker.log_dataset_summary({"train": 2944, "val": 736, "auth_token": FAKE_KEY})
        tracker.log_model(
            run_dir / "model.safetensors",
            {"arch": "resnet101", "num_classes": 2, "config": {"password": "hunter2-hunter2"}},
        )
        tracker.summary({"best/val_auc": 0.91, "best/epoch": 3})
        result = tracker.finish()
        again = tracker.finish()
    return SimpleNamespace(run_dir=run_dir, result=result, again=again, echo=echo, tracker=tracker)


def test_offline_run_lives_in_the_run_folder(offline_run):
    result = offline_run.result
    assert result["mode"] == "offline" and result["url"] is None
    folder = Path(result["run_dir"])
    assert folder.parent == (offline_run.run_dir / "wandb").resolve()
    assert folder.name.startswith("offline-run-") and list(folder.glob("run-*.wandb"))
    assert result["sync_command"] == f"wandb sync {folder}"
    assert offline_run.again == result  # finish is idempotent


def test_offline_run_records_config_metrics_and_artifacts(offline_run):
    contents = offline_run_contents(Path(offline_run.result["run_dir"]))
    config, history, summary = contents["config"], contents["history"], contents["summary"]
    assert config["optimizer"] == {"lr": 0.001, "api_key": REDACTED}
    assert config["output"]["note"] == f"login with {REDACTED}"
    assert config["data"] == {"shards": "shards", "image_size": 224}
    assert config["dataset"] == {"train": 2944, "val": 736, "auth_token": REDACTED}
    assert [history[s]["train/loss"] for s in range(1, 6)] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert history[5]["epoch/val_acc"] == 0.75 and history[5]["train/lr"] == pytest.approx(0.001)
    assert all(row.get("train/loss") != 9.0 for row in history.values())
    for chart in ("val/roc_curve", "val/pr_curve", "val/confusion_matrix"):
        assert f"_wandb/visualize/{chart}" in config, f"{chart} chart missing"
    assert summary["best/val_auc"] == 0.91 and summary["best/epoch"] == 3
    models = [a for a in contents["artifacts"] if a["type"] == "model"]
    assert len(models) == 1
    assert models[0]["metadata"] == {"arch": "resnet101", "num_classes": 2, "config": {"password": REDACTED}}
    tables = [a["name"] for a in contents["artifacts"] if a["type"] == "run_table"]
    assert any("predictions" in name for name in tables) and any("roc_curve" in name for name in tables)
    media = Path(offline_run.result["run_dir"]) / "files" / "media"
    assert list(media.glob("images/plots/roc_*.png"))
    roc_table = json.loads(next(media.glob("table/val/roc_curve_table_*.table.json")).read_text())
    assert roc_table["columns"] == ["class", "fpr", "tpr"]
    assert {row[0] for row in roc_table["data"]} == {"dog"}  # two classes: one curve, the positive class's
    assert roc_table["data"][0][1:] == [0.0, 0.0] and roc_table["data"][-1][1:] == [1.0, 1.0]
    matrix = json.loads(next(media.glob("table/val/confusion_matrix_table_*.table.json")).read_text())
    assert {(a, p): n for a, p, n in matrix["data"]} == {  # dog when P(dog) >= 0.35
        ("cat", "cat"): 2,
        ("cat", "dog"): 1,
        ("dog", "cat"): 1,
        ("dog", "dog"): 4,
    }


def test_planted_api_key_is_in_no_file_of_the_run_folder(offline_run):
    files = [p for p in offline_run.run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for secret in (FAKE_KEY, "hunter2-hunter2"):
        leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, f"secret found in {leaks}"


def test_failed_and_dropped_log_calls_warn_once_each_and_are_counted(offline_run):
    warnings = offline_run.echo.warnings
    assert len([w for w in warnings if "log_images failed" in w]) == 1
    assert len([w for w in warnings if "step 3 after step 5" in w]) == 1
    assert offline_run.result["failed_calls"] == 4  # two images, two backwards steps
    assert len([w for w in warnings if "4 W&B logging call(s) failed" in w]) == 1
    assert len(warnings) == 3, warnings


# ---------------------------------------------------------------------------------------------
# Disabled, not installed, unreachable


def all_calls(tracker: Tracker, run_dir: Path) -> dict:
    tracker.log({"loss": 1.0}, step=1)
    tracker.log_images({"x": run_dir / "x.png"})
    tracker.log_curves([0, 1], two_class_probs([0.2, 0.8]), CAT_DOG, "val")
    tracker.log_predictions_table([{"key": "a"}], None)
    tracker.log_dataset_summary({"train": 1})
    tracker.log_model(run_dir / "model.safetensors", {})
    tracker.summary({"a": 1})
    return tracker.finish()


NOTHING = {"mode": "disabled", "run_dir": None, "sync_command": None, "url": None, "failed_calls": 0}


@pytest.mark.parametrize("mode, is_main", [("disabled", True), ("offline", False), ("online", False)])
def test_disabled_or_non_main_does_nothing_and_never_imports_wandb(tmp_path, monkeypatch, capsys, mode, is_main):
    isolate_wandb(monkeypatch, tmp_path / "home", mode=None)
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would now raise ImportError
    tracker = Tracker(tracking_cfg(mode), RunDir(tmp_path), {"a": 1}, is_main=is_main, run_name="x")
    assert not tracker.active
    assert all_calls(tracker, tmp_path) == NOTHING
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "wandb").exists()


@pytest.mark.parametrize("mode", ["auto", "offline", "online"])
def test_wandb_not_installed_gives_exactly_one_warning(tmp_path, monkeypatch, capsys, mode):
    isolate_wandb(monkeypatch, tmp_path / "home", mode=None)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setitem(sys.modules, "wandb", None)
    tracker = Tracker(tracking_cfg(mode), RunDir(tmp_path), {"a": 1}, is_main=True, run_name="x")
    assert all_calls(tracker, tmp_path) == NOTHING
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: W&B is not installed"), lines


def test_bad_mode_warns_once_and_disables(tmp_path, capsys):
    tracker = Tracker(tracking_cfg("sometimes"), RunDir(tmp_path), {}, is_main=True, run_name="x")
    assert all_calls(tracker, tmp_path) == NOTHING
    assert len(capsys.readouterr().err.splitlines()) == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_falls_back_to_offline_with_one_warning(tmp_path, monkeypatch):
    isolate_wandb(monkeypatch, tmp_path / "home", mode=None)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    echo = Echo()
    tracker = Tracker(
        tracking_cfg("auto"), RunDir(tmp_path), {"a": 1}, is_main=True, run_name="x", echo=echo, init_timeout=2.0
    )
    tracker.log({"loss": 0.5}, step=1)
    result = tracker.finish()
    assert result["mode"] == "offline" and result["sync_command"].startswith("wandb sync ")
    assert len(echo) == 1 and "online init failed" in echo[0] and "offline" in echo[0], echo
    assert FAKE_KEY not in echo[0]
    written = [p for p in (tmp_path / "wandb").rglob("*") if p.is_file()]
    assert written and not [str(p) for p in written if FAKE_KEY.encode() in p.read_bytes()]


def test_online_without_api_key_goes_offline_without_prompting(tmp_path, monkeypatch):
    isolate_wandb(monkeypatch, tmp_path / "home", mode=None)
    echo = Echo()
    tracker = Tracker(tracking_cfg("online"), RunDir(tmp_path), {}, is_main=True, run_name="x", echo=echo)
    result = tracker.finish()
    assert result["mode"] == "offline"
    assert len(echo) == 1 and "no API key" in echo[0]


# ---------------------------------------------------------------------------------------------
# Mode resolution


def test_auto_mode_follows_the_configured_credentials(tmp_path, monkeypatch):
    isolate_wandb(monkeypatch, tmp_path, mode=None)
    assert not has_api_key() and resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("online") == "online"  # an explicit setting wins over WANDB_MODE
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_MODE")
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert resolve_mode("auto") == "offline"  # the netrc entry is for another host
    with pytest.raises(ValueError, match="one of auto, online, offline, disabled"):
        resolve_mode("sometimes")


# ---------------------------------------------------------------------------------------------
# Resuming


def test_a_resumed_run_continues_its_w_and_b_run(tmp_path, monkeypatch):
    isolate_wandb(monkeypatch, tmp_path / "home", mode=None)
    run_dir = tmp_path / "RUN"
    run_dir.mkdir()

    def start(resume: bool) -> tuple[str, dict]:
        echo = Echo()
        tracker = Tracker(
            tracking_cfg("offline"), RunDir(run_dir), {}, is_main=True, run_name="resume-test", resume=resume, echo=echo
        )
        assert tracker.active, echo
        run_id = tracker._run.id
        return run_id, tracker.finish()

    first, _ = start(resume=False)
    assert (run_dir / "wandb" / "run_id.txt").read_text() == first
    resumed, result = start(resume=True)
    assert resumed == first and result["mode"] == "offline"
    fresh, _ = start(resume=False)  # a new run in the same folder (train.resume unset) starts a new W&B run
    assert fresh != first
    (run_dir / "wandb" / "run_id.txt").write_text("../../etc x")  # garbage is ignored, not passed to W&B
    assert start(resume=True)[0] not in (first, fresh)
