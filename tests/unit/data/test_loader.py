"""The shard loader: equal steps on every rank, exact evaluation coverage, determinism, resume, bad data.

Shards here are written by a tiny local writer (tarfile + 32-48 px PIL JPEGs), so the layouts
can be deliberately uneven or broken; one test also reads what ``toolkit.make_shards`` packs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import logging
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit import data
from toolkit.config import DataConfig, resolve_normalization
from toolkit.errors import DataError, UsageError
from toolkit.formats.sample_order import piece_size

MEAN, STD = [0.25, 0.5, 0.75], [0.5, 0.25, 0.125]


def jpeg(rng: np.random.Generator, width: int = 48, height: int = 40) -> bytes:
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def write_shards(folder: Path, layout: dict[str, list[int]], bad: dict[str, str] | None = None, seed: int = 0) -> dict:
    """Write ``{split}-NNNNNN.tar`` shards of the given sizes and their info.json.

    ``bad`` maps a key (``{split}{shard}_{i}``) to how that sample is broken: "corrupt" (bytes
    that are no image), "truncated" (a JPEG cut in half), "no_cls" or "no_jpg".
    """
    bad = bad or {}
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "format_version": 1,
        "dataset": "test",
        "synthetic": True,
        "classes": ["cat", "dog"],
        "splits": {},
        "normalization": {"mean": MEAN, "std": STD, "computed_on": "train", "num_images": 1},
        "skipped": [],
    }
    for split, sizes in layout.items():
        shards, counts = [], Counter()
        for s, size in enumerate(sizes):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for i in range(size):
                    key, label = f"{split}{s}_{i}", (s + i) % 2
                    members = {
                        "cls": str(label).encode(),
                        "jpg": jpeg(rng),
                        "json": json.dumps({"breed": f"breed{i % 3}", "class_id": 1}).encode(),
                    }
                    kind = bad.get(key)
                    if kind == "corrupt":
                        members["jpg"] = b"this is not a jpeg"
                    elif kind == "truncated":
                        members["jpg"] = members["jpg"][: len(members["jpg"]) // 2]
                    elif kind in ("no_cls", "no_jpg"):
                        del members[kind[3:]]
                    for ext, payload in sorted(members.items()):
                        member = tarfile.TarInfo(f"{key}.{ext}")
                        member.size = len(payload)
                        tar.addfile(member, io.BytesIO(payload))
                    counts[label] += 1
            name = f"{split}-{s:06d}.tar"
            (folder / name).write_bytes(buffer.getvalue())
            shards.append(
                {
                    "name": name,
                    "num_samples": size,
                    "bytes": len(buffer.getvalue()),
                    "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
                }
            )
        info["splits"][split] = {"num_samples": sum(sizes), "class_counts": dict(counts), "shards": shards}
    (folder / "info.json").write_text(json.dumps(info))
    return json.loads(json.dumps(info))  # as load_info reads it back


def config(folder, **overrides) -> DataConfig:
    """A resolved data section (the loaders take one): MEAN/STD unless overridden."""
    defaults = dict(
        mean=MEAN,
        std=STD,
        shards=str(folder),
        image_size=32,
        resize_size=36,
        num_workers=0,
        shuffle_buffer=8,
        persistent_workers=False,
        pin_memory=False,
    )
    return DataConfig(**(defaults | overrides))


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["key"] == y["key"] and torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        for x, y in zip(a, b)
    )


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("uneven")
    return folder, write_shards(folder, {"train": [7, 13, 3, 20, 9], "val": [5, 11, 2], "test": [4]})


# ---------------------------------------------------------------------------------------------
# Training: equal steps, quotas, coverage


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_gets_the_same_number_of_full_batches(uneven, world, workers):
    folder, info = uneven
    batch = 4
    cfg = config(folder, num_workers=workers)
    expected = 52 // (batch * world)
    for rank in range(world):
        loader = data.make_train_loader(cfg, info, batch_size=batch, rank=rank, world_size=world, seed=1)
        batches = list(loader)
        assert len(loader) == len(batches) == expected
        assert all(b["image"].shape == (batch, 3, 32, 32) and b["image"].dtype == torch.uint8 for b in batches)
        assert all(b["label"].dtype == torch.long and len(b["key"]) == batch for b in batches)


def test_each_worker_makes_its_share_of_the_pieces(uneven):
    folder, info = uneven
    loader = data.make_train_loader(config(folder, num_workers=2), info, batch_size=4, rank=0, world_size=1, seed=0)
    stream = loader.stream
    assert stream.steps == len(loader) == 52 // 4 == 13
    assert (stream.piece, stream.order.pieces, stream.order.streams) == (4, 1, 1)
    produced = [list(stream.worker_pieces(w, 2, epoch=0)) for w in range(2)]
    assert [len(p) for p in produced] == [7, 6]
    assert all(len(c["key"]) == 4 for p in produced for c in p)


@pytest.mark.parametrize(("batch", "piece"), [(128, 16), (256, 16), (64, 16), (3, 3), (4, 4), (127, 1), (6, 6)])
def test_piece_size_divides_the_batch_whatever_the_workers(batch, piece):
    assert piece_size(batch) == piece


def test_piece_t_comes_from_worker_t_mod_w_and_every_worker_helps_with_the_first_batch(uneven):
    folder, info = uneven
    loader = data.make_train_loader(config(folder, num_workers=2), info, batch_size=32, rank=0, world_size=1, seed=2)
    stream = loader.stream
    produced = [list(stream.worker_pieces(w, 2, epoch=0)) for w in range(2)]
    in_order = [produced[t % 2][t // 2] for t in range(stream.order.pieces * len(loader))]
    batches = list(loader)  # two real worker processes, joined in the main process
    assert keys_of(batches) == keys_of(in_order)
    assert torch.equal(torch.cat([b["image"] for b in batches]), torch.cat([c["image"] for c in in_order]))
    first = set(batches[0]["key"])
    assert all(first & set(keys_of(p[:1])) for p in produced)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # no worker process is started here
@pytest.mark.parametrize(("train", "batch", "workers"), [([3], 2, 4), ([12, 12, 12, 12], 4, 3)])
def test_producing_workers_per_epoch_is_min_of_workers_and_pieces(tmp_path, train, batch, workers):
    info = write_shards(tmp_path, {"train": train})
    loader = data.make_train_loader(
        config(tmp_path, num_workers=workers), info, batch_size=batch, rank=0, world_size=1, seed=0
    )
    stream = loader.stream
    producers = [w for w in range(workers) if list(stream.worker_pieces(w, workers, epoch=0))]
    assert len(producers) == min(workers, len(loader)) == (1 if train == [3] else 3)


@pytest.mark.parametrize("layout", [[12, 12, 12, 12], [24, 24]], ids=["shard-level", "sample-level"])
def test_an_epoch_covers_every_sample_once_when_shards_are_even(tmp_path, layout):
    info = write_shards(tmp_path, {"train": layout})
    cfg = config(tmp_path, num_workers=2, shuffle_buffer=5)
    keys = []
    for rank in range(2):
        loader = data.make_train_loader(cfg, info, batch_size=4, rank=rank, world_size=2, seed=3)
        keys += keys_of(list(loader))
    assert len(keys) == len(set(keys)) == 48


def test_too_few_shards_warns_once_and_says_how_to_fix(tmp_path, caplog, monkeypatch):
    info = write_shards(tmp_path, {"train": [10]})
    monkeypatch.setattr(data.loader, "_layout_warned", False)
    with caplog.at_level(logging.WARNING, logger="toolkit.data.loader"):
        for rank in range(2):
            data.make_train_loader(config(tmp_path), info, batch_size=2, rank=rank, world_size=2, seed=0)
    warnings = [r for r in caplog.records if "--shard-size" in r.getMessage()]
    assert len(warnings) == 1


def test_batch_larger_than_the_split_is_a_usage_error(uneven):
    folder, info = uneven
    with pytest.raises(UsageError, match="lower the batch size"):
        data.make_train_loader(config(folder), info, batch_size=30, rank=0, world_size=2, seed=0)


# ---------------------------------------------------------------------------------------------
# Determinism and resume


def test_same_seed_same_batches_and_a_new_epoch_reorders(uneven):
    folder, info = uneven

    def make():
        return data.make_train_loader(config(folder), info, batch_size=4, rank=0, world_size=1, seed=5)

    first, second = make(), make()
    epoch0 = list(first)
    assert same_batches(epoch0, list(second))
    second.set_epoch(1)
    epoch1 = list(second)
    assert len(epoch1) == len(epoch0) and keys_of(epoch1) != keys_of(epoch0)


def test_loading_leaves_the_main_process_rng_alone(uneven):
    folder, info = uneven
    loader = data.make_train_loader(config(folder), info, batch_size=4, rank=0, world_size=1, seed=5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(loader)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_mid_epoch_gives_the_same_remaining_batches(uneven, workers):
    folder, info = uneven
    cfg = config(folder, num_workers=workers)
    whole = list(data.make_train_loader(cfg, info, batch_size=3, rank=1, world_size=2, seed=7, epoch=2))
    assert len(whole) == 8
    for start in (3, 4):
        resumed = data.make_train_loader(
            cfg, info, batch_size=3, rank=1, world_size=2, seed=7, epoch=2, start_step=start
        )
        assert len(resumed) == 8
        assert same_batches(list(resumed), whole[start:])


@pytest.mark.parametrize("persistent", [True, False])
def test_worker_processes_see_the_new_epoch(uneven, persistent):
    folder, info = uneven
    cfg = config(folder, num_workers=2, persistent_workers=persistent)
    loader = data.make_train_loader(cfg, info, batch_size=4, rank=0, world_size=1, seed=9)
    epoch0 = list(loader)
    loader.set_epoch(1)
    epoch1 = list(loader)
    loader.set_epoch(1, start_step=5)
    tail = list(loader)
    fresh = list(data.make_train_loader(cfg, info, batch_size=4, rank=0, world_size=1, seed=9, epoch=1))
    assert keys_of(epoch1) != keys_of(epoch0)
    assert same_batches(epoch1, fresh)
    assert same_batches(tail, fresh[5:])


# ---------------------------------------------------------------------------------------------
# Evaluation


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_yields_every_sample_exactly_once(uneven, world, workers):
    folder, info = uneven
    cfg = config(folder, num_workers=workers)
    keys, breeds = [], []
    for rank in range(world):
        loader = data.make_eval_loader(cfg, info, "val", batch_size=4, rank=rank, world_size=world)
        batches = list(loader)
        assert len(loader) == len(batches)
        assert all(len(b["key"]) == len(b["breed"]) == len(b["label"]) == b["image"].shape[0] <= 4 for b in batches)
        keys += keys_of(batches)
        breeds += [x for b in batches for x in b["breed"]]
    assert sorted(keys) == sorted(f"val{s}_{i}" for s, n in enumerate([5, 11, 2]) for i in range(n))
    assert set(breeds) == {"breed0", "breed1", "breed2"}


def test_normalization_comes_from_info_json(uneven):
    folder, info = uneven
    cfg = config(folder, mean=None, std=None)
    resolved = resolve_normalization(cfg, info)
    assert (resolved.mean, resolved.std) == (MEAN, STD)
    given = resolve_normalization(dataclasses.replace(cfg, mean=[0.5] * 3), info)
    assert (given.mean, given.std) == ([0.5] * 3, STD)
    batch = next(iter(data.make_eval_loader(resolved, info, "test", batch_size=1, rank=0, world_size=1)))
    sample = next(data.read_samples(str(folder), "test"))
    expected = data.build_eval_transform(resolved)(sample["image"])
    assert batch["key"] == [sample["key"]] and torch.allclose(batch["image"][0], expected)
    with pytest.raises(UsageError, match="data.mean"):
        resolve_normalization(cfg, {k: v for k, v in info.items() if k != "normalization"})


# ---------------------------------------------------------------------------------------------
# Bad data


BAD = {"val0_1": "corrupt", "val1_4": "truncated", "val1_7": "no_cls", "val2_0": "no_jpg"}


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("broken")
    return folder, write_shards(
        folder, {"train": [6, 6, 6, 6], "val": [5, 11, 2]}, bad=BAD | {"train1_2": "corrupt", "train3_0": "no_cls"}
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_skipped_and_counted(broken, workers):
    folder, info = broken
    cfg = config(folder, num_workers=workers)
    keys, skipped = [], 0
    for rank in range(2):
        batches = list(data.make_eval_loader(cfg, info, "val", batch_size=3, rank=rank, world_size=2))
        keys += keys_of(batches)
        skipped += sum(b["skipped"] for b in batches)
    assert skipped == len(BAD) and len(keys) == len(set(keys)) == 18 - len(BAD)
    assert not set(keys) & set(BAD)

    train = data.make_train_loader(cfg, info, batch_size=4, rank=0, world_size=1, seed=0)
    batches = list(train)
    assert len(batches) == 6 and all(len(b["key"]) == 4 for b in batches)  # quota filled from later samples
    assert train.skipped == sum(b["skipped"] for b in batches) >= 1
    assert not set(keys_of(batches)) & {"train1_2", "train3_0"}


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_after_the_last_batch_are_still_counted(tmp_path, workers):
    bad = {"val0_4": "corrupt", "val0_5": "no_cls", "val1_0": "corrupt", "val1_1": "no_jpg"}
    info = write_shards(tmp_path, {"val": [6, 2]}, bad=bad)  # the second shard has nothing usable
    loader = data.make_eval_loader(
        config(tmp_path, num_workers=workers), info, "val", batch_size=4, rank=0, world_size=1
    )
    batches = list(loader)
    assert sum(b["skipped"] for b in batches) == loader.skipped == 4
    assert sorted(keys_of(batches)) == [f"val0_{i}" for i in range(4)]


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_mode_names_the_shard_and_the_key(broken, workers):
    folder, info = broken
    loader = data.make_eval_loader(
        config(folder, strict=True, num_workers=workers), info, "val", batch_size=3, rank=0, world_size=1
    )
    with pytest.raises(DataError, match=r"val-00000\d\.tar: sample val\d_\d+: .*strict") as caught:
        list(loader)
    assert "\n" not in str(caught.value)


def test_truncated_and_missing_shards_are_counted(tmp_path):
    info = write_shards(tmp_path, {"train": [8, 8], "val": [6, 6, 6, 6]})
    cut = tmp_path / "val-000001.tar"
    cut.write_bytes(cut.read_bytes()[:3000])  # inside the second sample
    (tmp_path / "val-000002.tar").unlink()
    with pytest.raises(UsageError, match="val-000002.tar"):
        data.check_shards_exist(str(tmp_path), info, ["train", "val"])
    data.check_shards_exist(str(tmp_path), info, ["train"])

    for world, workers in [(1, 0), (3, 2)]:  # shard-level and sample-level splitting
        keys, skipped = [], 0
        for rank in range(world):
            loader = data.make_eval_loader(
                config(tmp_path, num_workers=workers), info, "val", batch_size=4, rank=rank, world_size=world
            )
            batches = list(loader)
            keys += keys_of(batches)
            skipped += loader.skipped
        assert len(keys) == len(set(keys)) and len(keys) + skipped == 24
        assert 6 + 5 <= skipped <= 6 + 6 and {f"val0_{i}" for i in range(6)} <= set(keys)


# ---------------------------------------------------------------------------------------------
# Locations: folders, brace patterns, pipe: commands


def test_brace_pattern_and_pipe_urls(uneven):
    folder, info = uneven
    pattern = f"{folder}/train-{{000000..000002}}.tar"
    assert data.load_info(pattern) == info
    assert data.split_urls(pattern, "train", info) == [f"{folder}/train-00000{i}.tar" for i in range(3)]
    assert data.split_urls(pattern, "val", info) == data.split_urls(str(folder), "val", info)  # from info.json
    loader = data.make_train_loader(config(pattern), info, batch_size=2, rank=0, world_size=1, seed=0)
    assert len(loader) == (7 + 13 + 3) // 2
    assert {k[:6] for k in keys_of(list(loader))} <= {"train0", "train1", "train2"}

    pipe = f"pipe:cat {folder}/{{split}}-{{000000..000002}}.tar"
    assert data.load_info(pipe) == info

    def every(shards):
        return sorted(
            keys_of(list(data.make_eval_loader(config(shards), info, "val", batch_size=4, rank=0, world_size=1)))
        )

    assert every(pipe) == every(str(folder))


def test_http_urls(uneven):
    folder, info = uneven
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert data.load_info(base) == info
        assert data.split_urls(base, "val", info)[0] == f"{base}/val-000000.tar"
        loader = data.make_eval_loader(config(base), info, "val", batch_size=4, rank=0, world_size=1)
        assert len(keys_of(list(loader))) == 18
    finally:
        server.shutdown()
        server.server_close()


def test_missing_or_invalid_info_json_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="toolkit.make_shards"):
        data.load_info(str(tmp_path / "nowhere"))
    (tmp_path / "info.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        data.load_info(str(tmp_path))
    (tmp_path / "info.json").write_text(json.dumps({"format_version": 99, "splits": {}}))
    with pytest.raises(UsageError, match="format_version"):
        data.load_info(str(tmp_path))


def test_read_samples_in_packed_order_with_keys_and_limit(uneven):
    folder, _ = uneven
    first = list(data.read_samples(str(folder), "val", limit=3))
    assert [s["key"] for s in first] == ["val0_0", "val0_1", "val0_2"]
    assert first[0]["image"].mode == "RGB" and first[0]["image"].size == (48, 40)
    assert first[1]["meta"]["breed"] == "breed1" and first[1]["label"] == 1
    picked = list(data.read_samples(str(folder), "val", keys={"val2_1", "val1_0"}))
    assert [s["key"] for s in picked] == ["val1_0", "val2_1"]


def test_decode_jpeg_draft_keeps_the_shorter_side_above_the_hint():
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 100, 50)).save(buffer, "JPEG")
    assert data.decode_jpeg(buffer.getvalue(), 70).size == (100, 75)  # 1/4 scale: 75 >= 70
    assert data.decode_jpeg(buffer.getvalue(), 200).size == (400, 300)  # 1/2 would go below 200
    assert data.decode_jpeg(buffer.getvalue()).size == (400, 300)


def test_synthetic_batches_match_the_loader_format():
    batches = data.synthetic_batches(batch_size=2, image_size=16, steps=3)
    assert len(batches) == 3
    batch = next(iter(batches))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["label"].dtype == torch.long and len(batch["key"]) == 2


def test_reads_what_make_shards_packs(tmp_path):
    make_shards = pytest.importorskip("toolkit.data.shards")
    from toolkit.data.oxford import make_synthetic_dataset

    source = make_synthetic_dataset(tmp_path / "source", 40, image_size=32)
    info = make_shards.pack_dataset(source, tmp_path / "shards", shard_size=6, workers=1, show_progress=False)
    folder = str(tmp_path / "shards")
    data.check_shards_exist(folder, info, ["train", "val", "test"])
    for split in ("train", "val", "test"):
        loader = data.make_eval_loader(config(folder), info, split, batch_size=4, rank=0, world_size=1)
        assert len(keys_of(list(loader))) == data.split_size(info, split)
