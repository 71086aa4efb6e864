"""Shard member names are plain strings, never paths: training, evaluation, predictions.csv and the plots write
nothing outside the output folders."""

from __future__ import annotations

import shutil
import tarfile

from helpers import (
    rewrite_shard,
    train_args,
    train_cli,
)

EVIL_NAMES = ["../../evil-up", "/{abs}/evil-abs", "nested/../../../evil-nested"]


def test_shard_member_names_are_never_used_as_paths(tiny_shards, tmp_path, monkeypatch, capsys):
    from toolkit import data

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    outside = tmp_path / "outside"  # an absolute path the names point into
    names = [n.format(abs=str(outside).lstrip("/")) for n in EVIL_NAMES]
    renamed: dict[str, list[str]] = {}  # shard -> its new keys

    for shard in ("test-000002.tar", "val-000001.tar", "train-000000.tar"):
        new_keys: dict[str, str] = {}

        def rename(name: str, payload: bytes, new_keys: dict = new_keys, shard: str = shard):
            key, ext = name.split(".", 1)
            new_key = new_keys.setdefault(key, f"{names[len(new_keys) % len(names)]}-{shard[:-4]}-{len(new_keys)}")
            return [(f"{new_key}.{ext}", payload)]

        rewrite_shard(shards / shard, rename)
        renamed[shard] = list(new_keys.values())
    with tarfile.open(shards / "test-000002.tar", "a") as tar:  # and a symlink member pointing outside
        link = tarfile.TarInfo("../../evil-link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    workdir = tmp_path / "a" / "b" / "c"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    before = {p for p in tmp_path.rglob("*")}

    info = data.load_info(str(shards))
    keys = {s["__key__"] for split in ("train", "val", "test") for s in data.raw_samples(str(shards), split, info)}
    assert {k for shard_keys in renamed.values() for k in shard_keys} <= keys  # plain strings, nothing more
    # training, evaluation, predictions.csv, the prediction grid and Grad-CAM all handle these keys
    assert train_cli(train_args(shards, tmp_path / "runs", "members", "train.epochs=1", "eval.plots=true")) == 0
    capsys.readouterr()
    predictions = (tmp_path / "runs" / "members" / "eval" / "test" / "predictions.csv").read_text().splitlines()
    assert set(renamed["test-000002.tar"]) <= {line.split(",")[0] for line in predictions}

    created = {p for p in tmp_path.rglob("*")} - before
    allowed = (tmp_path / "runs",)
    stray = [str(p) for p in created if not any(p == a or a in p.parents for a in allowed)]
    assert not stray, f"written outside the output folders: {stray}"
    assert not outside.exists()
    assert not [str(p) for p in created if "evil" in p.name]
