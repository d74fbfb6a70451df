"""softmax and log_softmax with the backward of docs/derivation.md eq. D5 and D6, each read from the saved output."""

from __future__ import annotations

import torch
from torch.autograd import Function

from bp_torch._function import nested_apply, opmath, with_direct_call


@with_direct_call
class SoftmaxFunction(Function):
    """p = e^x / Σ e^x along ``dim``; backward p ⊙ δ − p Σ p ⊙ δ from the saved output (eq. D5)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, dim: int):
        return torch.softmax(input, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)  # ∂p_i/∂x_j = p_i (1[i = j] − p_j): the output is all the backward reads
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (p,) = ctx.saved_tensors
        return softmax_grad(p, grad_output, ctx.dim), None  # eq. D5

    @staticmethod
    def jvp(ctx, input_t, _):
        (p,) = ctx.saved_tensors
        return p * (input_t - (input_t * p).sum(ctx.dim, keepdim=True))  # eq. D5, forward mode: Jẋ, J symmetric


@with_direct_call
class LogSoftmaxFunction(Function):
    """ℓ = x − log Σ e^x along ``dim``; backward δ − e^ℓ Σ δ from the saved output (eq. D6)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, dim: int):
        return torch.log_softmax(input, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)  # ∂ℓ_i/∂x_j = 1[i = j] − p_j with p = e^ℓ
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        dtype, delta = grad_output.dtype, opmath(grad_output)  # half precision: in float32, as torch's kernel
        total = delta.sum(ctx.dim, keepdim=True)
        # p = e^ℓ, computed as softmax(ℓ) (Σ e^ℓ = 1): one fused pass, faster on the CPU than exp, and through
        # SoftmaxFunction when a graph of the backward is built
        p = nested_apply(SoftmaxFunction, opmath(out), ctx.dim)
        grad_input = torch.addcmul(delta, p, total, value=-1)  # eq. D6: δ − p Σ δ, p = e^ℓ
        return grad_input.to(dtype).contiguous(), None  # contiguous, as torch's kernel allocates it

    @staticmethod
    def jvp(ctx, input_t, _):
        (out,) = ctx.saved_tensors
        return input_t - (out.exp() * input_t).sum(ctx.dim, keepdim=True)  # eq. D6, forward mode: ẋ − Σ p ẋ


def softmax_grad(p: torch.Tensor, grad_output: torch.Tensor, dim: int) -> torch.Tensor:
    """∂e/∂x of p = softmax(x) along ``dim``, from δ = ∂e/∂p and the output p (eq. D5); half precision computed in
    float32 and cast back once, as torch's kernel."""
    dtype, delta, p = grad_output.dtype, opmath(grad_output), opmath(p)
    # p ⊙ (δ − Σ p ⊙ δ), as torch's kernel: the difference is taken before the product, so a δ constant along
    # dim gives exactly 0 (p ⊙ δ − p Σ p ⊙ δ leaves the rounding of both products)
    return (p * (delta - (delta * p).sum(dim, keepdim=True))).to(dtype)  # eq. D5: p ⊙ δ − p Σ p ⊙ δ
