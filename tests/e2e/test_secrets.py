"""Security: nothing pickled from outside is executed, secrets stay out of every output, shard names are not paths."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from helpers import ENV, ROOT, error_line, pack_tiny, rewrite_shard, run_in_process, train_args, train_cli
from toolkit.training.checkpoint import list_checkpoints

FAKE_KEY = "f0e1d2c3b4a5968778695a4b3c2d1e0f12345678"  # 40 hex chars, the shape of a real W&B key


class Planted:
    """Unpickling this creates ``path``: proof that a pickle from outside ran code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def plant_pickle(target: Path, marker: Path) -> None:
    target.write_bytes(pickle.dumps({"state": Planted(marker)}, protocol=2))


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def ema_run(tiny_shards, tmp_path_factory) -> Path:
    """A finished 1-epoch run with EMA weights; copy before changing."""
    out = tmp_path_factory.mktemp("ema")
    assert (
        train_cli(train_args(tiny_shards, out, "run", "train.epochs=1", "eval.test_split=null", "train.ema_decay=0.9"))
        == 0
    )
    return out / "run"


# ---------------------------------------------------------------------------------------------
# Pickles


@pytest.mark.parametrize("tool", ["evaluate", "predict"])
def test_a_pickled_model_file_is_refused_without_being_unpickled(tiny_shards, tmp_path, capsys, tool):
    from toolkit.evaluation.evaluate import main as evaluate_main
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


