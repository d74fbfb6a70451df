"""Batch normalisation (eq. M6, M7) with the backward of eq. M8–M11 and the tangent of eq. M12.

Per channel, over the m = N·H·W values it normalises: μ = mean x, σ² = mean (x−μ)² (biased), x̂ = (x−μ)/√(σ²+ε),
y = γx̂ + β (eq. M6); training also updates the running statistics, the variance unbiased (eq. M7). The forward is
torch's own kernel (bit for bit the same output and running statistics); the gradients are derived by hand:
∂e/∂β = Σδ (M8), ∂e/∂γ = Σδx̂ (M9), and, through μ and σ, ∂e/∂x = γ/(mσ̂)·(mδ − Σδ − x̂Σδx̂) in training (M10),
γδ/σ̂ with the running statistics (M11). Equation labels M are ours (docs/derivation.md, "Beyond the notes").
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from bp_torch._blockwise import can_run_blockwise, sample_chunks
from bp_torch._formulas import is_literal
from bp_torch._function import batched_or_traced, in_layout, is_channels_last, with_direct_call
from bp_torch._function import opmath as upcast


@with_direct_call
class BatchNormFunction(Function):
    """Batch normalisation over every dimension but the channels (dim 1) of an ``(N, C, *)`` input; returns
    ``(output, mean, invstd)``, the last two the per-channel μ and 1/σ̂ the output was normalised with (batch
    statistics in training, running ones otherwise), not differentiable.

    Arguments arrive validated by ``bp_torch.functional.batch_norm``. In training, ``running_mean`` and
    ``running_var`` (if given) are updated in place (eq. M7), as torch does.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float):
        C = input.shape[1]
        if input.numel() == 0:
            # nothing to normalise: torch returns the (empty) input and leaves the running statistics alone
            stats = input.new_zeros(C, dtype=weight.dtype if weight is not None else input.dtype)
            return input.clone(), stats, stats.clone()
        # torch's kernel: the output, and in training the running statistics' update
        out, mean, invstd = torch.native_batch_norm(  # eq. M6, eq. M7
            input, weight, bias, running_mean, running_var, training, momentum, eps
        )
        if not training:
            mean, invstd = running_mean.clone(), torch.rsqrt(running_var + eps)  # eq. M6 with the running statistics
        return out, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, *_, training, momentum, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        # x̂ is read by ∂e/∂γ, and by ∂e/∂x in training; γ only by ∂e/∂x
        keep_input = needs_weight or (needs_input and training)
        ctx.save_for_backward(input if keep_input else None, weight if needs_input else None, mean, invstd)
        ctx.save_for_forward(input, weight, mean, invstd)
        ctx.training, ctx.eps = training, eps
        # the parameters' gradients come back in their own dtypes, even when γ itself is not saved
        ctx.weight_like = (weight.dtype, weight.shape) if weight is not None else None
        ctx.bias_like = (bias.dtype, bias.shape) if bias is not None else None
        ctx.channels_last = is_channels_last(input)

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_invstd):
        input, weight, mean, invstd = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        dtype = grad_output.dtype
        delta = upcast(grad_output)  # half precision: the sums over m values accumulate in float32, as torch's kernel
        dims = [0, *range(2, delta.dim())]
        per_channel = (1, -1) + (1,) * (delta.dim() - 2)
        m = max(delta.numel() // max(delta.shape[1], 1), 1)  # values per channel (an empty batch has no gradient)
        x = upcast(input) if input is not None else None
        if ctx.training and (torch.is_grad_enabled() or x is not input) and x is not None and x.numel():
            # a graph of this backward is being built (double backward): μ and σ̂ as the functions of x they are;
            # half precision: in float32, as torch's kernel gives them only rounded to the input's dtype
            var, mean = torch.var_mean(x, dims, correction=0)
            invstd = torch.rsqrt(var + ctx.eps)
        gamma = weight.reshape(-1) if weight is not None else None
        grad_input = grad_weight = grad_bias = None
        if needs_input and ctx.training and x is input and _in_chunks(delta, x):
            # fast mode on a large map: the same formulas, computed on slabs of samples whose temporaries stay in
            # cache (two sweeps: the sums, then the map), instead of passes over whole tensors
            sum_delta, sum_delta_x_hat, grad_input = _chunked(delta, x, mean, invstd, gamma, m)
            grad_input = in_layout(grad_input, ctx.channels_last)
            grad_weight = sum_delta_x_hat.to(ctx.weight_like[0]).reshape(ctx.weight_like[1]) if needs_weight else None
            grad_bias = sum_delta.to(ctx.bias_like[0]).reshape(ctx.bias_like[1]) if needs_bias else None
            return grad_input, grad_weight, grad_bias, None, None, None, None, None
        needs_sum = needs_bias or needs_weight or (needs_input and ctx.training)
        sum_delta = delta.sum(dims) if needs_sum else None  # eq. M8: Σ δ
        x_hat = centered = sum_delta_x_hat = None
        if x is not None and is_literal():
            x_hat = (x - mean.view(per_channel)) * invstd.view(per_channel)  # eq. M6: x̂ = (x − μ)/σ̂
            sum_delta_x_hat = (delta * x_hat).sum(dims)  # eq. M9: Σ δ·x̂
        elif x is not None:
            # x − μ first: Σ δ·x − μ Σ δ would cancel the digits of Σ δ·x̂ when |μ| ≫ σ
            centered = x - mean.view(per_channel)
            product = delta * centered
            sum_delta_x_hat = product.sum(dims).mul_(invstd)  # eq. M9: Σ δ·x̂ = Σ δ·(x − μ)/σ̂
        if needs_input:
            scale = invstd if gamma is None else gamma * invstd  # γ/σ̂
            if not ctx.training:
                grad_input = delta * scale.view(per_channel)  # eq. M11: ∂e/∂x = γδ/σ̂, μ and σ̂ constants
            elif is_literal():
                # ∂e/∂x = γ/(mσ̂)·(mδ − Σδ − x̂·Σδx̂)
                grad_input = (scale / m).view(per_channel) * (  # eq. M10
                    m * delta - sum_delta.view(per_channel) - x_hat * sum_delta_x_hat.view(per_channel)
                )
            else:
                # eq. M10 as one affine map per channel, (x − μ)·b + c + a·δ with a = γ/σ̂: no x̂ map. Written over
                # the product's memory (its sum is taken), unless a graph of this backward is being built or vmap
                # or torch.compile is at work (no batching rule for out= and in-place ops): the same operations in
                # the same order, so the same rounding
                per_m = scale * (-1 / m)
                b, c, a = per_m * invstd * sum_delta_x_hat, per_m * sum_delta, scale
                b, c, a = b.view(per_channel), c.view(per_channel), a.view(per_channel)
                if torch.is_grad_enabled() or batched_or_traced(delta):
                    grad_input = torch.addcmul(centered * b + c, delta, a)  # eq. M10
                else:
                    grad_input = torch.mul(centered, b, out=product).add_(c).addcmul_(delta, a)  # eq. M10
            grad_input = in_layout(grad_input.to(dtype), ctx.channels_last)
        if needs_weight:
            grad_weight = sum_delta_x_hat.to(ctx.weight_like[0]).reshape(ctx.weight_like[1])  # eq. M9: ∂e/∂γ = Σ δ·x̂
        if needs_bias:
            grad_bias = sum_delta.to(ctx.bias_like[0]).reshape(ctx.bias_like[1])  # eq. M8: ∂e/∂β = Σ δ
        return grad_input, grad_weight, grad_bias, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        input, weight, mean, invstd = ctx.saved_tensors
        dtype, input = input.dtype, upcast(input)
        dims = [0, *range(2, input.dim())]
        per_channel = (1, -1) + (1,) * (input.dim() - 2)
        x_hat = (input - mean.view(per_channel)) * invstd.view(per_channel)
        out_t = torch.zeros_like(x_hat)
        if input_t is not None:
            if ctx.training:
                # x̂' = (ẋ − mean ẋ − x̂·mean(ẋ·x̂))/σ̂: μ and σ̂ move with x
                moved = input_t.mean(dims, keepdim=True) + x_hat * (input_t * x_hat).mean(dims, keepdim=True)
                x_hat_t = (input_t - moved) * invstd.view(per_channel)  # eq. M12
            else:
                x_hat_t = input_t * invstd.view(per_channel)  # eq. M12 with constant running statistics
            out_t = out_t + (x_hat_t if weight is None else x_hat_t * weight.reshape(per_channel))  # eq. M12: γx̂'
        if weight_t is not None:
            out_t = out_t + weight_t.reshape(per_channel) * x_hat  # eq. M12: γ̇x̂
        if bias_t is not None:
            out_t = out_t + bias_t.reshape(per_channel)  # eq. M12: β̇
        return out_t.to(dtype), None, None


# from here on the whole-tensor passes of the fast mode's backward outgrow the cache (measured in the step, issue 23)
_CHUNKED_FROM = 2**21


def _in_chunks(delta: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the training backward runs on slabs of samples (:func:`_chunked`): fast mode, δ and x large, laid out
    alike (plainly or channels_last) and of one dtype, nothing recording this backward, no transform at work."""
    if is_literal() or delta.numel() < _CHUNKED_FROM or delta.shape[0] < 2 or delta.dtype != x.dtype:
        return False
    return can_run_blockwise(delta, x) and not batched_or_traced(delta)


def _chunked(delta, x, mean, invstd, gamma, m: int):
    """eq. M8–M10 in fast mode's form on slabs of samples (:func:`bp_torch._blockwise.sample_chunks`): Σδ and
    Σδ·(x − μ) summed slab by slab, then ∂e/∂x = (x − μ)·b + c + a·δ written slab by slab — the same operations on
    each element as over whole tensors, the sums added in another order. Returns ``(Σδ, Σδ·x̂, ∂e/∂x)``."""
    dims = [0, *range(2, delta.dim())]
    per_channel = (1, -1) + (1,) * (delta.dim() - 2)
    mu = mean.view(per_channel)
    chunks = sample_chunks(delta)
    sum_delta = torch.zeros_like(mean, dtype=delta.dtype)
    sum_delta_centered = torch.zeros_like(sum_delta)
    for rows in chunks:
        sum_delta += delta[rows].sum(dims)  # eq. M8: Σ δ
        sum_delta_centered += torch.sub(x[rows], mu).mul_(delta[rows]).sum(dims)  # eq. M9: Σ δ·(x − μ)
    sum_delta_x_hat = sum_delta_centered.mul_(invstd)  # eq. M9: Σ δ·x̂ = Σ δ·(x − μ)/σ̂
    scale = invstd if gamma is None else gamma * invstd  # γ/σ̂
    per_m = scale * (-1 / m)
    b, c, a = per_m * invstd * sum_delta_x_hat, per_m * sum_delta, scale
    b, c, a = b.view(per_channel), c.view(per_channel), a.view(per_channel)
    grad_input = torch.empty_like(x)
    for rows in chunks:
        out = torch.sub(x[rows], mu, out=grad_input[rows])
        out.mul_(b).add_(c).addcmul_(delta[rows], a)  # eq. M10: (x − μ)·b + c + a·δ
    return sum_delta, sum_delta_x_hat, grad_input
