"""The sigmoid with the backward of Note B eq. 37/57: δ·σ(1−σ), from the saved output; its jvp σ(1−σ)·ẋ."""

from __future__ import annotations

import torch
from torch.autograd import Function

from bp_torch._formulas import is_literal
from bp_torch._function import with_direct_call


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
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        out = out.conj()  # complex: PyTorch's gradient is δ·conj(σ'), and conj(σ(1−σ)) = C̄(1−C̄); real: out itself
        if is_literal():
            return grad_output * out * (1 - out)  # Note B eq. 37/57: ΔC_σ = ΔC ⊙ C(1−C)
        # the same product as t − t·C with t = ΔC ⊙ C: two passes over memory, not three
        t = grad_output * out
        return torch.addcmul(t, t, out, value=-1)  # Note B eq. 37/57: ΔC ⊙ C(1−C) = t − t·C

    @staticmethod
    def jvp(ctx, input_t):
        (out,) = ctx.saved_tensors
        return input_t * out * (1 - out)  # eq. J5: σ̇ = σ(1−σ)·ẋ, the derivative of B 37 applied forward
