"""Export to timm: the folder loads with timm alone, gives our logits exactly, and carries classes and preprocessing.

The network is blocked in every test; the Hub upload is checked offline, without a token, with a
failing connection, and (with HfApi's two calls replaced) on success.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import timm
import torch
from conftest import SHARED_MINI
from PIL import Image
from safetensors.torch import load_file

from helpers import file_hashes, run_in_process, save_tiny_model
from toolkit.cli import run_cli
from toolkit.config import DataConfig
from toolkit.export import EXPORT_FILES, EXPORT_MARKER, main, timm_crop_pct
from toolkit.formats.model_file import model_metadata, save_model_file
from toolkit.models import architecture, create_model

MINI_IMAGES = SHARED_MINI / "images"
MEAN, STD = [0.48, 0.44, 0.40], [0.26, 0.25, 0.26]
CLASSES = ["cat", "dog"]

pytestmark = pytest.mark.usefixtures("no_network")  # tests never touch the network
IMAGE_SIZE, RESIZE_SIZE = 64, 93  # 64 / (64 / 93) floors to 92 in floats: the crop_pct must still give 93


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random norm affines, running statistics and head, so every branch and buffer shows in the logits."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        model.fc.weight.normal_(0, 0.05)
        model.fc.bias.normal_(0, 0.05)
    return model.eval()


def write_model(
    path: Path, blocks_per_stage=None, base_width: int = 64, seed: int = 0
) -> tuple[torch.nn.Module, DataConfig]:
    """A resnet18-family model file written through the checkpoint API, as training writes it."""
    data_cfg = DataConfig(image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE, mean=MEAN, std=STD)
    model = perturb(
        create_model("resnet18", num_classes=2, blocks_per_stage=blocks_per_stage, base_width=base_width), seed
    )
    save_model_file(
        model,
        path,
        model_metadata(
            architecture(model),
            class_names=CLASSES,
            image_size=IMAGE_SIZE,
            resize_size=RESIZE_SIZE,
            mean=MEAN,
            std=STD,
            extra={"epoch": 3, "val_metrics": {"acc": 0.9}},
        ),
    )
    return model, data_cfg


def run_export(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def error_line(stderr: str) -> str:
    """The one ``error: ...`` line of a failed command; no traceback around it."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def sample_images(count: int = 4) -> list[Image.Image]:
    """Real pet photos when the shared mini dataset is there, otherwise random pictures of odd sizes."""
    files = sorted(MINI_IMAGES.glob("*.jpg"))[:count] if MINI_IMAGES.is_dir() else []
    if files:
        images = []
        for path in files:
            with Image.open(path) as picture:
                images.append(picture.convert("RGB"))
        return images
    generator = torch.Generator().manual_seed(0)
    return [
        Image.fromarray(
            torch.randint(0, 256, (90 + 7 * i, 120 - 5 * i, 3), generator=generator, dtype=torch.uint8).numpy()
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module", params=[None, [1, 1, 1, 1]], ids=["resnet18", "resnet18-layers-1111"])
def exported(request, tmp_path_factory) -> SimpleNamespace:
    """A run folder with a model file, exported with the CLI; one standard resnet18, one needing model_args."""
    root = tmp_path_factory.mktemp("export")
    run = root / "run"
    model, data_cfg = write_model(run / "model.safetensors", blocks_per_stage=request.param)
    out = root / "exported"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--run", str(run), "--out", str(out)])
    assert exit_info.value.code == 0
    return SimpleNamespace(
        model=model,
        data_cfg=data_cfg,
        out=out,
        layers=request.param,
        config=json.loads((out / "config.json").read_text()),
    )


def test_timm_alone_gives_our_logits_exactly(exported):
    reference = timm.create_model(f"local-dir:{exported.out}", pretrained=True).eval()
    data_config = timm.data.resolve_data_config({}, model=reference)
    assert tuple(data_config["input_size"]) == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert list(data_config["mean"]) == MEAN and list(data_config["std"]) == STD
    transform = timm.data.create_transform(**data_config)
    batch = torch.stack([transform(image) for image in sample_images()])
    assert batch.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        theirs, ours = reference(batch), exported.model(batch)
    assert torch.equal(theirs, ours), (theirs - ours).abs().max()
    assert reference.num_classes == 2 and reference.pretrained_cfg["label_names"] == CLASSES


def test_timm_preprocessing_is_our_eval_transform(exported):
    """Resize to resize_size, crop image_size, normalize: timm's transform from config.json matches ours."""
    from toolkit.data import build_eval_transform

    reference = timm.create_model(f"local-dir:{exported.out}", pretrained=True)
    theirs = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference))
    ours = build_eval_transform(exported.data_cfg)
    for image in sample_images():
        assert torch.allclose(theirs(image), ours(image), atol=1e-6, rtol=0)


