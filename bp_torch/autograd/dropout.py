"""Dropout with the backward of docs/derivation.md eq. D4: δ times the same scaled mask."""

from __future__ import annotations

from torch.autograd import Function

from bp_torch._function import with_direct_call


@with_direct_call
class DropoutFunction(Function):
    """y = x ⊙ n, n = m / (1 − p) with m ~ Bernoulli(1 − p); backward δ ⊙ n (eq. D4).

    The noise n is drawn by ``bp_torch.functional.dropout`` exactly as torch draws it, so the same seed gives the
    same mask; the Function itself is deterministic, which lets torch.func's ``vmap`` randomness rules apply to the
    draw as they do to torch's. ``inplace`` overwrites x, as ``torch.dropout_`` does.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, noise, inplace: bool):
        return input.mul_(noise) if inplace else input * noise  # eq. D4: y = x ⊙ m / (1 − p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, noise, inplace = inputs
        if inplace:
            ctx.mark_dirty(input)
        ctx.inplace = inplace
        ctx.save_for_backward(noise)  # the mask is all the backward reads
        ctx.save_for_forward(noise)

    @staticmethod
    def backward(ctx, grad_output):
        (noise,) = ctx.saved_tensors
        return grad_output * noise, None, None  # eq. D4: δ ⊙ m / (1 − p)

    @staticmethod
    def jvp(ctx, input_t, noise_t, _):
        (noise,) = ctx.saved_tensors
        return input_t.mul_(noise) if ctx.inplace else input_t * noise  # eq. D4, forward mode: ẋ ⊙ m / (1 − p)
