"""Checkpoints: what a training checkpoint holds, and files that survive a crash mid-write and load with
``weights_only=True``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (state_dicts, RNG states as uint8
tensors, the config as a plain dict), so ``torch.load(..., weights_only=True)`` reads it without unpickling code.

Example::

    >>> save_checkpoint("runs/demo/checkpoint.pt", {"model": model.state_dict(), "epoch": 3})
    >>> load_checkpoint("runs/demo/checkpoint.pt")["epoch"]
    3
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "TrainState",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_state",
    "load_training_checkpoint",
    "restore",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or not one of ours; the message says which file and why."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: to a temporary file beside it, flushed to disk, then renamed.

    ``os.replace`` is atomic on POSIX and Windows, so ``path`` always holds either the previous checkpoint or the
    new one, whole — never half of one, even if the process is killed while writing.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    Args:
        path: the checkpoint file.
        required: keys the checkpoint must have.

    Raises:
        CheckpointError: the file is missing, unreadable, not a dict, or lacks a required key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, a pickle of arbitrary objects ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {reason}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a bp_torch checkpoint: it holds a {type(state).__name__}, not a dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a bp_torch training checkpoint: it lacks {', '.join(missing)}")
    return state


@dataclass
class TrainState:
    """Where training stands: ``epoch`` epochs done, plus ``batch`` batches of the next; ``step`` in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    elapsed: float = 0.0  # seconds spent training and evaluating, summed over resumed sessions
    metrics: dict[str, float] = field(default_factory=dict)  # the latest test loss/accuracy


def checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg,
    state: TrainState,
) -> dict[str, Any]:
    """Everything needed to continue exactly: weights, optimizer, schedule, position, RNG states and config.

    The data order needs no state of its own: ``DeviceLoader`` derives it from ``(seed, epoch)`` and skips to
    ``state.batch``.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": dataclasses.asdict(state),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def load_training_checkpoint(path) -> dict[str, Any]:
    """``load_checkpoint`` requiring a training checkpoint's keys; raises ``CheckpointError``."""
    return load_checkpoint(path, required=("format", "config", "model", "optimizer", "scheduler", "state", "rng"))


def restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Load a ``checkpoint_state`` into freshly built objects and the RNGs; return where training stands."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available():  # a checkpoint from a machine with more GPUs (a DDP run's) sets what there is
        for index, rng_state in enumerate(ckpt["rng"]["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng_state, index)
    return TrainState(**ckpt["state"])
