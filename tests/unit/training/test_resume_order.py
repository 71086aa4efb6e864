"""What ``train.resume=auto`` compares when it looks for the run to continue, with a global batch set."""

from __future__ import annotations

from toolkit.config import load_config, resolve_config, to_dict
from toolkit.training.run_folder import comparable

INFO = {"classes": ["cat", "dog"], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
GLOBAL = ["train.batch_size=4", "train.global_batch_size=16"]


def resolved(overrides: list[str], world: int) -> dict:
    return comparable(to_dict(resolve_config(load_config(overrides=overrides), INFO, environ={}, world_size=world)))


def test_resume_auto_finds_the_run_of_another_process_count():
    """Accumulation depends on W, and the order keys are checked by the checkpoint's record (naming the key):
    both are left out of the comparison, the rest of the recipe is not."""
    assert resolved(GLOBAL, 1) == resolved(GLOBAL, 2) == resolved(GLOBAL, 4)
    assert resolved([*GLOBAL, "train.seed=1"], 1) != resolved(GLOBAL, 1)
    assert resolved([*GLOBAL, "optimizer.lr=0.5"], 2) != resolved(GLOBAL, 2)
