"""Elementwise formulas of many passes evaluated block by block.

A derivative such as GELU's (eq. T5) is a chain of a dozen or more elementwise torch operations, each a pass over
the whole tensor and most with a temporary the size of the tensor, where torch's own backward is one fused loop.
On a large tensor every pass then streams through main memory, and each temporary is fresh memory (its pages
faulted in on first touch). :func:`blockwise` runs the same formula on consecutive blocks of ``BLOCK`` elements
per thread instead: the same operations in the same order on each element (so the same values), with temporaries
small enough to stay in cache and to be reused from the allocator's free lists, and one output the size of the
result. A formula that also reduces over the samples (batch norm's per-channel sums, eq. M8–M10) runs on
:func:`sample_chunks` instead: slabs of whole samples, each one stretch of memory in either layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BLOCK = 1 << 16  # elements per block and thread: a float32 block and its temporaries fit in a core's L2 cache


def block_size() -> int:
    """Elements per block: ``BLOCK`` for each of torch's intra-op threads, which share each block's passes."""
    return BLOCK * max(torch.get_num_threads(), 1)


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one stretch of memory without gaps or overlaps, whatever their order."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def can_run_blockwise(*tensors: torch.Tensor) -> bool:
    """Whether :func:`blockwise` applies: CPU tensors of one shape and one dense layout (element i of each the same
    position in memory order), of more than two blocks (a smaller tensor's passes stay in cache as they are),
    outside vmap, torch.compile and a recorded graph."""
    first = tensors[0]
    if first.numel() <= 2 * block_size() or first.device.type != "cpu" or torch.is_grad_enabled():
        return False
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return False
    return all(t.shape == first.shape and t.stride() == first.stride() for t in tensors) and _dense(first)


def blockwise(formula: Callable[..., torch.Tensor], *tensors: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``formula(*tensors)`` laid out as ``tensors[0]``, in ``dtype``, computed on blocks of :func:`block_size`
    elements in memory order; ``formula`` must be elementwise (each output element a function of the same element of
    each input). Only where :func:`can_run_blockwise` says so."""
    out = torch.empty_like(tensors[0], dtype=dtype)
    for *blocks, out_block in flat_blocks(*tensors, out):
        out_block.copy_(formula(*blocks))
    return out


def flat_blocks(*tensors: torch.Tensor, blocks: int = 1):
    """Consecutive blocks of ``blocks`` times :func:`block_size` elements in memory order, one 1-D view of each tensor
    per block (tensors :func:`can_run_blockwise` accepts): a formula written into the last one lands in place."""
    n, size = tensors[0].numel(), blocks * block_size()
    flat = [t.as_strided((n,), (1,), t.storage_offset()) for t in tensors]
    for start in range(0, n, size):
        yield tuple(t[start : start + size] for t in flat)


def sample_chunks(t: torch.Tensor) -> list[slice]:
    """Slices of ``t``'s first dimension (its samples), each of about four blocks of :func:`block_size` elements and
    at least one sample: for a reduction over the samples computed chunk by chunk, its temporaries in cache."""
    per_sample = max(t[0].numel(), 1) if t.shape[0] else 1
    step = max(1, 4 * block_size() // per_sample)
    return [slice(start, start + step) for start in range(0, t.shape[0], step)]