def test_config_and_files(exported):
    config = exported.config
    assert config["architecture"] == "resnet18"
    assert config["num_classes"] == 2 and config["label_names"] == CLASSES
    assert config["pretrained_cfg"]["mean"] == MEAN and config["pretrained_cfg"]["std"] == STD
    assert config["pretrained_cfg"]["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert config.get("model_args") == ({"layers": exported.layers} if exported.layers else None)
    assert sorted(p.name for p in exported.out.iterdir()) == sorted([*EXPORT_FILES, EXPORT_MARKER])
    weights = load_file(str(exported.out / "model.safetensors"))
    assert weights.keys() == exported.model.state_dict().keys()
    card = (exported.out / "README.md").read_text()
    assert "library_name: timm" in card and f'timm.create_model("local-dir:{exported.out}", pretrained=True)' in card
    assert "cat, dog" in card


@pytest.mark.parametrize("image_size", [8, 17, 32, 64, 224, 384, 518])
def test_crop_pct_gives_the_resize_size_exactly(image_size):
    for resize_size in range(image_size, 2 * image_size + 1):
        assert math.floor(image_size / timm_crop_pct(image_size, resize_size)) == resize_size


def test_push_to_hub_offline_is_one_line(tmp_path, capsys, monkeypatch):
    write_model(tmp_path / "m.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_export(
        ["--model", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "x"), "--push-to-hub", "someone/pets"],
        capsys,
    )
    assert code == 2
    assert "offline" in error_line(err) and "hf upload someone/pets" in err
    assert (tmp_path / "x" / "config.json").is_file()  # the local export is still there
    assert '"hf-hub:someone/pets"' in (tmp_path / "x" / "README.md").read_text()


def test_push_to_hub_without_token_or_network(tmp_path, capsys, monkeypatch):
    write_model(tmp_path / "m.safetensors")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    argv = ["--model", str(tmp_path / "m.safetensors"), "--push-to-hub", "someone/pets"]
    code, _, err = run_export([*argv, "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "no Hugging Face token" in error_line(err)

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    code, _, err = run_export([*argv, "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "upload failed (ConnectionError" in error_line(err)


def test_push_to_hub_uploads_only_the_export(tmp_path, capsys, monkeypatch):
    write_model(tmp_path / "m.safetensors")
    calls = {}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_not_a_real_token")
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_repo",
        lambda self, repo, **kw: calls.setdefault("create", SimpleNamespace(repo_id=repo, kw=kw)),
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", kw))
    code, out, err = run_export(
        [
            "--model",
            str(tmp_path / "m.safetensors"),
            "--out",
            str(tmp_path / "x"),
            "--push-to-hub",
            "someone/pets",
            "--private",
        ],
        capsys,
    )
    assert code == 0, err
    assert "https://huggingface.co/someone/pets" in out
    assert calls["create"].kw["private"] is True
    assert calls["upload"]["repo_id"] == "someone/pets" and calls["upload"]["folder_path"] == str(tmp_path / "x")
    assert sorted(calls["upload"]["allow_patterns"]) == sorted(EXPORT_FILES)


def test_shape_timm_cannot_build_is_refused(tmp_path, capsys):
    write_model(tmp_path / "tiny.safetensors", blocks_per_stage=[1, 1, 1, 1], base_width=8)
    code, _, err = run_export(["--model", str(tmp_path / "tiny.safetensors"), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "base_width 8" in error_line(err)
    assert not (tmp_path / "x").exists()


def test_out_folder_and_run_folder_checks(tmp_path, capsys):
    write_model(tmp_path / "run" / "model.safetensors")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    code, _, err = run_export(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "busy")], capsys)
    assert code == 2 and "not empty" in error_line(err)
    code, _, err = run_export(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "busy"), "--overwrite"], capsys)
    assert code == 2 and "not an earlier export (e.g. notes.txt)" in error_line(err)  # issue 33, item 11
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]  # nothing replaced, nothing added

    code, _, err = run_export(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "no such run folder" in error_line(err)
    (tmp_path / "empty-run").mkdir()
    code, _, err = run_export(["--run", str(tmp_path / "empty-run"), "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "has no model.safetensors" in error_line(err)
    code, _, err = run_export(["--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "--run" in error_line(err)


def test_help_lists_options_and_an_example(capsys):
    code, out, _ = run_export(["--help"], capsys)
    assert code == 0
    for option in ("--run", "--model", "--out", "--push-to-hub", "--overwrite"):
        assert option in out
    assert "example:" in out and "python -m toolkit.export --run" in out


@pytest.mark.parametrize("source", ["--run", "--model"])
def test_export_into_a_run_folder_is_refused(tmp_path: Path, capsys, source: str):
    """`export --out RUN --overwrite` would put a file without the toolkit's metadata in place of RUN's model."""
    from toolkit.export import main as export_main
    from toolkit.formats import RunDir

    run = RunDir(tmp_path / "runs" / "pets")
    save_tiny_model(run.model, "model.base_width=64")  # a width timm can build, so only the folder is wrong
    run.write_config({"model": {"arch": "resnet18"}})
    other = RunDir(tmp_path / "runs" / "other")  # a run that has only reached its first checkpoint
    (other.checkpoints / "step-00000008").mkdir(parents=True)
    before = file_hashes(tmp_path / "runs")
    given = str(run.root) if source == "--run" else str(run.model)
    for out in (run.root, other.root):
        code = run_in_process(export_main, [source, given, "--out", str(out), "--overwrite"])
        line = error_line(capsys.readouterr().err)
        assert code == 2 and "is a training run folder" in line and "exported/" in line, line
    assert file_hashes(tmp_path / "runs") == before
    model = tmp_path / "loose" / "model.safetensors"  # a model file outside a run: not into its own folder either
    save_tiny_model(model, "model.base_width=64")
    code = run_in_process(export_main, ["--model", str(model), "--out", str(model.parent), "--overwrite"])
    assert code == 2 and "is the folder of model.safetensors" in error_line(capsys.readouterr().err)
    assert run_in_process(export_main, [source, given, "--out", str(tmp_path / "exported")]) == 0  # elsewhere: fine
