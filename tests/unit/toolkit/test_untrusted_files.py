"""Inputs that validate_config but would crash or mislead later are refused up front, in one line (issue: trust)."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers import error_line, run_in_process, save_tiny_model, train_args, train_cli
from toolkit.config import load_config, validate_config
from toolkit.data.shards import pack_dataset
from toolkit.errors import UsageError
from toolkit.formats import RunDir
from toolkit.make_shards import main as make_shards_main


def test_a_val_fraction_of_zero_is_refused_when_packing(synthetic_source, tmp_path, capsys):
    code = run_in_process(
        make_shards_main,
        ["--source", str(synthetic_source), "--out", str(tmp_path / "s"), "--val-fraction", "0", "--workers", "1"],
    )
    assert code == 2 and "val needs images of both classes" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_training_refuses_a_val_split_that_cannot_choose_the_best_epoch(synthetic_source, tmp_path, capsys):
    shards = tmp_path / "one-class-val"  # the seed's plain random split of a tiny set: one val image, one class
    info = pack_dataset(
        synthetic_source,
        shards,
        val_fraction=0.02,
        split_mode="seed",
        resize_shorter=48,
        workers=1,
        show_progress=False,
    )
    assert sum(n > 0 for n in info["splits"]["val"]["class_counts"].values()) == 1
    assert train_cli(train_args(shards, tmp_path / "runs", "x", "train.epochs=1")) == 2
    line = error_line(capsys.readouterr().err)
    assert "needs images of at least two classes" in line and "--val-fraction" in line
    assert not (tmp_path / "runs").exists()  # refused before any folder is made


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.seed=18446744073709551616", "train.seed"),  # 2**64: torch.manual_seed would raise later
        ("train.seed=-1", "train.seed"),
        ("data.image_size=100000", "data.image_size"),
        ("data.resize_size=100000", "data.resize_size"),
    ],
)
def test_config_values_that_would_crash_later_are_refused(override, words):
    with pytest.raises(UsageError, match=words):
        validate_config(load_config(None, [override]))


@pytest.mark.parametrize(
    "claim", [{"num_classes": 10**9}, {"base_width": 10**6}, {"blocks_per_stage": [10**5, 1, 1, 1]}]
)
def test_model_file_metadata_cannot_ask_for_a_huge_allocation(tmp_path, capsys, monkeypatch, claim):
    import toolkit.formats.model_file as model_file
    from toolkit.predict import main as predict_main

    model = tmp_path / "model.safetensors"
    save_tiny_model(model, meta=claim)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(image)
    built = []
    monkeypatch.setattr(model_file, "create_model", lambda *a, **k: built.append(k) or pytest.fail(f"built {k}"))
    code = run_in_process(predict_main, ["--model", str(model), str(image)])
    assert code == 2 and "metadata claims" in error_line(capsys.readouterr().err)
    assert built == []  # refused before any model of the claimed size was built


# ---------------------------------------------------------------------------------------------
# Files a user receives cannot act


def test_a_run_folder_s_pipe_command_is_never_run_by_visualize(tmp_path, capsys):
    from helpers import save_tiny_model
    from toolkit.reporting.visualize import make_plots

    run = tmp_path / "received-run"
    run.mkdir()
    marker = tmp_path / "ran"
    (run / "config.yaml").write_text(f"data:\n  shards: 'pipe:touch {marker}; cat x-{{000000..000001}}.tar'\n")
    save_tiny_model(run / "model.safetensors")
    (run / "eval" / "test").mkdir(parents=True)
    (run / "eval" / "test" / "predictions.csv").write_text("key,label,prob_dog,pred,breed\na,0,0.2,0,\nb,1,0.9,1,\n")
    make_plots(run, what={"grid"}, split="test")
    assert not marker.exists()
    assert "is a pipe: command, which is never run from a run folder" in capsys.readouterr().err


def test_a_shard_name_in_info_json_cannot_point_outside_the_folder(synthetic_shards, tmp_path):
    import json
    import shutil

    from toolkit.data import load_info

    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    info = json.loads((shards / "info.json").read_text())
    info["splits"]["train"]["shards"][0]["name"] = "../../etc/passwd"
    (shards / "info.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="not a plain file name"):
        load_info(str(shards))


def test_images_in_formats_that_run_programs_are_not_opened(tmp_path, capsys, monkeypatch):
    from PIL import EpsImagePlugin

    from toolkit.predict import main as predict_main

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1))
    eps = tmp_path / "photo.jpg"  # an EPS file under a photo's name: Pillow would hand it to Ghostscript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    model = tmp_path / "model.safetensors"
    save_tiny_model(model)
    assert run_in_process(predict_main, ["--model", str(model), str(eps)]) == 1
    assert opened == [] and "not an image format" in capsys.readouterr().out


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_oversized_members_and_non_utf8_names_are_skipped_and_counted(tmp_path, monkeypatch):
    from toolkit.data import reading

    monkeypatch.setattr(reading, "MAX_MEMBER_BYTES", 1000)
    monkeypatch.setattr(reading, "_warnings_given", 0)
    good = [("ok.cls", b"1"), ("ok.jpg", b"x" * 10)]
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(
        _tar(
            [("big.cls", b"0"), ("big.jpg", b"x" * 5000), *good, ("bad\udcff.cls", b"0"), ("bad\udcff.jpg", b"y" * 10)]
        )
    )
    skips = reading.Skips(strict=False)
    kept = list(reading.usable(reading.read_shards([(str(shard), 3)], skips), skips, num_classes=2))
    assert [sample["__key__"] for sample in kept] == ["ok"] and skips.count == 2
    for sample in kept:  # what is kept can be written anywhere (predictions.csv) as UTF-8
        sample["__key__"].encode("utf-8")


# ---------------------------------------------------------------------------------------------
# A really full disk: the real writers (safetensors, torch.save inside Accelerate), not a faked fsync


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs the test can fill and then grow ("free space"); skipped where mounting is not allowed."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()

    def resize(size: str, *, first: bool = False) -> None:
        options = f"size={size}" if first else f"remount,size={size}"
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {proc.stderr.strip()}")

    resize("64k", first=True)
    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("size, writer", [("800k", "safetensors"), ("1200k", "torch.save")])
def test_a_full_disk_is_one_resumable_line_from_every_writer(synthetic_shards, small_disk, capsys, size, writer):
    """800k: the checkpoint's model.safetensors fills it; 1200k: the optimizer's torch.save does (0.08M params)."""
    mount, resize = small_disk
    resize(size)
    argv = train_args(synthetic_shards, mount, "full", "train.epochs=2")
    assert train_cli(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "train.resume=auto output.run_name=full" in line
    resize("32m")  # space freed: the same command plus resume=auto finishes the run
    assert train_cli([*argv, "train.resume=auto"]) == 0
    assert [row["epoch"] for row in RunDir(mount / "full").read_history()] == [1, 2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_full_disk_in_a_two_process_run_stops_both_processes_with_one_line(synthetic_shards, small_disk):
    """The main process writes the files; the other rank learns of its failure instead of meeting a dead peer.

    The two ranks are started by hand (no launcher that would end the other), so what each prints is its own.
    """
    import os
    import subprocess
    import sys
    import time

    from helpers import ENV, ROOT, SMOKE, wait_for

    mount, resize = small_disk
    resize("800k")
    argv = [
        sys.executable,
        "-m",
        "toolkit.train",
        "--config",
        str(SMOKE),
        f"data.shards={synthetic_shards}",
        f"output.dir={mount}",
        "output.run_name=full2",
        "train.epochs=2",
        "train.batch_size=8",
        "tracking.wandb=disabled",
        "eval.plots=false",
    ]
    started = time.monotonic()
    ranks = [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **ENV,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29618",
            },
        )
        for r in (0, 1)
    ]
    (_, main_err), (_, other_err) = (wait_for(proc, 120) for proc in ranks)
    assert [proc.returncode for proc in ranks] == [1, 1] and time.monotonic() - started < 90
    assert main_err.count("error: No space left on device") == 1, main_err[-3000:]
    assert "Traceback" not in other_err and "error:" not in other_err, other_err[-3000:]  # stopped, quietly
    assert os.environ.get("RANK") is None  # the test itself never became a rank
