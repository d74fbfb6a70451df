"""Activations: the sigmoid with the backward of Note B eq. 37/57, δ·σ(1−σ) from the saved output, and its jvp
σ(1−σ)·ẋ (eq. J5); ReLU, leaky ReLU and tanh with the backward and jvp of docs/derivation.md eq. D1–D3."""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._blockwise import can_run_blockwise, flat_blocks
from bp_torch._formulas import is_literal
from bp_torch._function import elementwise_layout, linked_with_zero, masks_may_multiply, opmath, with_direct_call


@with_direct_call
class SigmoidFunction(Function):
    """σ(x) = 1 / (1 + e^-x); backward δ·σ(1−σ) from the saved output (Note B eq. 37, 57)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return torch.sigmoid(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)  # σ' = σ(1−σ) needs only the output: nothing is recomputed
        ctx.save_for_forward(output)

    @staticmethod
    @elementwise_layout
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        dtype, delta = grad_output.dtype, opmath(grad_output)  # half precision: computed in float32, as torch's
        out = opmath(out).conj()  # complex: PyTorch's gradient is δ·conj(σ'), conj(σ(1−σ)) = C̄(1−C̄); real: out
        if is_literal():
            return (delta * (out * (1 - out))).to(dtype)  # Note B eq. 37/57: ΔC_σ = ΔC ⊙ C(1−C)
        # a product, never a difference t − t·C: an infinite δ stays infinite where C(1−C) > 0, as in torch
        return (delta * ((1 - out) * out)).to(dtype)  # Note B eq. 37/57: ΔC ⊙ C(1−C), in δ's layout (as torch's)

    @staticmethod
    def jvp(ctx, input_t):
        (out,) = ctx.saved_tensors
        return input_t * out * (1 - out)  # eq. J5: σ̇ = σ(1−σ)·ẋ, the derivative of B 37 applied forward


@with_direct_call
class ReluFunction(Function):
    """max(0, x); backward δ ⊙ 1[x > 0], read from the saved output (eq. D1). ``inplace`` overwrites x, as
    ``torch.relu_`` does."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, inplace: bool):
        return torch.relu_(input) if inplace else torch.relu(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, inplace = inputs
        if inplace:
            ctx.mark_dirty(input)
        ctx.inplace = inplace
        # y > 0 exactly where x > 0, so the output serves (in place, it is all that is left of x)
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    @elementwise_layout(saved_first=True)
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        # fast mode: the indicator written as a float 0/1 map and multiplied, two vectorised passes (a select reads
        # a mask of bools: benchmarks/fused_kernels.py times it). y = relu(x) is ≥ 0 or NaN, so 1[y ≠ 0] is
        # 1[x > 0], and 1 at a NaN x, which passes δ as torch's select does; not for an infinite or NaN δ where
        # y = 0 (0·∞ = NaN where the select gives 0): the product's sum tells
        if masks_may_multiply(out, grad_output) and not _has_tangent(out):  # forward-mode AD has no out= comparison
            if out.numel() >= _BLOCKWISE_FROM and can_run_blockwise(grad_output, out):
                grad_input, total = _blockwise_relu_grad(grad_output, out)
            else:
                grad_input = torch.ne(out, 0, out=torch.empty_like(out)).mul_(grad_output)  # eq. D1: δ ⊙ 1[y ≠ 0]
                total = grad_input.sum()
            if math.isfinite(total.item()):
                return linked_with_zero(grad_input, out), None
        # a select, not a product with the mask: an infinite δ where x ≤ 0 gives 0, not 0·∞ = NaN, and a NaN input
        # passes δ, as torch's threshold_backward (y ≤ 0 ? 0 : δ); its derivative in y is zero (double backward)
        return linked_with_zero(torch.where(out <= 0, 0, grad_output), out), None  # eq. D1: δ ⊙ 1[x > 0]

    @staticmethod
    def jvp(ctx, input_t, _):
        (out,) = ctx.saved_tensors
        if ctx.inplace:  # an input changed in place has its tangent changed in place
            return input_t.masked_fill_(out <= 0, 0)  # eq. D1, forward mode: ẋ ⊙ 1[x > 0]
        return torch.where(out <= 0, 0, input_t)  # eq. D1, forward mode: ẋ ⊙ 1[x > 0]


# from here on ReLU's fast backward runs block by block (measured in the step: whole-tensor passes outgrow the cache)
_BLOCKWISE_FROM = 2**21


def _blockwise_relu_grad(grad_output: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eq. D1's fast form, δ ⊙ 1[y ≠ 0], written block by block into the gradient (each block's indicator and
    product in cache), and the gradient's sum (its check for a non-finite δ) added up from the blocks' sums."""
    grad_input = torch.empty_like(out)
    total = grad_input.new_zeros(())
    for delta, y, grad in flat_blocks(grad_output, out, grad_input, blocks=4):
        total += torch.ne(y, 0, out=grad).mul_(delta).sum()  # eq. D1: δ ⊙ 1[y ≠ 0]
    return grad_input, total


def _has_tangent(t: torch.Tensor) -> bool:
    """Whether ``t`` carries a forward-mode AD tangent (a backward run under forward-over-reverse)."""
    return fwAD.unpack_dual(t).tangent is not None


@with_direct_call
class LeakyReluFunction(Function):
    """x if x > 0 else α·x; backward δ where x > 0, α·δ elsewhere (eq. D2). In place, x is read back from the
    output, which keeps its sign only for α ≥ 0 (torch refuses α < 0 there too)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, negative_slope: float, inplace: bool):
        return F.leaky_relu_(input, negative_slope) if inplace else F.leaky_relu(input, negative_slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, negative_slope, inplace = inputs
        if inplace:
            ctx.mark_dirty(input)
        ctx.negative_slope, ctx.inplace = negative_slope, inplace
        ctx.save_for_backward(output if inplace else input)
        ctx.save_for_forward(output if inplace else input)

    @staticmethod
    @elementwise_layout(saved_first=True)
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        if ctx.inplace and ctx.negative_slope < 0:
            raise RuntimeError(
                "In-place leakyReLu backward calculation is triggered with a negative slope which is not supported. "
                "This is caused by calling in-place forward function with a negative slope, please call "
                "out-of-place version instead."
            )
        # a select, as torch's leaky_relu_backward: exact for any α (α + (1 − α)·1[x > 0] rounds to 0 for x > 0 once
        # α ≫ 1), a NaN input gets α·δ, and an infinite δ no 0·∞
        grad_input = torch.where(x > 0, grad_output, grad_output * ctx.negative_slope)  # eq. D2: δ or α·δ
        return linked_with_zero(grad_input, x), None, None  # zero derivative in x (double backward), as torch's

    @staticmethod
    def jvp(ctx, input_t, _, __):
        (x,) = ctx.saved_tensors
        if ctx.inplace:  # an input changed in place has its tangent changed in place
            return input_t.mul_(torch.where(x > 0, 1.0, ctx.negative_slope).to(input_t.dtype))  # eq. D2, fwd mode
        return torch.where(x > 0, input_t, input_t * ctx.negative_slope)  # eq. D2, forward mode: ẋ or α·ẋ


@with_direct_call
class TanhFunction(Function):
    """tanh(x); backward δ·(1 − y²) from the saved output, conjugated for complex x as torch does (eq. D3)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return torch.tanh(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)  # tanh' = 1 − tanh²: the output is all the backward reads
        ctx.save_for_forward(output)

    @staticmethod
    @elementwise_layout
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        dtype, delta, out = grad_output.dtype, opmath(grad_output), opmath(out)  # half precision: in float32
        if is_literal():
            # as written, with y² in double precision: 1 − y·y cancels the rounding of y² where |y| → 1 (torch's
            # kernel fuses the product and the difference)
            wide = out.to(torch.complex128 if out.is_complex() else torch.float64)
            return (delta * (1 - wide * wide).conj().to(delta.dtype)).to(dtype)  # eq. D3: δ ⊙ conj(1 − y²)
        # 1 − ȳ² as (1 − ȳ)(1 + ȳ): where |y| → 1, 1 ∓ y is exact and the product keeps every digit, while 1 − y·y
        # (and δ − (δȳ)ȳ more so) cancels the rounding of y² up to the result's size
        # complex: the product of two complex factors rounds twice per part, so complex64 is computed in complex128
        y = out.conj().to(torch.complex128) if out.dtype == torch.complex64 else out.conj()
        return (delta * ((1 - y) * (1 + y)).to(delta.dtype)).to(dtype)  # eq. D3: δ ⊙ (1 − ȳ)(1 + ȳ), δ's layout

    @staticmethod
    def jvp(ctx, input_t):
        (out,) = ctx.saved_tensors
        return input_t * (1 - out * out)  # eq. D3, forward mode: ẋ ⊙ (1 − y²), tanh being holomorphic
