"""make_shards: labels, splits, odd files, reproducibility, crash safety, verification and CLI errors."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import toolkit.data.download
import toolkit.data.shards as make_shards
from helpers import folder_bytes, read_split, synthetic_info
from toolkit.cli import run_cli
from toolkit.data.listing import Item
from toolkit.data.oxford import Entry, make_synthetic_dataset
from toolkit.data.shards import SPLITS, Job, pack_dataset, process_image
from toolkit.data.sources import stratified_split
from toolkit.data.verify import verify_shards
from toolkit.errors import UsageError
from toolkit.formats import read_manifest
from toolkit.make_shards import main

# --------------------------------------------------------------------------------------------
# helpers: read the inputs and the outputs independently of the code under test
# --------------------------------------------------------------------------------------------


def annotation(root: Path, filename: str) -> dict[str, list[int]]:
    """name -> [class id, species, breed id], read with nothing but str.split."""
    lines = (root / "annotations" / filename).read_text().splitlines()
    return {f[0]: [int(v) for v in f[1:]] for f in (line.split() for line in lines if line and line[0] != "#")}


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    return exit_info.value.code


# --------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------


def test_synthetic_dataset_is_deterministic_and_has_every_odd_file(tmp_path):
    first = make_synthetic_dataset(tmp_path / "a", 20, seed=3, image_size=32)
    second = make_synthetic_dataset(tmp_path / "b", 20, seed=3, image_size=32)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    make_synthetic_dataset(tmp_path / "a", 20, seed=4, image_size=32)  # regenerates in place
    assert any((first / f).read_bytes() != (second / f).read_bytes() for f in files if (first / f).exists())

    record = synthetic_info(second)
    odd = {kind: second / "images" / f"{name}.jpg" for kind, name in record["odd_files"].items()}
    expected = {
        "png": ("PNG", "RGB"),
        "gif": ("GIF", "P"),
        "grayscale": ("JPEG", "L"),
        "cmyk": ("JPEG", "CMYK"),
        "rgba": ("PNG", "RGBA"),
        "palette": ("PNG", "P"),
        "progressive": ("JPEG", "RGB"),
        "trailing_byte": ("JPEG", "RGB"),
    }
    for kind, (fmt, mode) in expected.items():
        with Image.open(odd[kind]) as image:
            assert (image.format, image.mode) == (fmt, mode), kind
    assert Image.open(odd["progressive"]).info.get("progressive")
    with pytest.raises(OSError, match="truncated"):
        Image.open(odd["truncated"]).load()
    with pytest.raises(UnidentifiedImageError):
        Image.open(odd["corrupt"])
    assert not odd["missing"].exists()
    listed = annotation(second, "trainval.txt") | annotation(second, "test.txt")
    assert len(listed) == 20 and annotation(second, "list.txt") == listed
    assert record["unlisted"] and all(Path(n).stem not in listed for n in record["unlisted"])
    assert all((second / "images" / n).is_file() for n in record["unlisted"])
    # labels follow the dataset's rule: cat breeds start with an uppercase letter
    assert all((values[1] == 1) == name[0].isupper() for name, values in listed.items())

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "notes.txt").write_text("not ours")
    with pytest.raises(UsageError, match="not made by --synthetic"):
        make_synthetic_dataset(tmp_path / "real", 20)


# --------------------------------------------------------------------------------------------
# the packed output
# --------------------------------------------------------------------------------------------


def test_counts_labels_and_splits_match_the_annotation_files(synthetic_source, synthetic_shards):
    info = read_manifest(synthetic_shards)
    trainval, test = annotation(synthetic_source, "trainval.txt"), annotation(synthetic_source, "test.txt")
    listed = trainval | test
    skipped = {s["name"]: s for s in info["skipped"]}
    packed = {split: read_split(synthetic_shards, split) for split in SPLITS}

    names = {
        split: [key for key, _ in packed[split]] + [s["name"] for s in info["skipped"] if s["split"] == split]
        for split in SPLITS
    }
    assert sorted(names["train"] + names["val"]) == sorted(trainval)  # each trainval image in exactly one
    assert sorted(names["test"]) == sorted(test)
    assert names["val"] and names["train"]
    for split in SPLITS:
        assert info["splits"][split]["num_samples"] == len(packed[split])
        assert sum(s["num_samples"] for s in info["splits"][split]["shards"]) == len(packed[split])
        assert len(info["splits"][split]["shards"]) >= 2
        cats = sum(key[0].isupper() for key, _ in packed[split])
        assert info["splits"][split]["class_counts"] == {"cat": cats, "dog": len(packed[split]) - cats}
        for key, members in packed[split]:
            class_id, species, breed_id = listed[key]
            meta = json.loads(members["json"])
            assert sorted(members) == ["cls", "jpg", "json"]
            assert members["cls"] == (b"0" if key[0].isupper() else b"1") == str(species - 1).encode()
            assert (meta["class_id"], meta["breed_id"], meta["species"]) == (
                class_id,
                breed_id,
                ("cat", "dog")[species - 1],
            )
            assert meta["breed"] == key.rsplit("_", 1)[0] and meta["source"] == f"{key}.jpg"
            with Image.open(io.BytesIO(members["jpg"])) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (meta["width"], meta["height"]))

    record = synthetic_info(synthetic_source)
    broken = {record["odd_files"][kind]: kind for kind in ("truncated", "corrupt", "missing")}
    assert set(skipped) == set(broken)
    for name, kind in broken.items():
        assert {"truncated": "truncated", "corrupt": "undecodable", "missing": "missing"}[kind] in skipped[name][
            "reason"
        ]
    kept = set(record["odd_files"]) - set(broken.values())
    assert all(any(key == record["odd_files"][kind] for split in SPLITS for key, _ in packed[split]) for kind in kept)
    assert info["unlisted"] == {"count": len(record["unlisted"]), "names": record["unlisted"]}
    assert info["synthetic"] is True and info["dataset"] == "synthetic-pets" and info["classes"] == ["cat", "dog"]
    assert verify_shards(synthetic_shards) == []


def test_normalization_is_the_mean_and_std_of_the_stored_train_pixels(synthetic_shards):
    info = read_manifest(synthetic_shards)
    pixels = (
        np.concatenate(
            [
                np.asarray(Image.open(io.BytesIO(m["jpg"])).convert("RGB"), np.float64).reshape(-1, 3)
                for _, m in read_split(synthetic_shards, "train")
            ]
        )
        / 255
    )
    norm = info["normalization"]
    assert norm["computed_on"] == "train" and norm["num_images"] == info["splits"]["train"]["num_samples"]
    np.testing.assert_allclose(norm["mean"], pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(norm["std"], pixels.std(axis=0), rtol=1e-9)


def test_tar_headers_are_deterministic(synthetic_shards):
    shard = read_manifest(synthetic_shards)["splits"]["test"]["shards"][0]["name"]
    with tarfile.open(synthetic_shards / shard) as tar:
        members = tar.getmembers()
    assert [m.name.partition(".")[2] for m in members[:3]] == ["cls", "jpg", "json"]
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o444) for m in members)


def test_plain_webdataset_reads_the_shards(synthetic_shards):
    import webdataset as wds

    info = read_manifest(synthetic_shards)
    for split in SPLITS:
        urls = [str(synthetic_shards / s["name"]) for s in info["splits"][split]["shards"]]
        samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
        assert len(samples) == info["splits"][split]["num_samples"]
        for sample in samples:
            assert sample["jpg"].mode == "RGB" and sample["cls"] == (0 if sample["__key__"][0].isupper() else 1)
            assert sample["json"]["species"] == info["classes"][sample["cls"]]


def test_odd_images_are_converted_resized_or_copied(synthetic_source, tmp_path):
    record = synthetic_info(synthetic_source)
    images = synthetic_source / "images"

    def job(name: str, resize: int) -> Job:
        item = Item(key=name, path=images / f"{name}.jpg", label=0, fields=(), source=f"{name}.jpg")
        return Job("train", item, resize, 90, want_stats=True)

    clean = next(
        p.stem
        for p in sorted(images.glob("*.jpg"))
        if p.stem not in record["odd_files"].values() and Image.open(p).format == "JPEG"
    )
    copied = process_image(job(clean, 0))
    assert copied.jpeg == (images / f"{clean}.jpg").read_bytes()  # clean RGB JPEG, no resize: bytes unchanged
    resized = process_image(job(clean, 24))
    assert (
        min(resized.width, resized.height) == 24
        and (resized.orig_width, resized.orig_height) == Image.open(images / f"{clean}.jpg").size
    )
    assert process_image(job(clean, 1000)).jpeg == copied.jpeg  # never upscale

    rgba = process_image(job(record["odd_files"]["rgba"], 0))
    top = np.asarray(Image.open(io.BytesIO(rgba.jpeg)))[0]
    assert top.min() > 230  # the transparent band is composited on white, not left black
    for kind in ("png", "gif", "grayscale", "cmyk", "palette"):
        out = process_image(job(record["odd_files"][kind], 0))
        with Image.open(io.BytesIO(out.jpeg)) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB"), kind
    trailing = record["odd_files"]["trailing_byte"]
    assert process_image(job(trailing, 0)).jpeg == (images / f"{trailing}.jpg").read_bytes()


def test_label_conflicts_are_skipped_and_list_mismatches_refused(tmp_path):
    source = make_synthetic_dataset(tmp_path / "src", 16, seed=1, image_size=24, odd_files=False)
    trainval = (source / "annotations" / "trainval.txt").read_text().splitlines()
    name, class_id, _, breed_id = trainval[0].split()  # a cat (cats come first), relabelled as a dog
    trainval[0] = f"{name} {class_id} 2 {breed_id}"
    (source / "annotations" / "trainval.txt").write_text("\n".join(trainval) + "\n")
    with pytest.raises(UsageError, match="different labels in list.txt"):
        pack_dataset(source, tmp_path / "out", workers=1, show_progress=False)

    (source / "annotations" / "list.txt").unlink()
    info = pack_dataset(source, tmp_path / "out", workers=1, show_progress=False)
    assert [(s["name"], s["reason"].split(":")[0]) for s in info["skipped"]] == [(name, "label conflict")]
    assert sum(info["splits"][s]["num_samples"] for s in SPLITS) == 15


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------


def test_split_modes():
    from sklearn.model_selection import train_test_split

    entries = [Entry(f"{'Cat' if i % 3 == 0 else 'dog'}_{i}", 1, 1 if i % 3 == 0 else 2, 1) for i in range(1, 3681)]
    species = [e.species for e in entries]
    train, val = stratified_split(entries, 0.2, 42, None, "val")
    expected_train, expected_val = train_test_split([e.name for e in entries], test_size=0.2, random_state=42)
    assert ([e.name for e in train], [e.name for e in val]) == (expected_train, expected_val)
    assert (len(train), len(val)) == (2944, 736)

    train, val = stratified_split(entries, 0.2, 42, species, "val")
    assert sorted(e.name for e in train + val) == sorted(e.name for e in entries)
    cats = sum(e.species == "cat" for e in entries)
    assert abs(sum(e.species == "cat" for e in val) - 736 * cats / len(entries)) <= 1  # the trainval cat ratio
    assert stratified_split(entries, 0.0, 42, species, "val") == (entries, [])


# --------------------------------------------------------------------------------------------
# reproducibility and crash safety
# --------------------------------------------------------------------------------------------


def test_interrupted_run_leaves_no_finished_looking_shard(synthetic_source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    pack_dataset(synthetic_source, out, resize_shorter=32, shard_size=4, workers=1, show_progress=False)
    before = folder_bytes(out)
    leftover = out / ".tmp-make_shards-1" / "train-000000.tar"  # what a killed run leaves behind
    leftover.parent.mkdir()
    leftover.write_bytes(b"partial")

    real, calls = process_image, []

    def dies_midway(job):
        calls.append(job)
        if len(calls) == 30:
            raise RuntimeError("worker died")
        return real(job)

    monkeypatch.setattr(make_shards, "process_image", dies_midway)
    with pytest.raises(RuntimeError, match="worker died"):  # a new run with other options, interrupted
        pack_dataset(synthetic_source, out, resize_shorter=24, shard_size=2, workers=1, show_progress=False)
    assert folder_bytes(out) == before and [p.name for p in out.iterdir() if p.is_dir()] == []
    assert verify_shards(out) == []  # the previous output is untouched and still valid

    calls.clear()
    with pytest.raises(RuntimeError, match="worker died"):
        pack_dataset(
            synthetic_source, tmp_path / "fresh", resize_shorter=24, shard_size=2, workers=1, show_progress=False
        )
    assert list((tmp_path / "fresh").iterdir()) == []


def test_rerun_replaces_stale_shards_and_refuses_foreign_files(synthetic_source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("ours to keep")
    (out / "quickstart").mkdir()  # sub-folders are left alone
    small = pack_dataset(synthetic_source, out, resize_shorter=24, shard_size=3, workers=1, show_progress=False)
    big = pack_dataset(synthetic_source, out, resize_shorter=24, shard_size=100, workers=1, show_progress=False)
    names = {s["name"] for split in big["splits"].values() for s in split["shards"]}
    assert len(names) == 3 < sum(len(split["shards"]) for split in small["splits"].values())
    assert {p.name for p in out.glob("*.tar")} == names and (out / "README.md").read_text() == "ours to keep"
    assert verify_shards(out) == []

    (out / "notes.txt").write_text("someone else's")
    with pytest.raises(UsageError, match="did not write"):
        pack_dataset(synthetic_source, out, workers=1, show_progress=False)


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def test_verify_catches_mislabelled_and_undecodable_samples(synthetic_shards, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(synthetic_shards, folder)
    info = read_manifest(folder)
    shard = info["splits"]["test"]["shards"][0]
    buffer = io.BytesIO()
    with tarfile.open(folder / shard["name"]) as src, tarfile.open(fileobj=buffer, mode="w") as dst:
        for i, member in enumerate(src.getmembers()):
            data = src.extractfile(member).read()
            if member.name.endswith(".cls") and i == 0:
                data = b"1" if data == b"0" else b"0"
            if member.name.endswith(".jpg") and i == 4:
                data = data[: len(data) // 2]
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    (folder / shard["name"]).write_bytes(buffer.getvalue())
    shard.update(bytes=len(buffer.getvalue()), sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    (folder / "info.json").write_text(json.dumps(info))
    problems = verify_shards(folder)
    assert any("disagrees with species" in p for p in problems)
    assert any("does not decode" in p and "truncated" in p for p in problems)
    assert any("class counts" in p for p in problems)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def make_layout(root: Path, trainval: str, test: str) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "annotations" / "trainval.txt").write_text(trainval)
    (root / "annotations" / "test.txt").write_text(test)
    return root


def cli_error_cases(tmp: Path, synthetic: Path) -> dict[str, list[str]]:
    (tmp / "no-annotations" / "images").mkdir(parents=True)
    make_layout(tmp / "empty", "# only a comment\n", "Abyssinian_1 1 1 1\n")
    make_layout(tmp / "bad-line", "Abyssinian_1 1 cat 1\n", "Abyssinian_2 1 1 1\n")
    make_layout(tmp / "overlap", "Abyssinian_1 1 1 1\n", "Abyssinian_1 1 1 1\n")
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "notes.txt").write_text("x")
    (tmp / "not-shards").mkdir()
    return {
        "missing folder": ["--source", str(tmp / "nope")],
        "no annotations": ["--source", str(tmp / "no-annotations")],
        "empty list": ["--source", str(tmp / "empty")],
        "bad annotation line": ["--source", str(tmp / "bad-line")],
        "in both lists": ["--source", str(tmp / "overlap")],
        "out inside images": ["--source", str(synthetic), "--out", str(synthetic / "images" / "shards")],
        "foreign out folder": ["--source", str(synthetic), "--out", str(tmp / "foreign")],
        "bad val fraction": ["--source", str(synthetic), "--val-fraction", "1.5"],
        "bad shard bytes": ["--source", str(synthetic), "--shard-bytes", "lots"],
        "unknown flag": ["--source", str(synthetic), "--bogus"],
        "nothing to do": [],
        "two modes": ["--synthetic", "20", "--verify", str(tmp)],
        "too few synthetic": ["--synthetic", "3", "--source", str(tmp / "syn")],
        "verify without info.json": ["--verify", str(tmp / "not-shards")],
    }


def test_cli_errors_are_one_line_with_exit_2(synthetic_source, tmp_path, capsys):
    for case, argv in cli_error_cases(tmp_path, synthetic_source).items():
        assert run_main(argv + ["--workers", "1"]) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (case, err)
    assert not (synthetic_source / "images" / "shards").exists()


def test_download_without_network_says_how_to_use_a_local_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(toolkit.data.download, "DOWNLOAD_PROBE", ("127.0.0.1", 9))  # nothing listens: refused at once
    assert run_main(["--download", str(tmp_path / "dl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--source" in err[0] and "oxford-iiit-pet" in err[0]
