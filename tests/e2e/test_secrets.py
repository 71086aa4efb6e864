"""Secrets stay out of every output of a real training run: a planted W&B key, a key in a config
value, and credentials of every form inside a pipe: shard command reach no file, console or W&B log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    ENV,
    ROOT,
    train_args,
)

FAKE_KEY = "f0e1d2c3b4a5968778695a4b3c2d1e0f12345678"  # 40 hex chars, the shape of a real W&B key


# ---------------------------------------------------------------------------------------------
# Secrets


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


def test_credentials_in_a_pipe_command_reach_no_file_of_the_run(synthetic_source: Path, tmp_path: Path):
    """One working pipe: command carrying a credential of every form: none in config.yaml, dataset.json,
    report.html, the console or W&B's offline run; each file shows the masked command."""
    from helpers import train_args
    from toolkit.data.shards import pack_dataset

    folder = tmp_path / "one-shard-per-split"
    pack_dataset(synthetic_source, folder, resize_shorter=48, shard_size=1000, workers=1, show_progress=False)
    secrets = [
        "S3cr3tAws",
        "S3cr3tTokenEnv",
        "S3cr3tBearer",
        "S3cr3tPass",
        "S3cr3tApiKey",
        "S3cr3tCookie",
        "S3cr3tWget",
        "S3cr3tWgetHdr",
        "S3cr3tUserinfo",
        "S3cr3tSig",
        "S3cr3tRefresh",
    ]
    command = (
        f"pipe:AWS_SECRET_ACCESS_KEY={secrets[0]} SHARD_TOKEN={secrets[1]} cat "
        f"{folder}/{{split}}-{{000000..000000}}.tar # curl --oauth2-bearer {secrets[2]} -u me:{secrets[3]} "
        f'-H "X-Api-Key: {secrets[4]}" --cookie "sid={secrets[5]}" https://u:{secrets[8]}@h/x?sig={secrets[9]} '
        f'wget --password={secrets[6]} --header="Authorization: Bearer {secrets[7]}" '
        f'gsutil -o "Credentials:gs_oauth2_refresh_token={secrets[10]}" aws --profile prod'
    )
    home = tmp_path / "home"
    env = {k: v for k, v in ENV.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(
        HOME=str(home),
        WANDB_MODE="offline",
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_SILENT="true",
        WANDB_ERROR_REPORTING="false",
    )
    argv = train_args(
        folder, tmp_path / "runs", "pipe", "train.epochs=1", "tracking.wandb=offline", f"data.shards='{command}'"
    )  # quoted: YAML keeps the '#'
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.train", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "pipe"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"config.yaml", "dataset.json", "report.html"} <= {p.name for p in files}
    assert any(p.suffix == ".wandb" for p in files)
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr, secret
        leaks = [str(p.relative_to(run)) for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, f"{secret} found in {leaks}"
    import html

    import yaml

    from toolkit.redaction import redact_text

    masked = redact_text(command, secrets=[])
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["shards"] == masked
    assert json.loads((run / "dataset.json").read_text())["shards"] == masked
    assert masked in html.unescape((run / "report.html").read_text())
    for kept in ("--oauth2-bearer ***", '-H "X-Api-Key: ***"', "AWS_SECRET_ACCESS_KEY=***", "--profile prod"):
        assert kept in masked, kept
