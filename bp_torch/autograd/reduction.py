"""Sum and mean over dimensions, with the backward and jvp of docs/derivation.md eq. R1, R2: δ copied back over
every reduced dimension (divided by their size for the mean), in the input's dtype."""

from __future__ import annotations

import math

import torch
from torch.autograd import Function

from bp_torch._function import with_direct_call


def reduced_dims(dim, ndim: int) -> tuple[int, ...]:
    """The dimensions a reduction over ``dim`` removes, non-negative and sorted (None or empty: all of them).

    ``dim`` as torch's parser accepts it (an int, a sequence, numpy integers, 0-d tensors ...): anything but plain
    ints is read by torch itself, reducing a meta tensor of 2s with ``keepdim``; its 1s are the reduced dimensions
    (and torch raises its own error for a ``dim`` it refuses).
    """
    if ndim == 0:
        return ()
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    if type(dim) is int or (isinstance(dim, (tuple, list)) and all(type(d) is int for d in dim)):
        dims = (dim,) if type(dim) is int else dim
        if all(-ndim <= d < ndim for d in dims):
            return tuple(sorted(d % ndim for d in dims))
    probe = torch.sum(torch.empty([2] * ndim, device="meta"), dim, keepdim=True)
    return tuple(d for d, size in enumerate(probe.shape) if size == 1)


def _spread(ctx, grad_output: torch.Tensor) -> torch.Tensor:
    """δ of the reduced shape, copied back over the reduced dimensions: the input's shape (a broadcast view)."""
    if not ctx.keepdim:
        for d in ctx.dims:  # ascending: each re-inserted dimension is where the input had it
            grad_output = grad_output.unsqueeze(d)
    return grad_output.expand(ctx.shape)


def _in_input_dtype(ctx, grad: torch.Tensor) -> torch.Tensor:
    if grad.is_complex() and not ctx.dtype.is_complex:
        grad = grad.real  # a real input summed into a complex dtype: the real part, as torch's engine takes it
    return grad.to(ctx.dtype)


def _setup(ctx, inputs):
    input, dim, keepdim, _ = inputs
    ctx.shape, ctx.dtype, ctx.keepdim = input.shape, input.dtype, bool(keepdim)
    ctx.dims = reduced_dims(dim, input.dim())
    ctx.count = math.prod(input.shape[d] for d in ctx.dims)


@with_direct_call
class SumFunction(Function):
    """Σ over ``dim``; backward δ copied to every summed element (eq. R1)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, dim, keepdim: bool, dtype):
        return torch.sum(input, dim, keepdim, dtype=dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup(ctx, inputs)
        ctx.dim, ctx.out_dtype = inputs[1], inputs[3]

    @staticmethod
    def backward(ctx, grad_output):
        return _in_input_dtype(ctx, _spread(ctx, grad_output)), None, None, None  # eq. R1: ∂e/∂x_i = δ of i's sum

    @staticmethod
    def jvp(ctx, input_t, _, __, ___):
        return torch.sum(input_t, ctx.dim, ctx.keepdim, dtype=ctx.out_dtype)  # eq. R1, forward mode: Σ ẋ


@with_direct_call
class MeanFunction(Function):
    """The mean over ``dim``; backward δ/n copied to every averaged element, n the number averaged (eq. R2)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, dim, keepdim: bool, dtype):
        return torch.mean(input, dim, keepdim, dtype=dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup(ctx, inputs)
        ctx.dim, ctx.out_dtype = inputs[1], inputs[3]

    @staticmethod
    def backward(ctx, grad_output):
        return _in_input_dtype(ctx, _spread(ctx, grad_output) / ctx.count), None, None, None  # eq. R2: δ / n

    @staticmethod
    def jvp(ctx, input_t, _, __, ___):
        return torch.mean(input_t, ctx.dim, ctx.keepdim, dtype=ctx.out_dtype)  # eq. R2, forward mode: mean of ẋ
