"""The config's command-line face in a fresh interpreter: one error line and exit code 2 from python -m
toolkit.train, and the error path imports no torch."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_train_cli_reports_config_errors_in_one_line_with_exit_code_2():
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.train", "--config", str(ROOT / "configs/smoke.yaml"), "optimizer.lrr=1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown config key optimizer.lrr; did you mean optimizer.lr?"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.train",
            "--config",
            str(ROOT / "configs/smoke.yaml"),
            "--print-config",
            "train.epochs=9",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0 and "epochs: 9" in proc.stdout


def test_errors_and_cli_import_without_torch():
    """Config, formats and models reach the one-line errors without pulling torch in through them."""
    code = "import sys, toolkit.cli, toolkit.errors; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
