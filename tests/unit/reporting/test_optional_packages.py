"""The optional extras: without the tensorboard or onnx packages, asking for them is one line that says what
to install (exit code 2), before a run folder or an export folder holds anything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import run_in_process, save_tiny_model
from toolkit.errors import UsageError
from toolkit.reporting.step_log import check_tensorboard


def test_tensorboard_without_the_package_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    check_tensorboard(False)  # not asked for: nothing to check
    with pytest.raises(
        UsageError, match=r'tracking.tensorboard=true needs the tensorboard package: pip install -e "\.\[tensorboard\]"'
    ):
        check_tensorboard(True)


def test_onnx_export_without_the_packages_is_one_line_naming_the_extra(monkeypatch, tmp_path: Path, capsys):
    from toolkit import export

    model = tmp_path / "model.safetensors"
    save_tiny_model(model)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    code = run_in_process(export.main, ["--model", str(model), "--out", str(tmp_path / "onnx"), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == 'error: --format onnx needs the onnx packages: pip install -e ".[onnx]"'
    assert not (tmp_path / "onnx").exists()
