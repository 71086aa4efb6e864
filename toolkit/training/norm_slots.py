"""BatchNorm running statistics per micro-batch slot, so that they do not depend on the process count.

A global step is M micro-batches j = 0..M-1 (``formats.sample_order``). In training mode BatchNorm
normalizes with the micro-batch's own statistics (the same on any process count), but its running
statistics are updated in place: one process running micro-batches 0..3 would update one copy four
times per step, four processes one copy each once. So every slot j keeps its own copy, updated only
by micro-batch j, wherever j runs; the rank running j holds it. Validation merges them as
``train.dist_bn`` says (``reduce``: the mean over all M slots; ``broadcast``: slot 0's; then every
slot continues from the merged value, as each rank's own buffers did before slots existed), and a
checkpoint saves each slot, so a run continued on another process count gives every slot back.
With one process and no accumulation (M = 1) this is BatchNorm as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

NORM_SLOT_FILE = "norm_slot{j}.safetensors"  # in a checkpoint: slot j's running statistics
NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class NormSlots:
    """This rank's slots: the one in use lives in the model's buffers, the others in ``stored``."""

    def __init__(self, model: torch.nn.Module, slots: range, total: int):
        self.buffers = {n: b for n, b in model.named_buffers() if n.endswith(NORM_BUFFERS)}
        self.slots, self.total = list(slots), total
        self.current: Optional[int] = self.slots[0]
        self.stored: dict[int, dict[str, torch.Tensor]] = {j: self._copy() for j in self.slots[1:]}

    def _copy(self) -> dict[str, torch.Tensor]:
        return {n: b.detach().clone() for n, b in self.buffers.items()}

    @torch.no_grad()
    def _load(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            if name in self.buffers and self.buffers[name].shape == value.shape:
                self.buffers[name].copy_(value.to(self.buffers[name].dtype))

    def use(self, j: int) -> None:
        """Put slot ``j``'s statistics in the model (before micro-batch j's forward)."""
        if j == self.current:
            return
        if self.current is not None:
            self.stored[self.current] = self._copy()
        self._load(self.stored.pop(j))
        self.current = j

    def values(self, j: int) -> dict[str, torch.Tensor]:
        return self._copy() if j == self.current else self.stored[j]

    def merge(self, accelerator, how: str) -> None:
        """Before validation: the model (and, unless ``none``, every slot) gets the merged statistics."""
        if how == "none":  # each rank its own: the mean of its slots, the slots untouched
            if len(self.slots) > 1:
                self.use_values(_mean([self.values(j) for j in self.slots]), keep_slots=True)
            return
        if how == "reduce":
            local = {n: sum(self.values(j)[n].double() for j in self.slots) for n in self.buffers}
            if accelerator.num_processes > 1:
                local = {n: accelerator.reduce(v, "sum") for n, v in local.items()}
            merged = {n: v / self.total for n, v in local.items()}
        else:  # broadcast: slot 0's, which rank 0 holds
            merged = {n: v.clone() for n, v in self.values(self.slots[0]).items()}
            if accelerator.num_processes > 1:
                for value in merged.values():
                    dist.broadcast(value, src=0)
        self.use_values(merged, keep_slots=False)

    def use_values(self, values: dict[str, torch.Tensor], keep_slots: bool) -> None:
        if keep_slots and self.current is not None:
            self.stored[self.current] = self._copy()
            self.current = None  # the model holds a mix; the next use() loads a slot
        self._load({n: torch.round(v) if not self.buffers[n].is_floating_point() else v for n, v in values.items()})
        if not keep_slots:
            self.stored = {j: self._copy() for j in self.slots if j != self.current}

    def save(self, folder: Path) -> None:
        for j in self.slots:
            save_file({n: v.detach().cpu().contiguous() for n, v in self.values(j).items()}, str(folder / file_of(j)))

    def restore(self, folder: Path) -> bool:
        """Each slot's statistics from a checkpoint that saved them; False when it saved none."""
        files = {j: folder / file_of(j) for j in self.slots}
        if not all(f.exists() for f in files.values()):
            return False
        current, self.current = self.current, None
        self.stored = {j: load_file(str(f)) for j, f in files.items()}
        self.use(current if current is not None else self.slots[0])
        return True

    def restore_all(self, values: dict[str, torch.Tensor]) -> None:
        """Every slot of this rank from one set of statistics (a checkpoint of one buffer set per rank)."""
        self._load(values)
        self.stored = {j: self._copy() for j in self.slots if j != self.current}


def file_of(j: int) -> str:
    return NORM_SLOT_FILE.format(j=j)


def _mean(values: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: sum(v[n].double() for v in values) / len(values) for n in values[0]}
