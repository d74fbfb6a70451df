"""Where torch puts a gradient: the strides of torch's own gradients, read off torch's autograd run on meta tensors.

Meta tensors have shapes and strides but no data, so nothing is computed here: every value bp_torch returns comes
from its hand-derived formulas (``bp_torch.autograd``); only the memory layout a drop-in must match is torch's. Where
torch's layout follows rules spread over its decompositions (``torch.matmul``'s folding of batches into one matrix,
mm's backward keeping a column-major operand's gradient column-major), reading them off torch beats re-deriving
them, and stays right when torch changes them.
"""

from __future__ import annotations

import functools

import torch

from bp_torch._function import batched


@functools.lru_cache(maxsize=4096)
def torch_grad_strides(op: str, a_shape, a_stride, b_shape, b_stride, needs_a: bool, needs_b: bool) -> tuple:
    """The strides of torch's gradients of ``op(a, b)`` (None where not wanted), read off torch's own product and
    backward on meta tensors of the same shapes and strides: its rules, whatever they are, without its arithmetic."""
    a = torch.empty_strided(a_shape, a_stride, device="meta").requires_grad_(needs_a)
    b = torch.empty_strided(b_shape, b_stride, device="meta").requires_grad_(needs_b)
    with torch.enable_grad():
        out = torch.matmul(a, b) if op == "matmul" else torch.bmm(a, b)
        wanted = [t for t, need in ((a, needs_a), (b, needs_b)) if need]
        grads = iter(torch.autograd.grad(out, wanted, torch.empty(out.shape, device="meta")))
    return tuple(next(grads).stride() if need else None for need in (needs_a, needs_b))


def in_strides(grad: torch.Tensor | None, strides) -> torch.Tensor | None:
    """``grad`` laid out with ``strides`` (torch's), copied only where it is laid out otherwise."""
    if grad is None or strides is None or grad.stride() == strides or batched(grad):
        return grad  # (vmap's per-sample gradients have no layout of their own)
    return torch.empty_strided(grad.shape, strides, dtype=grad.dtype, device=grad.device).copy_(grad)
