"""A timm model folder is checked before it is trusted (issue 33, item 10).

``config.json`` is compared with the weights' shapes (read from the safetensors header) on a
meta-device model before a real one is built; impossible preprocessing values are refused. evaluate
and predict say each in one line (exit 2).
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import timm

from helpers import error_line, run_in_process
from toolkit import evaluate, predict
from toolkit.errors import UsageError
from toolkit.models.sources import load_model

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("timm-checks") / "m"
    model = timm.create_model("resnet18", num_classes=3, pretrained_cfg_overlay=dict(crop_pct=0.875))
    timm.models.save_for_hf(model, str(out), safe_serialization=True)
    return out


def classes(n: int):
    """An edit of config.json asking for ``n`` classes (timm builds ``model_args`` over the top-level key)."""

    def edit(config: dict) -> None:
        config["num_classes"] = config["model_args"]["num_classes"] = n

    return edit


def edited(folder: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / "model.safetensors").symlink_to(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_a_config_asking_for_500000_classes_is_refused_before_anything_is_built(folder, tmp_path):
    bad = edited(folder, tmp_path, classes(500_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UsageError, match=r"fc.weight is \[3, 512\] in model.safetensors, \[500000, 512\] by config"):
        load_model(str(bad))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, f"peak memory grew {grown_mib:.0f} MiB: the 1 GiB head was built"


def test_a_nan_crop_pct_is_refused(folder, tmp_path):
    bad = edited(folder, tmp_path, lambda c: c["pretrained_cfg"].update(crop_pct=float("nan")))
    with pytest.raises(UsageError, match=r"crop_pct nan \(expected a number in \(0, 1\]\)"):
        load_model(str(bad))


def test_zero_std_is_refused(folder, tmp_path):
    bad = edited(folder, tmp_path, lambda c: c["pretrained_cfg"].update(std=[0.0, 0.2, 0.2]))
    with pytest.raises(UsageError, match="std > 0"):
        load_model(str(bad))


def test_evaluate_and_predict_say_a_mismatch_in_one_line(folder, tmp_path, capsys):
    bad = edited(folder, tmp_path, classes(7))
    code = run_in_process(predict.main, ["--model", str(bad), str(tmp_path / "x.jpg")])
    assert code == 2 and "config.json does not match the weights" in error_line(capsys.readouterr().err)
    code = run_in_process(evaluate.main, ["--model", str(bad), "--shards", str(tmp_path)])
    assert code == 2 and "config.json does not match the weights" in error_line(capsys.readouterr().err)
