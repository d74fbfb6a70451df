"""The process group for ``torchrun``, and the few collectives training needs; nothing at all without it.

``torchrun --nproc_per_node=N train.py ...`` starts N processes and puts ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in each one's environment. ``process_group()`` joins them (``env://``) when
``WORLD_SIZE`` > 1 and leaves the group on the way out, error or Ctrl-C included; with ``WORLD_SIZE`` unset or 1
it does nothing, and every helper below is then a no-op, so a plain ``python train.py`` is unchanged::

    with process_group() as ctx:                          # ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main
        device = local_device("auto", ctx)                # cuda:LOCAL_RANK under torchrun on GPUs
        model = wrap(LeNet().to(device))                  # DistributedDataParallel when distributed
        ...
        unwrap(model).state_dict()                        # no "module." prefix: loads in a single process

A ``DistributedDataParallel`` model still referenced when the block ends keeps the group, and its threads, alive
until the interpreter exits, where a gloo thread can abort the process: train it in a function called inside the
block, as ``train.py`` does, or ``del`` it before the block ends.

One process group serves both kinds of tensor: ``cpu:gloo,cuda:nccl`` where CUDA is available (gradients and
metrics on the GPU go through NCCL; the stop vote and the object broadcasts stay on the CPU, through gloo, without
waiting for the GPU), plain gloo otherwise.

Every helper is a collective: all ranks must call it at the same point of the program, or none may — a call made
by one rank alone waits for the others forever.
"""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "Context",
    "process_group",
    "rank",
    "under_torchrun",
    "local_device",
    "wrap",
    "unwrap",
    "all_reduce_sum",
    "any_rank",
    "largest",
    "broadcast",
    "first_error",
    "local_batch_size",
]


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes checkpoints."""
        return self.rank == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextmanager
def process_group() -> Iterator[Context]:
    """Join the ``torchrun`` job described by the environment (``env://``) if ``WORLD_SIZE`` > 1; leave it after.

    Yields the process's ``Context``; ``Context()`` (rank 0 of 1) when there is no job to join.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        yield Context()
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    # The group must be gone, its threads joined, before the interpreter exits: a gloo thread still releasing a
    # collective's tensor then needs the GIL, and Python's finalization aborts the process ("terminate called without
    # an active exception"). torch._dynamo, imported by DistributedDataParallel's constructor, keeps a group that
    # exists when it is first imported alive past destroy_process_group; imported before the group, it holds none.
    importlib.import_module("torch._dynamo")
    dist.init_process_group(backend, init_method="env://")
    try:
        yield Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    finally:
        gc.collect()  # DistributedDataParallel's reducer, often in a reference cycle, holds the group too
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the process group; 0 without one."""
    return dist.get_rank() if _active() else 0


def under_torchrun() -> bool:
    """Started by torchrun (any number of processes, one included): it forwards a signal to every process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def local_device(choice: str, ctx: Context) -> torch.device:
    """``"auto"``, ``"cpu"`` or ``"cuda"`` as this process's device: ``cuda:LOCAL_RANK`` for CUDA, made current.

    Raises ``ValueError`` when CUDA is asked for and there is none, or fewer GPUs than processes on this machine.
    """
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            "--device cuda, but no CUDA device is available: use --device cpu (or auto, which picks CUDA "
            "when there is one)"
        )
    if ctx.world_size == 1:
        return torch.device("cuda")
    if ctx.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {ctx.local_rank} needs GPU {ctx.local_rank}, but this machine has "
            f"{torch.cuda.device_count()}: start at most that many processes per node (--nproc_per_node)"
        )
    torch.cuda.set_device(ctx.local_rank)  # NCCL's communicators, and every bare "cuda", then mean this GPU
    return torch.device("cuda", ctx.local_rank)


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed (its parameters broadcast from rank 0), else as is.

    DDP averages the gradients over ranks as they arrive from the backward: the hand-derived ``backward``s
    produce them unchanged, DDP only hooks where they are accumulated into ``.grad``.
    """
    if not _active():
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` (its state_dict has no ``module.`` prefix)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all ranks, in place. Unlike the helpers below it requires a process group."""
    for t in tensors:
        dist.all_reduce(t)


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any: one decision, e.g. to stop, taken at the same step by all."""
    return bool(largest(int(flag)))


def largest(value: int) -> int:
    """The largest of the ranks' ``value``s, on every rank."""
    if not _active():
        return value
    vote = torch.tensor([value])  # on the CPU: gloo, even beside NCCL
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return int(vote.item())


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` (anything picklable, tensors included, received on the CPU) on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_error(message: str | None) -> str | None:
    """Each rank's error message, or None, gathered: the lowest rank's message on every rank, or None if no rank
    has one. Lets every rank give up together instead of some waiting in a collective for one that failed."""
    if not _active():
        return message
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    return next((m if r == 0 else f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None), None)


def local_batch_size(batch_size: int, world_size: int, name: str = "batch_size") -> int:
    """Each rank's share of a global batch; ``ValueError`` (calling it ``name``) unless the world size divides it."""
    if batch_size % world_size:
        raise ValueError(
            f"{name} is the global batch, split evenly over the processes: it must be divisible by the "
            f"world size, but got {name}={batch_size}, world_size={world_size}"
        )
    return batch_size // world_size
