"""Issue 25: results that must not be lost, and input that must not take the machine down.

compare_recipes never deletes a run; an empty test split is refused before training; credentials in
shard locations are masked; hostile shards are capped; predict checks the model file's image sizes
with evaluate's cap; image-folder packing refuses what it cannot pack safely; export never writes
into a run folder. Each test fails when its protection is removed (checked by hand when written).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import ENV, ROOT, error_line, file_hashes, run_in_process, save_tiny_model, wait_for
from toolkit.compare_recipes import claim_run_dir
from toolkit.compare_recipes import main as compare_main
from toolkit.errors import UsageError

# a tiny ResNet at 32 px, one loader process: a compare_recipes run of one epoch takes seconds
TINY = [
    "model.arch=resnet18",
    "model.blocks_per_stage=[1,1,1,1]",
    "model.base_width=8",
    "data.image_size=32",
    "data.resize_size=36",
    "data.num_workers=0",
    "train.batch_size=8",
    "eval.batch_size=32",
    "eval.plots=false",
    'train.mixed_precision="no"',
    "model.channels_last=false",
    "scheduler.warmup_epochs=0",
]


# ---------------------------------------------------------------------------------------------
# 1. compare_recipes never deletes a run


def test_run_folders_claimed_at_once_are_new_and_distinct(tmp_path: Path):
    """Eight claims at the same moment: eight new folders, and the earlier run's files untouched."""
    runs = tmp_path / "runs"
    earlier = runs / "seed-seed0"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "model.safetensors").write_bytes(b"weights of an earlier run")
    (earlier / ".lock").write_text("somehost 123\n")
    before = file_hashes(earlier)
    start, claimed = threading.Barrier(8), []

    def claim() -> None:
        start.wait()
        claimed.append(claim_run_dir(runs, "seed-seed0"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(claimed)) == 8 and earlier not in claimed
    assert sorted(p.name for p in claimed) == sorted(f"seed-seed0-{v}" for v in range(2, 10))
    assert all(not any(p.iterdir()) for p in claimed)  # each is new and empty
    assert file_hashes(earlier) == before


@pytest.mark.slow
def test_a_new_comparison_keeps_every_earlier_run(synthetic_shards: Path, tmp_path: Path, capsys):
    """Without --reuse, or with a changed override, the runs go to NAME-2 and the earlier ones stay byte for byte."""
    out = tmp_path / "compare"
    args = ["--shards", str(synthetic_shards), "--epochs", "1", "--seeds", "0", "--out", str(out)]
    assert compare_main([*args, *TINY]) == 0
    earlier = {name: file_hashes(out / "runs" / f"{name}-seed0") for name in ("seed", "strong")}
    assert all("eval/test/metrics.json" in files for files in earlier.values())
    capsys.readouterr()

    assert compare_main([*args, *TINY, "optimizer.weight_decay=0.001"]) == 0  # a changed override, no --reuse
    printed = capsys.readouterr().out
    assert "seed seed 0: training" in printed and "strong seed 0: training" in printed
    report = json.loads((out / "comparison.json").read_text())
    assert [Path(r["run_dir"]).name for n in ("seed", "strong") for r in report["recipes"][n]["runs"]] == [
        "seed-seed0-2",
        "strong-seed0-2",
    ]
    assert {name: file_hashes(out / "runs" / f"{name}-seed0") for name in earlier} == earlier

    assert compare_main([*args, "--reuse", *TINY]) == 0  # the original config again: the kept runs count
    printed = capsys.readouterr().out
    assert f"reused the finished run in {out / 'runs' / 'seed-seed0'}" in printed
    assert f"reused the finished run in {out / 'runs' / 'strong-seed0'}" in printed


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_comparisons_at_once_into_one_folder_keep_each_other_s_runs(synthetic_shards: Path, tmp_path: Path):
    """Two compare_recipes processes, same --out, same recipe and seed: two run folders, both complete."""
    out = tmp_path / "compare"
    command = [
        sys.executable,
        "-m",
        "toolkit.compare_recipes",
        "--shards",
        str(synthetic_shards),
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--configs",
        str(ROOT / "configs/smoke.yaml"),
        "--names",
        "smoke",
        "--out",
        str(out),
        *TINY,
    ]
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [wait_for(proc, timeout=280) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["smoke-seed0", "smoke-seed0-2"]
    for name in runs:  # each finished, each trained once, into its own folder
        run = out / "runs" / name
        assert (run / "eval" / "test" / "metrics.json").is_file() and (run / "final.json").is_file()
        assert len((run / "metrics.jsonl").read_text().splitlines()) >= 1
        assert not (run / ".lock").exists()
    printed = "".join(stdout for stdout, _ in results)
    assert all(f"training ({out / 'runs' / name / 'train.log'})" in printed for name in runs)


# ---------------------------------------------------------------------------------------------
# 10. export never writes into a run folder


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


# ---------------------------------------------------------------------------------------------
# 8. predict holds the model file's image sizes to evaluate's cap


def set_header_metadata(path: Path, **claims) -> None:
    """Rewrite a safetensors file's ``__metadata__`` in place, as a hostile sender could (tensors untouched)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"].update({key: json.dumps(value) for key, value in claims.items()})
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keep the tensors 8-byte aligned
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])


@pytest.mark.parametrize(
    "claims, words",
    [
        ({"image_size": 60000, "resize_size": 60000}, "data.image_size = 60000 is out of range"),
        ({"resize_size": 60000}, "data.resize_size = 60000 is out of range"),
        ({"image_size": "224"}, "data.image_size = '224' has the wrong type"),
        ({"image_size": 64, "resize_size": 48}, "resize_size 48 must be >= image_size 64"),
    ],
)
@pytest.mark.parametrize("tool", ["predict", "evaluate"])
def test_model_file_image_sizes_are_held_to_evaluate_s_cap(
    synthetic_shards: Path, tmp_path: Path, capsys, monkeypatch, claims: dict, words: str, tool: str
):
    """One check (config.model_image_sizes) for both tools, before any image is decoded or resized."""
    from PIL import Image

    import toolkit.predict
    from toolkit.evaluation.evaluate import main as evaluate_main

    model = tmp_path / "model.safetensors"
    save_tiny_model(model)
    set_header_metadata(model, **claims)
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 40)).save(image)
    real = toolkit.predict.build_eval_transform

    def guarded(sizes, mean, std):  # without the check, fail here instead of allocating 10+ GB per image
        assert max(sizes.image_size, sizes.resize_size) <= 4096, f"built a transform for {sizes}"
        return real(sizes, mean, std)

    monkeypatch.setattr(toolkit.predict, "build_eval_transform", guarded)
    if tool == "predict":
        code = run_in_process(toolkit.predict.main, ["--model", str(model), str(image)])
    else:
        code = run_in_process(
            evaluate_main,
            [
                "--model",
                str(model),
                "--shards",
                str(synthetic_shards),
                "--num-workers",
                "0",
                "--out",
                str(tmp_path / "eval"),
            ],
        )
    line = error_line(capsys.readouterr().err)
    assert code == 2 and str(model) in line and words in line, line
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------------------------------------
# 2. An empty test split is refused before training, not found after it


def write_images(folder: Path, count: int, size: int = 24, seed: int = 0) -> None:
    """``count`` small random JPEGs in ``folder`` (made if needed)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.jpg", quality=90)


@pytest.mark.parametrize("empty", ["test", "val"])
def test_an_empty_split_folder_is_refused_when_packing(tmp_path: Path, capsys, empty: str):
    """train/cat, train/dog and an empty test/ (or val/): one line before anything is written, exit 2."""
    from toolkit.make_shards import main as make_shards_main

    source = tmp_path / "pets"
    write_images(source / "train" / "cat", 6)
    write_images(source / "train" / "dog", 6, seed=1)
    (source / empty).mkdir()
    (source / empty / "notes.txt").write_text("no class folders here\n")
    code = run_in_process(
        make_shards_main, ["--source", str(source), "--out", str(tmp_path / "shards"), "--workers", "1"]
    )
    line = error_line(capsys.readouterr().err)
    assert code == 2 and f"the {empty} split would be empty" in line and f"--{empty}-fraction" in line, line
    assert not (tmp_path / "shards").exists()


@pytest.mark.slow
def test_an_empty_test_split_is_refused_before_training_and_evaluating(tmp_path: Path, capsys):
    """Shards whose test split is empty (packed by an older version, or edited): one line, no run folder."""
    from helpers import train_args, train_cli
    from toolkit.data.shards import pack_dataset
    from toolkit.evaluation.evaluate import main as evaluate_main

    source = tmp_path / "pets"
    for split, count in (("train", 12), ("val", 4), ("test", 3)):
        for label, name in enumerate(("cat", "dog")):
            write_images(source / split / name, count, size=32, seed=10 * label + len(split))
    shards = tmp_path / "shards"
    pack_dataset(source, shards, resize_shorter=32, workers=1, show_progress=False)
    info = json.loads((shards / "info.json").read_text())
    for shard in info["splits"]["test"]["shards"]:
        (shards / shard["name"]).unlink()
    info["splits"]["test"] = {"num_samples": 0, "class_counts": {"cat": 0, "dog": 0}, "shards": []}
    (shards / "info.json").write_text(json.dumps(info))

    assert train_cli(train_args(shards, tmp_path / "runs", "x", "train.epochs=1")) == 2
    line = error_line(capsys.readouterr().err)
    assert "the test split" in line and "has no samples" in line and "eval.test_split" in line, line
    assert not (tmp_path / "runs").exists()  # refused before any folder is made
    model = tmp_path / "model.safetensors"
    save_tiny_model(model)
    code = run_in_process(
        evaluate_main,
        ["--model", str(model), "--shards", str(shards), "--num-workers", "0", "--out", str(tmp_path / "eval")],
    )
    assert code == 2 and "has no samples" in error_line(capsys.readouterr().err)
    with pytest.raises(UsageError, match="the test split .* has no samples, so --split=test"):
        compare_main(["--shards", str(shards), "--epochs", "1", "--seeds", "0", "--out", str(tmp_path / "c"), *TINY])
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------
# 6. Credentials in shard locations are masked, by form


CREDENTIAL_FORMS = [  # (id, shard location, the secret in it); one per form of curl, wget, aws/gsutil, env, URL
    ("curl-oauth2-bearer", "pipe:curl -s --oauth2-bearer S3cr3tBearer https://h/x.tar", "S3cr3tBearer"),
    ("curl-u", "pipe:curl -u alice:S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("curl-u-attached", "pipe:curl -ualice:S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("curl-user=", "pipe:curl --user=alice:S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("curl-proxy-user", "pipe:curl -U bob:S3cr3tProxy -x http://p:3128 https://h/x.tar", "S3cr3tProxy"),
    ("curl-H-api-key", 'pipe:curl -H "X-Api-Key: S3cr3tApiKey" https://h/x.tar', "S3cr3tApiKey"),
    ("curl-H-authorization", "pipe:curl -H 'Authorization: Bearer S3cr3tAuth' https://h/x.tar", "S3cr3tAuth"),
    ("curl-header-token", "pipe:curl --header X-Auth-Token:S3cr3tTok https://h/x.tar", "S3cr3tTok"),
    ("curl-cookie", 'pipe:curl --cookie "session=S3cr3tCookie" https://h/x.tar', "S3cr3tCookie"),
    ("curl-b", "pipe:curl -b sid=S3cr3tCookie https://h/x.tar", "S3cr3tCookie"),
    ("wget-password", "pipe:wget -qO- --user=alice --password=S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("wget-http-password", "pipe:wget -qO- --http-password S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("wget-header", "pipe:wget -qO- --header='Authorization: Bearer S3cr3tAuth' https://h/x.tar", "S3cr3tAuth"),
    (
        "aws-env-secret",
        "pipe:AWS_SECRET_ACCESS_KEY=S3cr3t/Aws+Key aws s3 cp --profile prod s3://b/x.tar -",
        "S3cr3t/Aws+Key",
    ),
    ("aws-env-session", 'pipe:env AWS_SESSION_TOKEN="S3cr3t Session" aws s3 cp s3://b/x.tar -', "S3cr3t Session"),
    ("aws-sse-c-key", "pipe:aws s3 cp --sse-c AES256 --sse-c-key S3cr3tSseKey s3://b/x.tar -", "S3cr3tSseKey"),
    (
        "gsutil-o",
        'pipe:gsutil -o "Credentials:gs_oauth2_refresh_token=S3cr3tRefresh" cat gs://b/x.tar',
        "S3cr3tRefresh",
    ),
    ("env-password", "pipe:PGPASSWORD=S3cr3tPg fetch-shard x.tar", "S3cr3tPg"),
    ("env-api-key", "pipe:MY_API_KEY=S3cr3tMyKey fetch-shard x.tar", "S3cr3tMyKey"),
    ("url-userinfo", "https://alice:S3cr3tPass@h/x.tar", "S3cr3tPass"),
    ("url-token-user", "pipe:curl https://S3cr3tGhToken@h/x.tar", "S3cr3tGhToken"),
    ("url-query-signature", "https://h/x.tar?X-Amz-Credential=AKIA1&X-Amz-Signature=S3cr3tSig&v=1", "S3cr3tSig"),
    ("url-query-token", "https://h/x.tar?access_token=S3cr3tQuery", "S3cr3tQuery"),
]


@pytest.mark.parametrize("location, secret", [c[1:] for c in CREDENTIAL_FORMS], ids=[c[0] for c in CREDENTIAL_FORMS])
def test_each_credential_form_in_a_shard_location_is_masked(location: str, secret: str):
    from toolkit.redaction import REDACTED, redact_text

    masked = redact_text(location, secrets=[])  # nothing from the environment: the form alone must give it away
    assert secret not in masked and REDACTED in masked, masked
    assert masked.endswith(location.split(secret, 1)[1])  # what follows the secret stays readable


@pytest.mark.parametrize(
    "text",
    [
        "pipe:aws s3 cp --profile prod s3://b/train-000000.tar -",
        'pipe:curl -s -H "Accept: */*" --user-agent pets https://h/x.tar',
        "key=Abyssinian_1",
        "optimizer.weight_decay=0.001",
        "shards/pets/{split}.tar",
    ],
)
def test_what_is_no_credential_stays(text: str):
    from toolkit.redaction import redact_text

    assert redact_text(text, secrets=[]) == text


@pytest.mark.slow
def test_credentials_in_a_pipe_command_reach_no_file_of_the_run(synthetic_source: Path, tmp_path: Path):
    """One working pipe: command carrying a credential of every form: none in config.yaml, dataset.json,
    report.html, the console or W&B's offline run; each file shows the masked command."""
    from helpers import train_args
    from toolkit.data.shards import pack_dataset

    folder = tmp_path / "one-shard-per-split"
    pack_dataset(synthetic_source, folder, resize_shorter=48, shard_size=1000, workers=1, show_progress=False)
    secrets = [
        "S3cr3tAws",
        "S3cr3tTokenEnv",
        "S3cr3tBearer",
        "S3cr3tPass",
        "S3cr3tApiKey",
        "S3cr3tCookie",
        "S3cr3tWget",
        "S3cr3tWgetHdr",
        "S3cr3tUserinfo",
        "S3cr3tSig",
        "S3cr3tRefresh",
    ]
    command = (
        f"pipe:AWS_SECRET_ACCESS_KEY={secrets[0]} SHARD_TOKEN={secrets[1]} cat "
        f"{folder}/{{split}}-{{000000..000000}}.tar # curl --oauth2-bearer {secrets[2]} -u me:{secrets[3]} "
        f'-H "X-Api-Key: {secrets[4]}" --cookie "sid={secrets[5]}" https://u:{secrets[8]}@h/x?sig={secrets[9]} '
        f'wget --password={secrets[6]} --header="Authorization: Bearer {secrets[7]}" '
        f'gsutil -o "Credentials:gs_oauth2_refresh_token={secrets[10]}" aws --profile prod'
    )
    home = tmp_path / "home"
    env = {k: v for k, v in ENV.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(
        HOME=str(home),
        WANDB_MODE="offline",
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_SILENT="true",
        WANDB_ERROR_REPORTING="false",
    )
    argv = train_args(
        folder, tmp_path / "runs", "pipe", "train.epochs=1", "tracking.wandb=offline", f"data.shards='{command}'"
    )  # quoted: YAML keeps the '#'
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.train", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "pipe"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"config.yaml", "dataset.json", "report.html"} <= {p.name for p in files}
    assert any(p.suffix == ".wandb" for p in files)
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr, secret
        leaks = [str(p.relative_to(run)) for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, f"{secret} found in {leaks}"
    import html

    import yaml

    from toolkit.redaction import redact_text

    masked = redact_text(command, secrets=[])
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["shards"] == masked
    assert json.loads((run / "dataset.json").read_text())["shards"] == masked
    assert masked in html.unescape((run / "report.html").read_text())
    for kept in ("--oauth2-bearer ***", '-H "X-Api-Key: ***"', "AWS_SECRET_ACCESS_KEY=***", "--profile prod"):
        assert kept in masked, kept


def test_a_credential_inside_a_quoted_override_is_masked():
    """The command line W&B copies: data.shards='pipe:AWS_SECRET_ACCESS_KEY=... aws ...' as one argument."""
    from toolkit.redaction import redact_text

    masked = redact_text("data.shards='pipe:AWS_SECRET_ACCESS_KEY=S3cr3tAws aws s3 cp s3://b/x.tar -'", secrets=[])
    assert masked == "data.shards='pipe:AWS_SECRET_ACCESS_KEY=*** aws s3 cp s3://b/x.tar -'"


# ---------------------------------------------------------------------------------------------
# 7. Hostile shards: caps per member, per sample (all members of a key), compressed tars, --verify


def make_tar(members: list[tuple[str, bytes]]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_all(shard: Path, expected: int, limits=None, strict: bool = False) -> tuple[list[dict], int]:
    from toolkit.data import reading

    skips = reading.Skips(strict=strict)
    kept = list(
        reading.usable(reading.read_shards([(str(shard), expected)], skips, limits=limits), skips, num_classes=2)
    )
    return kept, skips.count


def test_the_bytes_of_one_key_are_capped_not_only_each_member(tmp_path: Path):
    """Members each under the member cap but together over the sample cap, and a key repeating one member:
    skipped and counted; members a sample is not made of are never read."""
    from toolkit.data.reading import Limits

    limits = Limits(member_bytes=1000, sample_bytes=1500)
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(
        make_tar(
            [
                ("ok.cls", b"1"),
                ("ok.jpg", b"x" * 900),
                *((f"ok.extra{i}", b"e" * 900) for i in range(50)),
                ("wide.cls", b"0"),
                ("wide.jpg", b"x" * 900),
                ("wide.json", b"{" * 900),  # 1801 bytes of one key
                *(("again.jpg", b"y" * 900) for _ in range(5)),
                ("again.cls", b"0"),  # one member, five times
                ("last.cls", b"0"),
                ("last.jpg", b"z" * 10),
            ]
        )
    )
    kept, skipped = read_all(shard, 4, limits)
    assert [s["__key__"] for s in kept] == ["ok", "last"] and skipped == 2
    assert set(kept[0]) == {"__key__", "__url__", "__label__", "cls", "jpg"}  # the 50 extras were not read


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_compressed_shards_are_refused_unread_and_counted(tmp_path: Path, caplog, kind: str):
    """mode "r|*" would decompress any of these; a small download could then expand to gigabytes per worker."""
    import bz2
    import gzip
    import lzma

    from toolkit.errors import DataError

    plain = make_tar([(f"s{i}.{ext}", data) for i in range(3) for ext, data in (("cls", b"1"), ("jpg", b"x" * 10))])
    compress = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind]
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(compress(plain))
    kept, skipped = read_all(shard, 3)
    assert kept == [] and skipped == 3
    assert "compressed tar, refused unread" in caplog.text
    with pytest.raises(DataError, match="compressed tar, refused unread"):  # data.strict: one line naming it
        read_all(shard, 3, strict=True)
    shard.write_bytes(plain)  # the same samples, plain: read
    kept, skipped = read_all(shard, 3)
    assert len(kept) == 3 and skipped == 0


def test_verify_reads_a_shard_in_bounded_memory_and_names_what_is_over_the_caps(tmp_path: Path):
    """--verify used to read each whole shard, and every sample of it, into memory."""
    import tracemalloc

    from helpers import rewrite_shard
    from toolkit.data.reading import Limits
    from toolkit.data.shards import pack_dataset
    from toolkit.data.verify import verify_shards

    source = tmp_path / "pets"
    write_images(source / "cat", 8, size=32)
    write_images(source / "dog", 8, size=32, seed=1)
    shards = tmp_path / "shards"
    pack_dataset(source, shards, resize_shorter=32, workers=1, show_progress=False)
    assert verify_shards(shards) == []
    train = sorted(shards.glob("train-*.tar"))[0]
    first = {}

    def bloat(name: str, data: bytes):
        key = name.split(".")[0]
        first.setdefault("key", key)
        if key == first["key"] and name.endswith(".jpg"):
            return [(name, bytes(8 << 20))]  # 8 MiB in one member
        return None

    rewrite_shard(train, bloat)
    tracemalloc.start()
    problems = verify_shards(shards, limits=Limits(member_bytes=1 << 20, sample_bytes=1 << 20))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert any(
        f"{train.name}/{first['key']}: {first['key']}.jpg is 8,388,608 bytes" in p and "not read" in p for p in problems
    ), problems
    assert any("sha256 differs" in p for p in problems)
    assert peak < 4 << 20, f"peak {peak:,} bytes while verifying an 8 MiB shard"


# ---------------------------------------------------------------------------------------------
# 9. Image-folder packing: links, files that are not files, names that are not UTF-8


def pack_folder(source: Path, out: Path) -> dict:
    from toolkit.data.shards import pack_dataset

    return pack_dataset(source, out, resize_shorter=32, workers=1, show_progress=False)


def test_linked_sub_folders_are_packed_each_file_once_and_loops_are_not_followed(tmp_path: Path, capsys):
    """A linked sub-folder used to be dropped without a word; now it is packed, a loop is named, a file
    reached twice is packed once (not in train and test both) and its second path is a counted skip."""
    source, elsewhere = tmp_path / "pets", tmp_path / "more-cats"
    write_images(source / "cat", 6)
    write_images(source / "dog", 6, seed=1)
    write_images(elsewhere, 4, seed=2)
    (source / "cat" / "more").symlink_to(elsewhere, target_is_directory=True)  # a linked sub-folder
    (source / "cat" / "loop").symlink_to(source / "cat", target_is_directory=True)  # back to its own class folder
    (source / "dog" / "same.jpg").symlink_to(source / "cat" / "img0.jpg")  # one file in two classes
    info = pack_folder(source, tmp_path / "shards")
    packed = {
        name: sum(info["splits"][split]["class_counts"][name] for split in info["splits"]) for name in ("cat", "dog")
    }
    assert packed == {"cat": 10, "dog": 6}
    skipped = info["skipped"]
    assert len(skipped) == 1 and "the same file as cat/img0.jpg" in skipped[0]["reason"], skipped
    assert "cat/loop links back to a folder above it: not followed" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_fifo_and_a_dev_zero_link_named_jpg_are_skipped_unopened(tmp_path: Path):
    """Packing used to wait forever on the FIFO and read /dev/zero until memory ran out. In a child with
    4 GiB of address space and a deadline, so that a regression fails here instead of taking the machine."""
    import os
    import resource

    source = tmp_path / "pets"
    write_images(source / "cat", 6)
    write_images(source / "dog", 6, seed=1)
    os.mkfifo(source / "cat" / "pipe.jpg")
    (source / "dog" / "zero.jpg").symlink_to("/dev/zero")
    out = tmp_path / "shards"

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit.make_shards",
            "--source",
            str(source),
            "--out",
            str(out),
            "--workers",
            "1",
            "--resize-shorter",
            "32",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_memory,
    )
    stdout, stderr = wait_for(proc, timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "is a FIFO, never read" in stdout and "zero.jpg is a device, never read" in stdout
    info = json.loads((out / "info.json").read_text())
    assert len(info["skipped"]) == 2 and sum(s["num_samples"] for s in info["splits"].values()) == 12


def test_a_file_over_the_size_cap_is_skipped_unread(tmp_path: Path):
    from toolkit.data.shards import Job, process_image
    from toolkit.data.sources import Item

    big = tmp_path / "big.jpg"
    write_images(tmp_path, 1, size=64)
    (tmp_path / "img0.jpg").rename(big)
    item = Item(key="big", path=big, label=0, fields=(), source="big.jpg")
    assert not isinstance(process_image(Job("train", item, 32, 90, False, max_file_bytes=1 << 20)), str)
    reason = process_image(Job("train", item, 32, 90, False, max_file_bytes=100))
    assert isinstance(reason, str) and reason.startswith("too large:") and "100-byte cap" in reason


def test_a_class_folder_name_that_is_not_utf8_is_one_line_before_packing(tmp_path: Path, capsys):
    """It used to pack and train, then crash writing predictions.csv."""
    import os

    from toolkit.make_shards import main as make_shards_main

    source = tmp_path / "pets"
    write_images(source / "cat", 6)
    bad = os.path.join(os.fsencode(source), b"d\xf6g")  # Latin-1 "dög"
    os.mkdir(bad)
    write_images(Path(os.fsdecode(bad)), 6, seed=1)
    code = run_in_process(
        make_shards_main, ["--source", str(source), "--out", str(tmp_path / "shards"), "--workers", "1"]
    )
    line = error_line(capsys.readouterr().err)
    assert code == 2 and "'d\\udcf6g'" in line and "not valid UTF-8; rename it" in line, line
    assert not (tmp_path / "shards").exists()


def test_an_image_file_name_that_is_not_utf8_is_a_counted_skip(tmp_path: Path, capsys):
    import os

    from toolkit.make_shards import main as make_shards_main

    source = tmp_path / "pets"
    write_images(source / "cat", 6)
    write_images(source / "dog", 6, seed=1)
    os.rename(source / "dog" / "img5.jpg", os.path.join(os.fsencode(source / "dog"), b"h\xfcnd.jpg"))
    os.rename(source / "dog" / "img4.jpg", os.path.join(os.fsencode(source / "dog"), b"notes\xfc.txt"))
    code = run_in_process(
        make_shards_main,
        ["--source", str(source), "--out", str(tmp_path / "shards"), "--workers", "1", "--resize-shorter", "32"],
    )
    out = capsys.readouterr().out
    assert code == 0 and "is not valid UTF-8: rename it" in out and "notes\ufffd.txt" in out
    info = json.loads((tmp_path / "shards" / "info.json").read_text())
    assert len(info["skipped"]) == 1 and sum(s["num_samples"] for s in info["splits"].values()) == 10
