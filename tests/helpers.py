"""Helpers shared across the suite (unit and e2e): tiny shards and image folders, in-process CLI runs,
one-line error checks, shard surgery, tiny model files, planted pickles, W&B offline runs read back."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from toolkit.cli import run_cli
from toolkit.config import load_config, validate_config
from toolkit.data.oxford import SYNTHETIC_MARKER, make_synthetic_dataset, resolve_root
from toolkit.data.shards import pack_dataset
from toolkit.formats import read_manifest
from toolkit.formats.model_file import model_metadata, read_model_file, save_model_file
from toolkit.models import architecture
from toolkit.reporting.wandb_runs import read_wandb_records
from toolkit.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
CAT_DOG = ["cat", "dog"]  # the class names of two-class fixtures


def two_class_probs(prob) -> np.ndarray:
    """[N, 2] class probabilities from P(class 1), the shape every metric and plot takes."""
    prob = np.asarray(prob, dtype=np.float64)
    return np.stack([1.0 - prob, prob], axis=1)


# two gloo processes on this host, started by Accelerate's launcher (add --main_process_port and the program)
LAUNCH_2 = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
# subprocesses: CPU (gloo for 2 processes, also on a machine with one GPU), one thread each (2 cores,
# other tests running), no W&B, output as it happens
ENV = {
    **os.environ,
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "WANDB_MODE": "disabled",
    "PYTHONUNBUFFERED": "1",
}


def pack_tiny(root: Path, seed: int = 3) -> Path:
    """120 synthetic 32 px images: train 64 (4 shards of 16), val 17 (16 + 1), test 36 (16 + 16 + 4)."""
    source = make_synthetic_dataset(root / "source", 120, seed=seed, image_size=32)
    pack_dataset(source, root / "shards", resize_shorter=32, shard_size=16, workers=1, show_progress=False)
    return root / "shards"


def train_args(shards: Path, out_dir: Path, name: str, *overrides: str) -> list[str]:
    """A smoke-config command line: 2 epochs of 8 batches of 8 on the tiny shards, no plots, no W&B."""
    return [
        "--config",
        str(SMOKE),
        f"data.shards={shards}",
        f"output.dir={out_dir}",
        f"output.run_name={name}",
        "tracking.wandb=disabled",
        "eval.plots=false",
        "train.epochs=2",
        "train.batch_size=8",
        *overrides,
    ]


def run_in_process(main: Callable, argv: Sequence[str]) -> int:
    """``python -m toolkit.<tool> argv`` in this process; returns the exit code.

    Accelerate keeps process-wide state; it is reset around the call so runs do not leak into each other.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        run_cli(main, list(argv))
    except SystemExit as exit_:
        return exit_.code
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    raise AssertionError("run_cli returned without exiting")


def train_cli(argv: Sequence[str]) -> int:
    from toolkit.train import main

    return run_in_process(main, argv)


def error_line(stderr: str) -> str:
    """The one ``error: ...`` line of a failed command; no traceback around it."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rewrite_shard(path: Path, edit: Callable[[str, bytes], Optional[list[tuple[str, bytes]]]]) -> None:
    """Rewrite a tar member by member: ``edit(name, data)`` returns the members to write instead (None: keep)."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            replacement = edit(name, data)
            for new_name, new_data in [(name, data)] if replacement is None else replacement:
                info = tarfile.TarInfo(new_name)
                info.size = len(new_data)
                tar.addfile(info, io.BytesIO(new_data))
    path.write_bytes(buffer.getvalue())


def shard_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return list(dict.fromkeys(m.name.split(".")[0] for m in tar if m.isfile()))


def descendants(pid: int) -> list[int]:
    """Every living process started by ``pid``, however deep (read from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process it started: torchrun puts its workers in sessions of their own,
    and a hung worker still holding the pipes would otherwise keep ``communicate`` waiting."""
    for pid in [*descendants(proc.pid), proc.pid] if proc.returncode is None else []:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(argv: Sequence[str]) -> subprocess.Popen:
    """``argv`` started from the repository root with the suite's environment (``ENV``), its output piped."""
    return subprocess.Popen(list(argv), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """The process's (stdout, stderr); killed and failed after ``timeout`` s, so a hang cannot stall the suite."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        pytest.fail(f"no result after {timeout} s (hang?)\n{out[-2000:]}\n{err[-3000:]}")


def save_tiny_model(
    path: Path,
    *overrides: str,
    meta: Optional[dict] = None,
    class_names: Optional[Sequence[str]] = None,
    seed: Optional[int] = None,
) -> None:
    """A tiny model file as training writes it; ``meta`` changes what its metadata claims.

    ``class_names`` gives a head of that many classes (default: cat, dog, bird cut to
    ``model.num_classes``); ``seed`` fixes the initial weights.
    """
    from toolkit.training.loop import build_model

    if class_names is not None:
        overrides = (*overrides, f"model.num_classes={len(class_names)}")
    cfg = validate_config(load_config(SMOKE, list(overrides)))
    names = list(class_names) if class_names is not None else ["cat", "dog", "bird"][: cfg.model.num_classes]
    if seed is not None:
        torch.manual_seed(seed)
    model = build_model(cfg)
    metadata = model_metadata(
        architecture(model),
        class_names=names,
        image_size=cfg.data.image_size,
        resize_size=cfg.data.resize_size,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    save_model_file(model, path, metadata | (meta or {}))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 2000) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    with Image.open(path) as image:
        image.verify()


def assert_json_close(a, b, path: str = "") -> None:
    """Equal JSON values, floats to 1e-6 (a batch of another size may round differently on CPU)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_json_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_json_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-6), path
    else:
        assert a == b, path


