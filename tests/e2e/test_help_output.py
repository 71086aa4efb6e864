"""Each command's --help, in a fresh interpreter, names it as python -m toolkit.NAME."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


@pytest.mark.parametrize("module", ["toolkit.train", "toolkit.visualize", "toolkit.export"])
def test_help_names_python_dash_m(module):
    usage = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    assert usage.startswith(f"usage: python -m {module} "), usage[:200]
