"""The elementwise product and quotient with broadcasting, with the backward and jvp of docs/derivation.md eq. E1–E3:
the product rule, each operand's gradient summed back over the dimensions it was broadcast along.

Either operand may be a Python number (``x * 0.5``, the stochastic-depth scale); it gets no gradient.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from bp_torch._function import with_direct_call


def _conj(v):
    return v.conj() if isinstance(v, torch.Tensor) else (v.conjugate() if isinstance(v, complex) else v)


def _to_operand(grad: torch.Tensor, operand: torch.Tensor) -> torch.Tensor:
    """A gradient of the broadcast output's shape, summed back to ``operand``'s shape and cast to its dtype."""
    if grad.shape != operand.shape:
        grad = grad.sum_to_size(operand.shape)  # eq. E3: Σ over the dimensions the operand was broadcast along
    if grad.is_complex() and not operand.is_complex():
        grad = grad.real  # a real operand of a complex product: the real part, as torch's engine takes it
    return grad if grad.dtype == operand.dtype else grad.to(operand.dtype)


def _tensors(*values) -> tuple[torch.Tensor, ...]:
    return tuple(v for v in values if isinstance(v, torch.Tensor))


@with_direct_call
class MulFunction(Function):
    """a ⊙ b (broadcast); backward ∂e/∂a = Σ_broadcast δ ⊙ b̄, ∂e/∂b = Σ_broadcast δ ⊙ ā (eq. E1, E3)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, other):
        return torch.mul(input, other)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, other = inputs
        ctx.scalars = tuple(None if isinstance(v, torch.Tensor) else v for v in inputs)
        ctx.save_for_backward(*_tensors(input, other))
        ctx.save_for_forward(*_tensors(input, other))

    @staticmethod
    def _operands(ctx):
        saved = iter(ctx.saved_tensors)
        return tuple(next(saved) if s is None else s for s in ctx.scalars)

    @staticmethod
    def backward(ctx, grad_output):
        a, b = MulFunction._operands(ctx)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _to_operand(grad_output * _conj(b), a)  # eq. E1: ∂e/∂a = δ ⊙ b̄, summed by eq. E3
        if ctx.needs_input_grad[1]:
            grad_b = _to_operand(grad_output * _conj(a), b)  # eq. E1: ∂e/∂b = δ ⊙ ā, summed by eq. E3
        return grad_a, grad_b

    @staticmethod
    def jvp(ctx, input_t, other_t):
        a, b = MulFunction._operands(ctx)
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
        ctx.scalars = tuple(None if isinstance(v, torch.Tensor) else v for v in inputs)
        ctx.save_for_backward(*_tensors(*inputs))
        ctx.save_for_forward(*_tensors(*inputs))

    @staticmethod
    def backward(ctx, grad_output):
        a, b = MulFunction._operands(ctx)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _to_operand(grad_output / _conj(b), a)  # eq. E2: ∂e/∂a = δ / b̄, summed by eq. E3
        if ctx.needs_input_grad[1]:
            # a / b² as (a / b) / b: the order torch rounds in
            grad_b = _to_operand(-grad_output * _conj((a / b) / b), b)  # eq. E2: ∂e/∂b = −δ ⊙ conj(a/b²), by E3
        return grad_a, grad_b

    @staticmethod
    def jvp(ctx, input_t, other_t):
        a, b = MulFunction._operands(ctx)
        out = None
        if input_t is not None:
            out = input_t / b  # eq. E2, forward mode: ȧ / b − ḃ ⊙ a / b²
        if other_t is not None:
            term = other_t * ((a / b) / b)
            out = -term if out is None else out - term
        return out
