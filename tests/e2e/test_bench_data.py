"""`python -m toolkit.bench data` on the tiny synthetic source: both pipelines run and are compared."""

import json

from toolkit.bench.__main__ import main as bench_main


def test_bench_data_compares_shards_with_original_files(synthetic_source, synthetic_shards, tmp_path):
    out = tmp_path / "data.json"
    code = bench_main(
        [
            "data",
            "--source",
            str(synthetic_source),
            "--shards",
            str(synthetic_shards),
            "--workers",
            "0,1",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--num-batches",
            "2",
            "--repeats",
            "1",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["jitter_on"] == "device" and report["baseline_files"] > 0
    assert [run["workers"] for run in report["runs"]] == [0, 1]
    for run in report["runs"]:
        assert len(run["all_shards"]) == len(run["all_files"]) == 2  # A B B A
        assert run["shards_img_s"] > 0 and run["files_img_s"] > 0
        assert run["shards_img_per_cpu_s"] > 0 and run["files_img_per_cpu_s"] > 0
        assert run["ratio_per_core"] == round(run["shards_img_per_cpu_s"] / run["files_img_per_cpu_s"], 2)
    assert report["decode_one_core"]["shards_full_img_s"] > 0
