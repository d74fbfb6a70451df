"""The fully connected layer with the backward of Note A eq. 7/8 and Note B eq. 19, 24, 30."""

from __future__ import annotations

import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._function import with_direct_call


@with_direct_call
class LinearFunction(Function):
    """s = x Wᵀ + b: Note A eq. 5 (s = Wᵀx) with PyTorch's (out, in) weight, i.e. Note A's W transposed.

    Any leading dimensions of ``x`` are batch dimensions; their gradients sum over them.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias):
        return F.linear(input, weight, bias)  # Note A eq. 5: s = Wᵀx (+ b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(input if needs_weight else None, weight if needs_input else None)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output @ weight  # Note A eq. 8 / Note B eq. 30: Δf = WᵀΔŷ, with (out, in) W: δ @ W
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            out_features = grad_output.shape[-1]
            delta = grad_output.reshape(-1, out_features)  # every leading dimension is a batch dimension
            if ctx.needs_input_grad[1]:
                # summed over the batch; with PyTorch's (out, in) W, xδᵀ is δᵀx
                grad_weight = delta.T @ input.reshape(-1, input.shape[-1])  # Note A eq. 7 / Note B eq. 19: xδᵀ
            if ctx.needs_input_grad[2]:
                grad_bias = delta.sum(0)  # Note B eq. 24: Δb = Δŷ, summed over the batch
        return grad_input, grad_weight, grad_bias
