"""python -m toolkit.bench model on CPU: the timing run and the figures it records."""

from __future__ import annotations

import json

from helpers import run_module


def test_bench_model_on_cpu(tmp_path):
    output = tmp_path / "bench.json"
    result = run_module(
        "toolkit.bench",
        "model",
        "--arch",
        "resnet18",
        "--device",
        "cpu",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads(output.read_text())
    for key in (
        "ours_img_per_s",
        "timm_img_per_s",
        "ratio_ours_over_timm",
        "peak_gpu_mem_gib",
        "torch_version",
        "device_name",
        "dtype",
        "channels_last",
        "compile",
        "batch_size",
        "image_size",
        "steps",
        "warmup",
    ):
        assert key in report
    assert report["ours_img_per_s"] > 0 and report["timm_img_per_s"] > 0
    assert report["device"] == "cpu" and report["peak_gpu_mem_gib"] is None and report["num_params"] == 11_689_512
