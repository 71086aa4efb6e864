"""The shuffle buffer is bounded in bytes, not only in samples (issue 33, item 7).

1,000 samples of up to 64 MiB each (the member cap) came to about 62 GiB per loader worker; the
buffer now holds at most ``SHUFFLE_BUFFER_BYTES`` (128 MiB), or one sample when that alone is larger.
"""

from __future__ import annotations

import random

from toolkit.data.loader import SHUFFLE_BUFFER_BYTES, _shuffled


def counted(n: int, size: int, state: dict):
    """``n`` samples of ``size`` bytes, made only when asked; ``state`` tracks how many are alive in the buffer."""
    for i in range(n):
        state["made"] += 1
        state["most"] = max(state["most"], state["made"] - state["taken"])
        yield {"__key__": f"s{i}", "jpg": b"\0" * size, "cls": b"0"}


def drain(samples, state: dict) -> list[str]:
    keys = []
    for sample in samples:
        state["taken"] += 1
        keys.append(sample["__key__"])
        del sample
    return keys


def test_large_samples_never_fill_the_buffer_past_its_byte_bound():
    state = {"made": 0, "taken": 0, "most": 0}
    size = SHUFFLE_BUFFER_BYTES // 4 + 1  # 4 of them pass the bound
    keys = drain(_shuffled(counted(12, size, state), 1000, random.Random(0)), state)
    assert sorted(keys) == sorted(f"s{i}" for i in range(12))  # every sample, once
    assert state["most"] <= 4, state  # at most 3 held plus the one coming in, never all 12 (1,000 allowed)


def test_a_sample_larger_than_the_bound_passes_alone():
    state = {"made": 0, "taken": 0, "most": 0}
    keys = drain(_shuffled(counted(5, 2000, state), 1000, random.Random(0), max_bytes=1000), state)
    assert sorted(keys) == [f"s{i}" for i in range(5)] and state["most"] <= 2, state


def test_within_the_byte_bound_the_order_is_the_count_only_buffers():
    """The seeded order of ordinary shards (and so every seeded run) is unchanged."""

    def count_only(samples, size, rng):
        buffer = []
        for sample in samples:
            if len(buffer) < size:
                buffer.append(sample)
                continue
            i = rng.randrange(size)
            yield buffer[i]
            buffer[i] = sample
        rng.shuffle(buffer)
        yield from buffer

    samples = [{"__key__": f"s{i}", "jpg": b"x" * 500} for i in range(300)]
    ours = [s["__key__"] for s in _shuffled(iter(samples), 64, random.Random(7))]
    theirs = [s["__key__"] for s in count_only(iter(samples), 64, random.Random(7))]
    assert ours == theirs
