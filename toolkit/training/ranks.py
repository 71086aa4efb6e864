"""What the training processes agree on: joining after a restart, the epoch loss, norm statistics, checksums.

Every function here is a collective or prepares one: all ranks call it at the same point of the
loop (``toolkit.training.loop``), or none does.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from accelerate.utils import broadcast, gather_object

from toolkit.errors import DataError, on_every_rank
from toolkit.training.state import TrainerState, TrainingError


def join_after_elastic_restart(timeout: Optional[timedelta] = None) -> None:
    """Start the process group of a torchrun restart under keys of its own.

    torchrun's restarted workers meet in the same agent store as the ones that died; without a
    prefix per restart, gloo reads the dead ranks' addresses and fails to connect (torch 2.14).
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    if restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timedelta(minutes=30)
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(
        "nccl" if torch.cuda.is_available() else "gloo",
        rank=rank,
        world_size=world,
        store=dist.PrefixStore(f"toolkit/restart-{restart}", store),
        timeout=timeout,
    )


# How gloo words a collective whose peer died (reset, closed) or stopped answering (timed out)
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out waiting")


def lost_peer_error(err: BaseException, timeout_s: Optional[float]) -> Optional[DataError]:
    """One line for a collective that failed because another process died or stopped answering, else None.

    This process then exits (code 1) at once, so an elastic agent can restart the survivors.
    """
    if not isinstance(err, RuntimeError) or not (dist.is_available() and dist.is_initialized()):
        return None
    first = (str(err).strip().splitlines() or [""])[0]
    if not isinstance(err, dist.DistError) and not any(marker in first for marker in PEER_LOST):
        return None
    waited = (
        f"train.collective_timeout_s={timeout_s:g}" if timeout_s else "torch's default, train.collective_timeout_s=null"
    )
    return DataError(
        f"lost another process mid-collective ({first.split('] ', 1)[-1][:160]}; waits at most {waited}); "
        "under torchrun's elastic agents (launch/torchrun_elastic.sh) or a SLURM --requeue job the run resumes "
        "from its last checkpoint on the processes left; by hand: the same command plus train.resume=auto"
    )


class RunningLoss:
    """The epoch's train loss: summed on the device (no sync per step), checked for NaN at log points.

    Every reduction goes through ``flush``, which folds the device sum of every process into the state
    that checkpoints carry, with the count of every process's micro-batches: the epoch's mean is then
    the same over any process count, also across a resume on another one.
    """

    def __init__(self, accelerator, state: TrainerState):
        self.accelerator, self.state = accelerator, state
        self.total = torch.zeros((), device=accelerator.device)
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet checked for NaN

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.total += loss
        self.pending.append((step, loss))
        self.state.epoch_loss_count += self.accelerator.num_processes

    def check(self) -> float:
        """Mean of the pending micro-batch losses of every process; stop on the first non-finite one, naming its step.

        With N processes every rank learns whether any rank saw one (the same collective on all of
        them, even with nothing pending), so all stop together instead of waiting for the one that left.
        """
        pending, self.pending = self.pending, []
        values = torch.stack([loss for _, loss in pending]).float().cpu() if pending else torch.zeros(0)
        bad = (~torch.isfinite(values)).nonzero()
        first_bad = pending[int(bad[0])][0] if len(bad) else 0
        worst = first_bad
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(first_bad)], device=self.accelerator.device)
            worst = int(self.accelerator.reduce(flag, "max").item())
        if worst:
            what = (
                f"{values[int(bad[0])].item()} at step {first_bad}"
                if first_bad
                else f"non-finite on another process at step {worst}"
            )
            raise on_every_rank(
                TrainingError(
                    f"loss became {what}; lower optimizer.lr, set train.grad_clip, or set train.skip_nonfinite=true. "
                    "The last good checkpoint is untouched."
                )
            )
        if self.accelerator.num_processes > 1:
            total = torch.tensor(
                [float(values.double().sum()), float(len(values))], dtype=torch.float64, device=self.accelerator.device
            )
            total = self.accelerator.reduce(total, "sum").tolist()
            return total[0] / total[1] if total[1] else float("nan")
        return float(values.mean()) if pending else float("nan")

    def flush(self) -> None:
        self.state.epoch_loss_sum += float(self.accelerator.reduce(self.total.clone(), "sum").item())
        self.total.zero_()


def sync_norm_statistics(accelerator, model: torch.nn.Module, how: str) -> None:
    """Running mean/var of every norm layer: averaged over ranks ("reduce") or rank 0's ("broadcast")."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if not name.endswith(("running_mean", "running_var")):
                continue
            if how == "reduce":
                buffer.copy_(accelerator.reduce(buffer.clone(), "mean"))
            else:
                torch.distributed.broadcast(buffer, src=0)


def rank_weight_checksums(accelerator, model: torch.nn.Module) -> list[float]:
    """One number per process summarising its weights: equal on every rank unless DDP went wrong."""
    with torch.no_grad():
        total = sum(
            float(p.detach().double().sum()) + 1e-3 * float(p.detach().double().abs().sum()) for p in model.parameters()
        )
    return gather_object([total]) if accelerator.num_processes > 1 else [total]


def any_process(accelerator, value: bool) -> bool:
    return agreed_max(accelerator, [1.0 if value else 0.0])[0] > 0


def agreed_max(accelerator, values: Sequence[float]) -> list[float]:
    """The largest of each value over the ranks, the same numbers on every rank, in one collective.

    For decisions made from what differs per rank (a stop flag, a rank's own clock): each rank
    deciding alone would leave the others waiting in the next collective.
    """
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], device=accelerator.device, dtype=torch.float64)
    return [float(v) for v in accelerator.reduce(tensor, "max").tolist()]


def main_process_value(accelerator, value: int) -> int:
    """The main process's ``value`` on every rank: for a decision that must not differ between ranks (one
    that stopped alone would leave the others waiting at the next collective)."""
    if accelerator.num_processes == 1:
        return value
    return int(broadcast(torch.tensor([value], device=accelerator.device, dtype=torch.long), from_process=0).item())
