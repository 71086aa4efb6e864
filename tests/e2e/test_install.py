"""A non-editable install works like a library: build the wheel, install it into a fresh virtual
environment and run the console scripts from an empty folder, far from the source tree.

The heavy dependencies (torch, ...) are not reinstalled: the fresh environment sees this one's
site-packages through a .pth file, after its own, so ``toolkit`` comes from the installed wheel.
The floors of those dependencies are tested by .ci/floors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

TOP_LEVEL_SKIP = {".git", "runs", "data", "build", "wandb", "exported", "gpu-check", "shards", ".pytest_cache"}


def skip(folder: str, names: list[str]) -> set[str]:
    """What the source copy leaves out: top-level outputs and environments, caches anywhere."""
    top = Path(folder) == ROOT
    return {
        name
        for name in names
        if name == "__pycache__"
        or name.endswith(".egg-info")
        or (top and (name in TOP_LEVEL_SKIP or name.startswith(".venv")))
    }


def run(argv: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """(the fresh venv's bin folder, an environment that uses it, the wheel)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a clean copy: no build/ left over from an earlier build can leak into the wheel
    shutil.copytree(ROOT, source, symlinks=True, ignore=skip)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            tmp / "wheels",
            source,
        ],
        tmp,
        env,
    )
    wheel = next((tmp / "wheels").glob("pets_toolkit-*.whl"))
    run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"], tmp, env)
    python = tmp / "venv" / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).stdout.strip()
    (Path(purelib) / "shared_heavy_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
        tmp,
        env,
    )
    env = {
        **env,
        "PATH": f"{tmp / 'venv' / 'bin'}{os.pathsep}{env['PATH']}",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    return tmp / "venv" / "bin", env, wheel


def test_the_wheel_ships_the_configs_and_the_license(installed):
    _, _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(name).name for name in names if name.startswith("toolkit/configs/")}
    assert shipped == {path.name for path in (ROOT / "configs").glob("*.yaml")}
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


@pytest.mark.timeout(900)
def test_pets_quickstart_runs_from_an_empty_folder(installed, tmp_path):
    bin_dir, env, _ = installed
    where = run([bin_dir / "python", "-c", "import toolkit; print(toolkit.__file__)"], tmp_path, env).stdout
    assert str(bin_dir.parent) in where and str(ROOT) not in where, where  # the wheel's toolkit, not the checkout's
    proc = run(
        [
            bin_dir / "pets-quickstart",
            "--synthetic-images",
            "120",
            "train.epochs=1",
            "scheduler.warmup_epochs=0",
            "data.image_size=32",
            "data.resize_size=36",
            "eval.num_images=2",
        ],
        tmp_path,
        env,
    )
    assert "SYNTHETIC" in proc.stdout and "model:" in proc.stdout
    assert (tmp_path / "runs" / "quickstart" / "report.html").is_file()
    assert (tmp_path / "runs" / "quickstart" / "eval" / "test" / "metrics.json").is_file()
    # the exported model: the first command's model goes through export too
    run([bin_dir / "pets-export", "--run", "runs/quickstart", "--out", "exported"], tmp_path, env)
    # the other commands that read shipped configs
    config = run([bin_dir / "pets-train", "--print-config"], tmp_path, env).stdout
    assert "data:" in config and "model:" in config
    run(
        [
            bin_dir / "python",
            "-c",
            "from toolkit.compare_recipes import DEFAULT_CONFIGS; "
            "assert all(path.is_file() for path in DEFAULT_CONFIGS), DEFAULT_CONFIGS",
        ],
        tmp_path,
        env,
    )
    usage = run([bin_dir / "pets-evaluate", "--help"], tmp_path, env).stdout
    assert usage.startswith("usage: pets-evaluate")
