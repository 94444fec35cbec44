"""Data-parallel training across processes: what the Trainer needs when ``accelerate launch`` or ``torchrun`` starts
it more than once.

A launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`current` then joins the process group (gloo on
CPU, NCCL on CUDA) and every rank trains the same LoRA parameters. Each step, every rank computes the gradient of
its share of the global batch (rows ``rank::size``, divided by the whole batch's weight), the gradients are summed
across ranks, and every rank takes the same optimiser step: the update is the one-process update over the same
global batch, up to the order of float sums. This is DDP's arithmetic without DDP's wrapper: the label-token methods
call the model several times per micro-batch (a shared prefix, the trie's tree pass), which DDP's one-forward hooks
do not fit, and the trained parameters (LoRA, a head) are a few MB, so one flat all-reduce a step costs little.

Only rank 0 writes (checkpoints, metrics, the run folder); evaluation is split across the ranks and gathered, so every
rank takes the same early-stopping decisions. Without a launcher everything here is a no-op on one rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from classlm.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one rank of one when nothing launched several)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes: checkpoints, the metrics log, the run folder, the saved classifier."""
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's rows of a step's batch (strided: each rank gets a mix of lengths, so none waits on all the
        long rows)."""
        return idx[self.rank :: self.size]

    def span(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows; ranks in order cover 0..n, so gathering restores the order."""
        bounds = np.linspace(0, n, self.size + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def sum_gradients(self, params: Sequence[torch.Tensor], *values: float) -> list[float]:
        """Sum every parameter's gradient, and ``values``, across the ranks, in place, in one all-reduce; returns
        the summed values. A parameter that got no gradient on a rank (no rows there) counts as zeros."""
        if self.size == 1:
            return list(values)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        device = grads[0].device if grads else torch.device("cpu")
        flat = torch.cat([*(g.reshape(-1).float() for g in grads), torch.tensor(values, device=device).float()])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()
        return [float(v) for v in flat[offset:]]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (any picklable object: arrays, RNG states), in rank order, on every rank."""
        if self.size == 1:
            return [value]
        found: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(found, value)
        return found

    def broadcast_(self, params: Sequence[torch.Tensor]) -> None:
        """Every rank's ``params`` set to rank 0's, in place (one broadcast of them all, flattened)."""
        if self.size == 1 or not params:
            return
        flat = torch.cat([p.detach().reshape(-1).float() for p in params])
        torch.distributed.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p).to(p.dtype))
                offset += p.numel()

    def main_first(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on rank 0 only (it writes), the others waiting; whatever it raises is raised on every rank (a
        ConfigError as itself), so none goes on to wait forever for a rank that stopped."""
        failure: tuple[bool, str] | None = None
        error: BaseException | None = None
        if self.main:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001  # told to the other ranks, then raised here as it was
                failure, error = (isinstance(exc, ConfigError), str(exc)), exc
        if self.size > 1:
            shared = [failure]
            torch.distributed.broadcast_object_list(shared, src=0)
            failure = shared[0]
        if error is not None:
            raise error
        if failure is not None:
            config, text = failure
            raise ConfigError(text) if config else RuntimeError(f"the main training process failed: {text}")


def launched_size() -> int:
    """How many processes a launcher started (``WORLD_SIZE``; 1 without one)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def current() -> World:
    """This process's :class:`World`, joining the process group first when a launcher started several processes."""
    dist = torch.distributed
    if not dist.is_available():
        return World()
    if not dist.is_initialized():
        if launched_size() == 1:
            return World()
        # gloo for CPU tensors, NCCL for CUDA ones: training on CPU works on a GPU machine too (--device cpu).
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():  # each process on its own GPU, before NCCL binds one
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)
        log.info("joined %d training processes as rank %d (%s)", dist.get_world_size(), dist.get_rank(), backend)
    return World(dist.get_rank(), dist.get_world_size())


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``): the GPU it trains on."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def finish() -> None:
    """Leave the process group (when one was joined): a process that exits inside one leaves the others a warning."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
