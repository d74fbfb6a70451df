"""Helpers shared by the tests of the training application: IDX files and its command line."""

import struct
from pathlib import Path

import torch


def idx_bytes(t: torch.Tensor, code: int = 0x08) -> bytes:
    """An IDX file: zero, zero, the dtype code, the number of dimensions, each size big-endian, then unsigned bytes."""
    return bytes([0, 0, code, t.dim()]) + struct.pack(f">{t.dim()}I", *t.shape) + t.to(torch.uint8).numpy().tobytes()


def write_idx(path: Path, t: torch.Tensor) -> None:
    path.write_bytes(idx_bytes(t))


def train_args(data: Path, logdir: Path, *flags: str) -> list[str]:
    """train.py's arguments reading ``data`` and writing runs under ``logdir``."""
    return ["--data-dir", str(data), "--logdir", str(logdir), *flags]
