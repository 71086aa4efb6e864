"""python -m toolkit.visualize in a fresh interpreter: a missing run folder is one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_visualize_cli_missing_run_folder_is_one_line_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "toolkit.visualize", "--run", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: run folder") and len(result.stderr.strip().splitlines()) == 1
