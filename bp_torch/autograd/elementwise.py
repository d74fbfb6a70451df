"""The elementwise product and quotient with broadcasting, with the backward and jvp of docs/derivation.md eq. E1–E3:
the product rule, each operand's gradient summed back over the dimensions it was broadcast along.

Either operand may be a Python number (``x * 0.5``, the stochastic-depth scale); it gets no gradient.
"""

from __future__ import annotations

import torch
from torch.autograd import Function, forward_ad

from bp_torch._function import with_direct_call


def _conj(v):
    return v.conj() if isinstance(v, torch.Tensor) else (v.conjugate() if isinstance(v, complex) else v)


def _to_operand(grad: torch.Tensor, like: tuple) -> torch.Tensor:
    """A gradient of the broadcast output's shape, summed back to an operand's shape and cast to its dtype (``like``:
    the operand's shape and dtype)."""
    shape, dtype = like
    if grad.shape != shape:
        grad = grad.sum_to_size(shape)  # eq. E3: Σ over the dimensions the operand was broadcast along
    if grad.is_complex() and not dtype.is_complex:
        grad = grad.real  # a real operand of a complex product: the real part, as torch's engine takes it
    return grad if grad.dtype == dtype else grad.to(dtype)


def _save(ctx, inputs, keep: tuple) -> None:
    """Save the operands the backward reads (``keep``: which), their shapes and dtypes, and — only when forward-mode
    AD may run — both for the jvp (a tensor saved for it lives as long as the node does)."""
    ctx.scalars = tuple(None if isinstance(v, torch.Tensor) else v for v in inputs)
    ctx.likes = tuple((v.shape, v.dtype) if isinstance(v, torch.Tensor) else None for v in inputs)
    ctx.kept = tuple(isinstance(v, torch.Tensor) and k for v, k in zip(inputs, keep))
    ctx.save_for_backward(*(v for v, k in zip(inputs, ctx.kept) if k))
    if forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        ctx.save_for_forward(*(v for v in inputs if isinstance(v, torch.Tensor)))


def _operands(ctx) -> tuple:
    """(a, b) for the backward: a number as itself, a tensor not kept as None."""
    saved = iter(ctx.saved_tensors)
    return tuple(next(saved) if kept else s for kept, s in zip(ctx.kept, ctx.scalars))


def _tangent_operands(ctx) -> tuple:
    saved = iter(ctx.saved_tensors)
    return tuple(next(saved) if s is None else s for s in ctx.scalars)


@with_direct_call
class MulFunction(Function):
    """a ⊙ b (broadcast); backward ∂e/∂a = Σ_broadcast δ ⊙ b̄, ∂e/∂b = Σ_broadcast δ ⊙ ā (eq. E1, E3)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, other):
        return torch.mul(input, other)

    @staticmethod
    def setup_context(ctx, inputs, output):
        # a only for ∂e/∂b, b only for ∂e/∂a, as torch's MulBackward0 keeps them: stochastic depth's mask needs no
        # gradient, so the activation it scales is not kept alive
        _save(ctx, inputs, keep=(ctx.needs_input_grad[1], ctx.needs_input_grad[0]))

    @staticmethod
    def backward(ctx, grad_output):
        a, b = _operands(ctx)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _to_operand(grad_output * _conj(b), ctx.likes[0])  # eq. E1: ∂e/∂a = δ ⊙ b̄, summed by eq. E3
        if ctx.needs_input_grad[1]:
            grad_b = _to_operand(grad_output * _conj(a), ctx.likes[1])  # eq. E1: ∂e/∂b = δ ⊙ ā, summed by eq. E3
        return grad_a, grad_b

    @staticmethod
    def jvp(ctx, input_t, other_t):
        a, b = _tangent_operands(ctx)
        out = None
        if input_t is not None:
            out = input_t * b  # eq. E1, forward mode: ȧ ⊙ b + a ⊙ ḃ
        if other_t is not None:
            out = a * other_t if out is None else out + a * other_t
        return out


@with_direct_call
class DivFunction(Function):
    """a / b (broadcast, true division); backward ∂e/∂a = Σ_broadcast δ / b̄, ∂e/∂b = −Σ_broadcast δ ⊙ conj(a/b²)
    (eq. E2, E3)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, other):
        return torch.div(input, other)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs, keep=(ctx.needs_input_grad[1], True))  # b for both gradients, a only for ∂e/∂b

    @staticmethod
    def backward(ctx, grad_output):
        a, b = _operands(ctx)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _to_operand(grad_output / _conj(b), ctx.likes[0])  # eq. E2: ∂e/∂a = δ / b̄, summed by eq. E3
        if ctx.needs_input_grad[1]:
            # a / b² as (a / b) / b: the order torch rounds in
            grad_b = _to_operand(-grad_output * _conj((a / b) / b), ctx.likes[1])  # eq. E2: −δ ⊙ conj(a/b²), by E3
        return grad_a, grad_b

    @staticmethod
    def jvp(ctx, input_t, other_t):
        a, b = _tangent_operands(ctx)
        out = None
        if input_t is not None:
            out = input_t / b  # eq. E2, forward mode: ȧ / b − ḃ ⊙ a / b²
        if other_t is not None:
            term = other_t * ((a / b) / b)
            out = -term if out is None else out - term
        return out
