"""Process-group set-up for `torchrun`: nccl on GPU, gloo on CPU; a single process needs none."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from tinystories.errors import PeerFailed, before_exit, exit_status_of

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Distributed:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    before_exit(_leave_process_group)
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size)


def _ignore_sigterm() -> None:
    # torchrun terminates the other processes as soon as one exits; this one is already on its way out with its
    # own status, which a SIGTERM would replace.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _leave_process_group() -> None:
    """On an error exit: destroy the process group, so that exiting is not an error of its own."""
    if dist.is_initialized():
        dist.destroy_process_group()


if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun, from the first error a script can meet
    before_exit(_ignore_sigterm)


def process_device(device: torch.device, distributed: Distributed) -> torch.device:
    """The device this process uses: under torchrun each process takes the GPU of its local rank."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", distributed.local_rank if distributed.enabled else (device.index or 0))


def main_first(first: Callable[[], T], then: Callable[[], T], distributed: Distributed) -> T:
    """`first()` on rank 0, then `then()` on the other ranks (which, e.g., reuse the files rank 0 prepared).

    When `first()` fails, the other ranks raise PeerFailed with the status rank 0 exits with, rather than failing
    in their next collective with a traceback of their own; rank 0 alone reports the error.
    """
    if not distributed.enabled:
        return first()
    failure: Optional[BaseException] = None
    result = None
    if distributed.is_main:
        try:
            result = first()
        except BaseException as error:
            failure = error
    status = [exit_status_of(failure)]
    dist.broadcast_object_list(status, src=0)
    if failure is not None:
        raise failure
    if status[0]:
        raise PeerFailed(status[0])
    return result if distributed.is_main else then()


def all_reduce_sum(tensor: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    """The sum of `tensor` over ranks (itself when running alone)."""
    if distributed.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any, distributed: Distributed) -> list[Any]:
    """Every rank's `value`, in rank order (a list of one when running alone)."""
    if not distributed.enabled:
        return [value]
    gathered: list[Any] = [None] * distributed.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def max_over_ranks(value: float, distributed: Distributed, device: torch.device) -> float:
    """The largest `value` of any rank; running alone, `value` itself without touching the device (no host
    synchronisation)."""
    if not distributed.enabled:
        return value
    tensor = torch.tensor([float(value)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def shutdown(distributed: Distributed) -> None:
    if distributed.enabled and dist.is_initialized():
        dist.destroy_process_group()