def isolate_wandb(mp: pytest.MonkeyPatch, home: Path, mode: Optional[str] = "offline") -> None:
    """No key, W&B's caches and settings out of the real home folder; ``WANDB_MODE`` = mode (None: unset)."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NETRC", "WANDB_DISABLED"):
        mp.delenv(name, raising=False)
    mp.setenv("HOME", str(home))
    for name, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"), ("WANDB_CONFIG_DIR", "config")):
        mp.setenv(name, str(home / sub))
    if mode is not None:
        mp.setenv("WANDB_MODE", mode)
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_ERROR_REPORTING", "false")


def synthetic_info(root: Path) -> dict:
    """The record make_synthetic_dataset left in ``root`` (which files are odd, which unlisted)."""
    return json.loads((resolve_root(root) / SYNTHETIC_MARKER).read_text(encoding="utf-8"))


class Planted:
    """Unpickling this creates ``path``: proof that a pickle from outside ran code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def plant_pickle(target: Path, marker: Path) -> None:
    target.write_bytes(pickle.dumps({"state": Planted(marker)}, protocol=2))


# a tiny ResNet at 32 px, one loader process: a compare_recipes run of one epoch takes seconds
TINY = [
    "model.arch=resnet18",
    "model.blocks_per_stage=[1,1,1,1]",
    "model.base_width=8",
    "data.image_size=32",
    "data.resize_size=36",
    "data.num_workers=0",
    "train.batch_size=8",
    "eval.batch_size=32",
    "eval.plots=false",
    'train.mixed_precision="no"',
    "model.channels_last=false",
    "scheduler.warmup_epochs=0",  # a 1-epoch run cannot warm up for the strong recipe's 2 epochs
]


def write_images(folder: Path, count: int, size: int = 24, seed: int = 0) -> None:
    """``count`` small random JPEGs in ``folder`` (made if needed)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.jpg", quality=90)


def assert_nothing_half_written(run: Path, torn_metrics_tail: bool = False) -> None:
    """Every file that looks finished is complete; ``metrics.jsonl`` holds one JSON object per line."""
    from accelerate.utils import load as accelerate_load  # torch.load(weights_only=True) + numpy's RNG state

    for ckpt in list_checkpoints(run / "checkpoints"):
        assert load_file(ckpt / "model.safetensors"), ckpt
        assert accelerate_load(ckpt / "optimizer.bin")["state"] is not None, ckpt
        assert "torch_manual_seed" in accelerate_load(ckpt / "random_states_0.pkl"), ckpt
        assert json.loads((ckpt / "trainer_state.json").read_text())["trainer"]["global_step"] >= 0, ckpt
    for name in ("model.safetensors", "last.safetensors"):
        if (run / name).exists():
            read_model_file(run / name)
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        lines = metrics.read_text().splitlines()
        if torn_metrics_tail:
            with pytest.raises(json.JSONDecodeError):
                json.loads(lines.pop())
        assert all(isinstance(json.loads(line), dict) for line in lines), lines


def continue_run(run: Path, tiny_shards: Path, tmp_path: Path, *overrides: str) -> tuple[Path, list[str]]:
    """A copy of ``run`` and the command line that resumes it for a second epoch."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, train_args(tiny_shards, tmp_path, "run", "train.resume=auto", "eval.test_split=null", *overrides)


def finished_files(run: Path) -> dict[str, str]:
    """Hashes of what a resume relies on: checkpoints, model.safetensors and last.safetensors."""
    kept = ("checkpoints/", "model.safetensors", "last.safetensors")
    return {name: digest for name, digest in file_hashes(run).items() if name.startswith(kept)}


def run_module(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def offline_contents(run_dir: Path) -> SimpleNamespace:
    """Summary and chart config of the one offline W&B run under ``run_dir``, and its media folder."""
    (log_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    config, summary = {}, {}
    for record in read_wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in items:
            config["/".join(item.nested_key) if item.nested_key else item.key] = json.loads(item.value_json)
        if kind == "summary":
            for item in record.summary.update:
                summary["/".join(item.nested_key) if item.nested_key else item.key] = json.loads(item.value_json)
    return SimpleNamespace(config=config, summary=summary, media=log_file.parent / "files" / "media")


def picture(seed: int, size: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size + 8, 3), dtype=np.uint8))


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"img {i}.jpg").write_bytes(jpeg(seed + 100 * c + i))
    return root


def read_split(folder: Path, split: str) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for every sample of a split, in shard order, read with plain tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in read_manifest(folder)["splits"][split]["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return list(samples.items())


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