@pytest.mark.slow
def test_resume_reads_only_safetensors_json_and_weights_only_pickles(ema_run, tiny_shards, tmp_path, monkeypatch):
    (ckpt,) = list_checkpoints(ema_run / "checkpoints")
    # accelerate.save_state(safe_serialization=True) + ours; nothing that accelerate would load with
    # weights_only=False (custom_checkpoint_*.pkl) and no pickled model (pytorch_model.bin)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "best_model.safetensors",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "trainer_state.json",
    ]
    shutil.copytree(ema_run, tmp_path / "run")
    loads, real_load = [], torch.load

    def spy(f, *args, **kwargs):
        loads.append((Path(f).name, kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert (
        train_cli(
            train_args(tiny_shards, tmp_path, "run", "train.resume=auto", "eval.test_split=null", "train.ema_decay=0.9")
        )
        == 0
    )
    resume_loads = [entry for entry in loads if entry[0] in ("optimizer.bin", "random_states_0.pkl")]
    assert sorted(resume_loads) == [("optimizer.bin", True), ("random_states_0.pkl", True)]
    assert all(weights_only is True for _, weights_only in loads), loads


def test_resuming_reads_pickles_as_tensors_only_even_when_a_library_asks_for_more(tmp_path):
    """An Accelerate version that loads with weights_only=False still cannot run a planted pickle."""
    from toolkit.training.state import weights_only_loads

    marker = tmp_path / "pwned"
    plant_pickle(tmp_path / "optimizer.bin", marker)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "optimizer.bin", weights_only=False)
    assert not marker.exists()
    assert torch.load.__module__.startswith("torch")  # the real one is back afterwards


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl"])
def test_a_planted_pickle_in_a_checkpoint_never_runs(ema_run, tiny_shards, tmp_path, capsys, victim):
    shutil.copytree(ema_run, tmp_path / "run")
    (ckpt,) = list_checkpoints(tmp_path / "run" / "checkpoints")
    marker = tmp_path / "pwned"
    plant_pickle(ckpt / victim, marker)
    code = train_cli(
        train_args(tiny_shards, tmp_path, "run", "train.resume=auto", "eval.test_split=null", "train.ema_decay=0.9")
    )
    assert not marker.exists()
    if victim == "optimizer.bin":  # needed to resume: refused in one line
        assert code == 2
        line = error_line(capsys.readouterr().err)
        assert "cannot resume from" in line and ckpt.name in line and "refused unread" in line
    else:  # Accelerate skips RNG states it cannot load; our batches are seeded per (seed, epoch, rank, batch)
        assert code == 0


# ---------------------------------------------------------------------------------------------
# Secrets


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_planted_wandb_key_appears_in_no_output(synthetic_shards, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in ENV.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(
        HOME=str(home),
        WANDB_API_KEY=FAKE_KEY,
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_SILENT="true",
        WANDB_ERROR_REPORTING="false",
        PETS_TEST_TOKEN=FAKE_KEY[::-1],
    )
    argv = train_args(synthetic_shards, tmp_path / "runs", "secret", "train.epochs=1", "tracking.wandb=offline")
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.train", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "secret"
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "metrics.jsonl", "report.html", "model.safetensors", "last.safetensors"} <= names
    assert any(p.suffix == ".wandb" for p in files), "the offline W&B run was not written"
    for secret in (FAKE_KEY, FAKE_KEY[::-1]):
        assert secret not in proc.stdout + proc.stderr
        leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, f"secret found in {leaks}"


# ---------------------------------------------------------------------------------------------
# Shard member names


EVIL_NAMES = ["../../evil-up", "/{abs}/evil-abs", "nested/../../../evil-nested"]


@pytest.mark.slow
def test_shard_member_names_are_never_used_as_paths(tiny_shards, tmp_path, monkeypatch, capsys):
    from toolkit import data

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    outside = tmp_path / "outside"  # an absolute path the names point into
    names = [n.format(abs=str(outside).lstrip("/")) for n in EVIL_NAMES]
    renamed: dict[str, list[str]] = {}  # shard -> its new keys

    for shard in ("test-000002.tar", "val-000001.tar", "train-000000.tar"):
        new_keys: dict[str, str] = {}

        def rename(name: str, payload: bytes, new_keys: dict = new_keys, shard: str = shard):
            key, ext = name.split(".", 1)
            new_key = new_keys.setdefault(key, f"{names[len(new_keys) % len(names)]}-{shard[:-4]}-{len(new_keys)}")
            return [(f"{new_key}.{ext}", payload)]

        rewrite_shard(shards / shard, rename)
        renamed[shard] = list(new_keys.values())
    with tarfile.open(shards / "test-000002.tar", "a") as tar:  # and a symlink member pointing outside
        link = tarfile.TarInfo("../../evil-link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    workdir = tmp_path / "a" / "b" / "c"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    before = {p for p in tmp_path.rglob("*")}

    info = data.load_info(str(shards))
    keys = {s["__key__"] for split in ("train", "val", "test") for s in data.raw_samples(str(shards), split, info)}
    assert {k for shard_keys in renamed.values() for k in shard_keys} <= keys  # plain strings, nothing more
    # training, evaluation, predictions.csv, the prediction grid and Grad-CAM all handle these keys
    assert train_cli(train_args(shards, tmp_path / "runs", "members", "train.epochs=1", "eval.plots=true")) == 0
    capsys.readouterr()
    predictions = (tmp_path / "runs" / "members" / "eval" / "test" / "predictions.csv").read_text().splitlines()
    assert set(renamed["test-000002.tar"]) <= {line.split(",")[0] for line in predictions}

    created = {p for p in tmp_path.rglob("*")} - before
    allowed = (tmp_path / "runs",)
    stray = [str(p) for p in created if not any(p == a or a in p.parents for a in allowed)]
    assert not stray, f"written outside the output folders: {stray}"
    assert not outside.exists()
    assert not [str(p) for p in created if "evil" in p.name]


@pytest.mark.slow
def test_secrets_in_a_config_value_and_inside_data_shards_appear_in_no_output(synthetic_source, tmp_path):
    """The key in a config value, and a bearer token inside a pipe: command in data.shards."""
    from toolkit.data.shards import pack_dataset

    folder = tmp_path / "one-shard-per-split"  # so one brace pattern names every split's shards
    pack_dataset(synthetic_source, folder, resize_shorter=48, shard_size=1000, workers=1, show_progress=False)
    home = tmp_path / "home"
    env = {k: v for k, v in ENV.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(
        HOME=str(home),
        WANDB_API_KEY=FAKE_KEY,
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_SILENT="true",
        WANDB_ERROR_REPORTING="false",
    )
    bearer = "b3arer-T0ken-0f-the-shard-server"
    shards = f'pipe:cat {folder}/{{split}}-{{000000..000000}}.tar # -H "Authorization: Bearer {bearer}"'
    argv = train_args(
        folder,
        tmp_path / "runs",
        "secret",
        "train.epochs=1",
        "tracking.wandb=offline",
        f"tracking.tags=[{FAKE_KEY}]",
        f"data.shards='{shards}'",
    )  # quoted: YAML keeps the '#'
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.train", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in (tmp_path / "runs" / "secret").rglob("*") if p.is_file()]
    assert {"config.yaml", "dataset.json", "report.html"} <= {p.name for p in files}
    for secret in (FAKE_KEY, bearer):
        assert secret not in proc.stdout + proc.stderr
        leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, f"secret found in {leaks}"
    assert "Authorization: ***" in (tmp_path / "runs" / "secret" / "dataset.json").read_text()
