"""Elementwise formulas of many passes evaluated block by block.

A derivative such as GELU's (eq. T5) is a chain of a dozen or more elementwise torch operations, each a pass over
the whole tensor and most with a temporary the size of the tensor, where torch's own backward is one fused loop.
On a large tensor every pass then streams through main memory, and each temporary is fresh memory (its pages
faulted in on first touch). :func:`blockwise` runs the same formula on consecutive blocks of ``BLOCK`` elements
per thread instead: the same operations in the same order on each element (so the same values), with temporaries
small enough to stay in cache and to be reused from the allocator's free lists, and one output the size of the
result.
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
    first = tensors[0]
    out = torch.empty_like(first, dtype=dtype)
    n, size = first.numel(), block_size()
    flat = [t.as_strided((n,), (1,), t.storage_offset()) for t in (*tensors, out)]
    for start in range(0, n, size):
        blocks = [t[start : start + size] for t in flat]
        blocks[-1].copy_(formula(*blocks[:-1]))
    return out
