"""The training sample order does not depend on the process count W or the loader worker count.

Every global step is the same list of sample keys for any valid W and any number of workers; an
invalid W is refused in one line naming the valid ones; resuming at a step continues the same list.
"""

from __future__ import annotations

import pytest
import torch
from test_loader import config, write_shards

from toolkit import data
from toolkit.config import load_config, resolve_config
from toolkit.errors import UsageError
from toolkit.formats.sample_order import SampleOrder, accumulation, piece_size, valid_process_counts

GLOBAL, BATCH = 16, 4  # 4 micro-batches of 4 per step: W in {1, 2, 4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("order")
    bad = {"train1_2": "corrupt", "train3_0": "no_cls"}
    return folder, write_shards(folder, {"train": [17, 17, 17, 17]}, bad=bad)


def steps_of(folder, info, world: int, workers: int, epoch: int = 1, start_step: int = 0, **kw) -> list[list[str]]:
    """Each global step's sample keys in micro-batch order (j), gathered from every rank's loader."""
    per_step: dict[int, dict[int, list[str]]] = {}
    skipped = 0
    for rank in range(world):
        loader = data.make_train_loader(
            config(folder, num_workers=workers, shuffle_buffer=5, **kw),
            info,
            batch_size=BATCH,
            rank=rank,
            world_size=world,
            seed=11,
            epoch=epoch,
            start_step=start_step,
            global_batch_size=GLOBAL,
        )
        for batch in loader:
            _, step, j = batch["position"]
            per_step.setdefault(step, {})[j] = batch["key"]
        skipped += loader.skipped
    steps = [[k for j in sorted(js) for k in js[j]] for _, js in sorted(per_step.items())]
    return steps + [[f"skipped {skipped}"]] if start_step == 0 else steps


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_global_step_has_the_same_keys_for_any_process_and_worker_count(shards, world, workers):
    folder, info = shards
    expected = steps_of(folder, info, 1, 0)
    assert len(expected) == 68 // GLOBAL + 1 and all(len(s) == GLOBAL for s in expected[:-1])
    assert expected[-1] == ["skipped 2"]  # the two bad samples are counted once, whoever met them
    keys = [k for s in expected[:-1] for k in s]
    assert len(keys) == len(set(keys)) and not {"train1_2", "train3_0"} & set(keys)
    assert steps_of(folder, info, world, workers) == expected


@pytest.mark.parametrize(("before", "after"), [(4, 2), (2, 1), (1, 4)])
def test_resuming_at_a_step_on_another_process_count_continues_the_same_keys(shards, before, after):
    folder, info = shards
    whole = steps_of(folder, info, before, 2)
    assert steps_of(folder, info, after, 0, start_step=2) == whole[2:-1]


def test_augmentation_follows_the_sample_not_the_rank_or_worker(shards):
    folder, info = shards

    seeds: dict[tuple, set] = {}  # device_augment's seed of each micro-batch, by its place

    def images(world: int, workers: int) -> dict[str, torch.Tensor]:
        out = {}
        for rank in range(world):
            loader = data.make_train_loader(
                config(folder, num_workers=workers, hflip=True),
                info,
                batch_size=BATCH,
                rank=rank,
                world_size=world,
                seed=3,
                global_batch_size=GLOBAL,
            )
            for batch in loader:
                out.update(zip(batch["key"], batch["image"]))
                seeds.setdefault(batch["position"], set()).add(batch["device_seed"])
        return out

    one, four = images(1, 0), images(4, 2)
    assert one.keys() == four.keys() and all(torch.equal(one[k], four[k]) for k in one)
    assert len(seeds) == 16 and all(len(s) == 1 for s in seeds.values())  # 4 steps x 4 micro-batches


def test_a_process_count_that_does_not_divide_the_step_is_refused_in_one_line(shards):
    folder, info = shards
    with pytest.raises(UsageError) as caught:
        data.make_train_loader(
            config(folder), info, batch_size=BATCH, rank=0, world_size=3, seed=0, global_batch_size=GLOBAL
        )
    message = str(caught.value)
    assert "\n" not in message and "continue on 1, 2, 4 process(es)" in message
    assert valid_process_counts(GLOBAL, BATCH) == [1, 2, 4]


def test_resolve_config_derives_accumulation_from_the_global_batch(shards):
    _, info = shards
    cfg = load_config(overrides=[f"train.batch_size={BATCH}", f"train.global_batch_size={GLOBAL}"])
    for world, accum in [(1, 4), (2, 2), (4, 1)]:
        train = resolve_config(cfg, info, environ={}, world_size=world).train
        assert (train.grad_accum_steps, train.global_batch_size, train.streams) == (accum, GLOBAL, 4)
    with pytest.raises(UsageError, match="continue on 1, 2, 4 process"):
        resolve_config(cfg, info, environ={}, world_size=3)
    unset = resolve_config(load_config(overrides=["train.batch_size=4"]), info, environ={}, world_size=2)
    assert (unset.train.grad_accum_steps, unset.train.global_batch_size) == (1, 8)  # as before the key existed
    with pytest.raises(UsageError, match="disagrees"):
        resolve_config(load_config(overrides=[*cfg_overrides(), "train.grad_accum_steps=3"]), info, environ={})


def cfg_overrides() -> list[str]:
    return [f"train.batch_size={BATCH}", f"train.global_batch_size={GLOBAL}"]


def test_pieces_and_streams_do_not_depend_on_the_process_count():
    order = SampleOrder(seed=0, global_batch_size=64, batch_size=32, streams=4, shards="x")
    assert (piece_size(32), order.pieces, order.micro_batches) == (16, 2, 2)
    assert [order.locate(1, 1, p) for p in range(2)] == [(2, 1), (3, 1)]
    assert list(order.rank_batches(1, 2)) == [1] and list(order.rank_batches(0, 1)) == [0, 1]
    assert accumulation(64, 32, 1) == 2
    assert order.mismatch(order.to_dict() | {"seed": 1}).startswith("train.seed is 0")


def test_with_fewer_shards_than_streams_the_order_is_still_the_same(tmp_path):
    info = write_shards(tmp_path, {"train": [34, 34]}, bad={"train0_5": "corrupt"})  # 2 shards, 4 streams
    expected = steps_of(tmp_path, info, 1, 0)
    assert expected[-1] == ["skipped 1"] and len({k for s in expected[:-1] for k in s}) == 64
    assert steps_of(tmp_path, info, 4, 2) == steps_of(tmp_path, info, 2, 0) == expected
