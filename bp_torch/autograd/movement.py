"""Indexing, roll and constant padding — the operations that only move values — with the backward and jvp of
docs/derivation.md eq. S1–S3. Each is linear, y = Sx for a 0/1 matrix S; its backward is Sᵀδ, again a movement:

- ``x[index]`` reads x_π(j) into y_j; Sᵀ sends each δ_j back to π(j), adding where π repeats (S 1). The scatter is
  ``IndexScatterFunction``, whose backward is the gather again, so every order of derivative is ours;
- ``roll`` is a permutation: Sᵀ = S⁻¹, the roll by the opposite shifts (S 2);
- ``pad`` with a constant embeds x in a larger tensor (negative pads crop): Sᵀ crops δ back (pads it with zeros where
  the forward cropped), the pad by the opposite amounts (S 3).

Arguments arrive from ``bp_torch.functional``, which leaves their validation to torch's own forward.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from bp_torch._function import nested_apply, with_direct_call


def _items(index) -> tuple:
    return tuple(index) if type(index) is tuple else (index,)


def is_basic(index) -> bool:
    """Whether ``index`` is basic indexing (ints, slices, None, Ellipsis): its result is a view of x."""
    return all(item is None or item is Ellipsis or type(item) in (int, slice) for item in _items(index))


def _index_tensors(index) -> tuple | None:
    """``index`` as the tuple of index tensors ``Tensor.index_put_`` takes, when it is only integer or bool tensors
    (one per leading dimension); else None."""
    items = _items(index)
    if all(isinstance(t, torch.Tensor) and not (t.is_floating_point() or t.is_complex()) for t in items):
        return items
    return None


@with_direct_call
class GetItemFunction(Function):
    """``input[index]`` for advanced indexing (index or mask tensors, lists, alone or among slices; eq. S1): backward
    the scatter-add ``IndexScatterFunction``. ``bp_torch.functional.getitem`` leaves basic indexing to torch, whose
    view may be written through in place (a custom Function's may not)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, index):
        return input[index]

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, index = inputs
        ctx.shape, ctx.index = input.shape, index

    @staticmethod
    def backward(ctx, grad_output):
        return scatter(grad_output, ctx.shape, ctx.index), None  # eq. S1: ∂e/∂x_i = Σ_{j: π(j) = i} δ_j

    @staticmethod
    def jvp(ctx, input_t, _):
        return input_t[ctx.index]  # eq. S1, forward mode: ẏ = ẋ[index]


@with_direct_call
class IndexScatterFunction(Function):
    """Sᵀδ of ``x[index]`` (eq. S1): zeros of x's shape, each δ_j added where its y_j was read; backward the gather."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, shape, index):
        out = grad.new_zeros(shape)
        tensors = _index_tensors(index)
        if tensors is not None:
            return out.index_put_(tensors, grad, accumulate=True)  # eq. S1: Σ over the j that read x_i
        # any other index (tensors mixed with slices, lists ...): π itself, the index applied to the positions
        positions = torch.arange(out.numel(), device=out.device).view(shape)[index]
        return out.view(-1).index_add_(0, positions.reshape(-1), grad.reshape(-1)).view(shape)  # eq. S1

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape, ctx.index = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx, grad):
        return gather(grad, ctx.index), None, None  # eq. S1's transpose, the gather: (Sᵀ)ᵀ = S

    @staticmethod
    def jvp(ctx, grad_t, _, __):
        return IndexScatterFunction.forward(grad_t, ctx.shape, ctx.index)  # eq. S1, linear: the scatter of ġ


def gather(input: torch.Tensor, index) -> torch.Tensor:
    """``input[index]`` inside a backward."""
    return nested_apply(GetItemFunction, input, index)


def scatter(grad: torch.Tensor, shape, index) -> torch.Tensor:
    """Sᵀδ of ``x[index]`` inside a backward."""
    return nested_apply(IndexScatterFunction, grad, shape, index)


def _opposite(shifts):
    return -shifts if isinstance(shifts, int) else tuple(-s for s in shifts)


@with_direct_call
class RollFunction(Function):
    """``torch.roll`` (eq. S2): backward the roll by the opposite shifts."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, shifts, dims):
        return torch.roll(input, shifts, dims)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shifts, ctx.dims = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx, grad_output):
        return nested_apply(RollFunction, grad_output, _opposite(ctx.shifts), ctx.dims), None, None  # eq. S2: S⁻¹δ

    @staticmethod
    def jvp(ctx, input_t, _, __):
        return torch.roll(input_t, ctx.shifts, ctx.dims)  # eq. S2, forward mode: ẏ = roll(ẋ)


@with_direct_call
class ConstantPadFunction(Function):
    """``F.pad(input, pad, value=value)`` (eq. S3): backward δ padded by the opposite amounts (cropped back)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, pad, value):
        return torch.nn.functional.pad(input, pad, "constant", value)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.pad = inputs[1]

    @staticmethod
    def backward(ctx, grad_output):
        return nested_apply(ConstantPadFunction, grad_output, _opposite(ctx.pad), None), None, None  # eq. S3: Sᵀδ

    @staticmethod
    def jvp(ctx, input_t, _, __):
        return torch.nn.functional.pad(input_t, ctx.pad)  # eq. S3, forward mode: ẋ padded with zeros
