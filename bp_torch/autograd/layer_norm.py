"""Layer and group normalisation (eq. T1) with the backward of eq. T2, T3 and the tangent of eq. T4.

Both normalise groups of m values, each with its own μ = mean x and σ̂ = √(mean (x−μ)² + ε) (biased), and scale
and shift the result: y = γ ⊙ x̂ + β, x̂ = (x−μ)/σ̂ (eq. T1). Layer norm's groups are the trailing
``normalized_shape`` dimensions of every sample and γ, β have that shape; group norm's are the channels of one group
(and all their positions) of one sample, and γ, β are per channel. The forward is torch's own kernel (bit for bit
torch's output); the gradients are derived by hand as batch norm's (eq. M8–M10), the statistics taken over a group:
∂e/∂β = Σδ, ∂e/∂γ = Σδ⊙x̂ summed where γ is shared (T2), and with g = γ⊙δ = ∂e/∂x̂,
∂e/∂x = (g − mean g − x̂·mean(g⊙x̂))/σ̂ over each group (T3). Labels T are ours (docs/derivation.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.autograd import Function

from bp_torch._formulas import is_literal
from bp_torch._function import batched_or_traced, in_layout, is_channels_last, linked_with_zero, with_direct_call
from bp_torch.autograd.batch_norm import upcast


class Statistics(NamedTuple):
    """A group's statistics for the backward: torch's μ and 1/σ̂ (the forward's), and to float32's last digits the
    residual ``shift`` = mean(x − μ) that torch's rounded μ leaves (many ulps of σ when |μ| ≫ σ) and 1/σ̂ taken
    from x − μ − shift: x − μ − shift is x − mean x as exactly as the precision allows."""

    mean: torch.Tensor
    shift: torch.Tensor
    invstd: torch.Tensor
    torch_invstd: torch.Tensor
    centered: torch.Tensor  # x − μ (torch's μ), taken once for the statistics and read again by the gradients


def normalised_input_grad(g, x, stats: Statistics, dims):
    """∂e/∂x of x̂ = (x − μ)/σ̂ with μ, σ̂ taken over ``dims``, from g = ∂e/∂x̂ (eq. T3): μ takes mean g away, σ̂
    the component along x̂. A group whose δ is not finite gets torch's kernels' pattern of NaN and infinity, from
    their affine map a·g + b·x + c with their statistics."""
    m = max(math.prod(x.shape[d] for d in dims), 1)
    sum_g = g.sum(dims, keepdim=True)
    centered = stats.centered
    if is_literal():
        x_hat = (centered - stats.shift) * stats.invstd  # eq. T1: x̂ = (x − μ)/σ̂
        g_x_hat = (g * x_hat).mean(dims, keepdim=True)
        grad = (g - g.mean(dims, keepdim=True) - x_hat * g_x_hat) * stats.invstd  # eq. T3
        finite = torch.isfinite(sum_g) & torch.isfinite(g_x_hat)
        b, c = _torchs_affine(g, x, stats, dims, sum_g, m)
        return torch.where(finite, grad, g * stats.torch_invstd + b * x + c)  # eq. T3: a·g + b·x + c
    # eq. T3 as one affine map per group, a·g + b·(x − μ) + c: a = 1/σ̂, b = −Σ g·x̂/(mσ̂²) = −Σ g·(x − μ)/(mσ̂³),
    # c = −Σ g/(mσ̂); x − μ (not x, as torch's kernels) so that b's term does not cancel c's digits when |μ| ≫ σ
    product = g * centered
    sum_g_centered = product.sum(dims, keepdim=True) - stats.shift * sum_g  # Σ g·(x − μ − shift)
    b = sum_g_centered * stats.invstd.pow(3) * (-1 / m)  # eq. T3: b = −Σ g·(x − μ)/(mσ̂³)
    c = -b * stats.shift - sum_g * stats.invstd * (1 / m)  # eq. T3: c = −Σ g/(mσ̂), with the residual shift
    if not (torch.is_grad_enabled() or batched_or_traced(g)) and bool(torch.isfinite(sum_g_centered + sum_g).all()):
        # every group's δ finite (the common case, told by one check): the map written over the product's memory,
        # as batch norm's (eq. M10); nothing records it, and no transform needs out-of-place operations
        # a·g rounded first, as c's −Σg/(mσ̂) is: for a group of one value the two cancel exactly
        return torch.mul(g, stats.invstd, out=product).addcmul_(centered, b).add_(c)  # eq. T3: a·g + b·(x − μ) + c
    # where δ is not finite: torch's a, b and c (b·x + c, not b·(x − μ) + c: their NaN and infinities)
    finite = torch.isfinite(sum_g) & torch.isfinite(sum_g_centered)
    torch_b, torch_c = _torchs_affine(g, x, stats, dims, sum_g, m)
    a = torch.where(finite, stats.invstd, stats.torch_invstd)
    b, c = torch.where(finite, b, torch_b), torch.where(finite, c, torch_c)
    shifted = torch.where(finite, centered, x)
    return g * a + b * shifted + c  # eq. T3: a·g + b·(x − μ) + c


def _torchs_affine(g, x, stats: Statistics, dims, sum_g, m):
    """b and c of eq. T3 as torch's kernels' affine map a·g + b·x + c per group (their statistics)."""
    mean, invstd = stats.mean, stats.torch_invstd
    b = (sum_g * mean - (g * x).sum(dims, keepdim=True)) * invstd.pow(3) * (1 / m)  # eq. T3: (μΣg − Σg·x)/(mσ̂³)
    return b, -b * mean - sum_g * invstd * (1 / m)  # eq. T3: c = −b·μ − Σg/(mσ̂)


def normalised_tangent(x_t, x, stats: Statistics, dims):
    """x̂' = (ẋ − mean ẋ − x̂·mean(ẋ⊙x̂))/σ̂ (eq. T4): the Jacobian of eq. T3 is symmetric, so the same map."""
    return normalised_input_grad(x_t, x, stats, dims)  # eq. T4


def normalised(x, stats: Statistics):
    """x̂ = (x − μ)/σ̂ (eq. T1), to the last digits (the residual shift taken away)."""
    return (stats.centered - stats.shift) * stats.invstd  # eq. T1


def _statistics(x, dims, eps, mean, invstd) -> Statistics:
    """The :class:`Statistics` of x's groups from torch's μ and 1/σ̂ (in x's dtype: float32 for half precision,
    which is what torch's kernels accumulate in). Functions of x all the same where a graph of the backward is being
    built: x − μ − mean(x − μ) is x − mean x whatever the constant μ."""
    mean, invstd = mean.to(x.dtype), invstd.to(x.dtype)
    centered = x - mean
    if x.numel() == 0:  # nothing normalised: no statistics to recompute
        return Statistics(mean, torch.zeros_like(mean), invstd, invstd, centered)
    # the residual's mean and the variance about it, mean((x − μ)²) − shift²: shift is a rounding of μ, so its square
    # takes no digits from the variance; two plain reductions, as torch's var_mean runs Welford's update element by
    # element over each short row (its cost: benchmarks/README.md, "the norms' statistics"); never below 0
    shift = centered.mean(dims, keepdim=True)
    var = (centered.square().mean(dims, keepdim=True) - shift.square()).clamp(min=0)
    return Statistics(mean, shift, torch.rsqrt(var + eps), invstd, centered)  # eq. T1: μ + shift, 1/σ̂


@with_direct_call
class LayerNormFunction(Function):
    """Layer normalisation over the trailing ``len(normalized_shape)`` dimensions; returns ``(output, mean,
    invstd)``, the last two torch's per-group statistics (kept-dim shape), not differentiable.

    Arguments arrive validated by ``bp_torch.functional.layer_norm``; ``normalized_shape`` is a tuple of ints.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, normalized_shape: tuple, weight, bias, eps: float):
        return torch.native_layer_norm(input, normalized_shape, weight, bias, eps)  # eq. T1

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, normalized_shape, weight, _, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        needs_input = ctx.needs_input_grad[0]
        ctx.save_for_backward(input, weight if needs_input else None, mean, invstd)
        ctx.save_for_forward(input, weight, mean, invstd)
        ctx.eps, ctx.dims = eps, tuple(range(-len(normalized_shape), 0))
        ctx.weight_dtype = weight.dtype if weight is not None else None

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_invstd):
        input, weight, mean, invstd = ctx.saved_tensors
        needs_input, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        dims, dtype = ctx.dims, grad_output.dtype
        # γ and β are shared by every group: their gradients sum over the leading dimensions (if there are any)
        shared = tuple(range(input.dim() - len(dims)))
        total = (lambda t: t.sum(shared)) if shared else (lambda t: t)
        delta, x = upcast(grad_output), upcast(input)
        stats = _statistics(x, dims, ctx.eps, mean, invstd)
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            g = delta if weight is None else delta * upcast(weight)  # ∂e/∂x̂ = γ ⊙ δ
            grad_input = normalised_input_grad(g, x, stats, dims).to(dtype)  # eq. T3
        if needs_weight:
            x_hat = normalised(x, stats)  # eq. T1: x̂ = (x − μ)/σ̂
            # δ ⊙ x̂ over x̂'s own memory where it is laid out as δ (the product's layout is δ's, as torch's), unless
            # this backward is being recorded (x̂ then belongs to the graph) or a transform is at work (no out=)
            recorded = torch.is_grad_enabled() or batched_or_traced(delta)
            in_place = not recorded and x_hat.stride() == delta.stride()
            product = torch.mul(delta, x_hat, out=x_hat) if in_place else delta * x_hat
            grad_weight = total(product).to(ctx.weight_dtype)  # eq. T2: ∂e/∂γ = Σ δ ⊙ x̂
        if needs_bias:
            grad_bias = total(delta).to(ctx.weight_dtype or dtype)  # eq. T2: ∂e/∂β = Σ δ
        return grad_input, None, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, input_t, _normalized_shape_t, weight_t, bias_t, _eps_t):
        input, weight, mean, invstd = ctx.saved_tensors
        dims, dtype, x = ctx.dims, input.dtype, upcast(input)
        stats = _statistics(x, dims, ctx.eps, mean, invstd)
        x_hat = normalised(x, stats)  # eq. T1
        out_t = torch.zeros_like(x_hat)
        if input_t is not None:
            x_hat_t = normalised_tangent(upcast(input_t), x, stats, dims)  # eq. T4: x̂'
            out_t = out_t + (x_hat_t if weight is None else x_hat_t * upcast(weight))  # eq. T4: γ ⊙ x̂'
        if weight_t is not None:
            out_t = out_t + upcast(weight_t) * x_hat  # eq. T4: γ̇ ⊙ x̂
        if bias_t is not None:
            out_t = out_t + upcast(bias_t)  # eq. T4: β̇
        return out_t.to(dtype), None, None


@with_direct_call
class GroupNormFunction(Function):
    """Group normalisation of an ``(N, C, *)`` input in ``num_groups`` groups of channels; returns ``(output, mean,
    invstd)``, the last two torch's ``(N, num_groups)`` statistics, not differentiable.

    Arguments arrive validated by ``bp_torch.functional.group_norm``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, num_groups: int, weight, bias, eps: float):
        N, C = input.shape[:2]
        HxW = math.prod(input.shape[2:])
        return torch.native_group_norm(input, weight, bias, N, C, HxW, num_groups, eps)  # eq. T1

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, num_groups, weight, bias, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        # γ and β also for their edges in a double backward (torch's reaches them, with zeros): C values each
        ctx.save_for_backward(input, weight, mean, invstd, bias)
        ctx.save_for_forward(input, weight, mean, invstd)
        ctx.eps, ctx.num_groups = eps, num_groups
        ctx.weight_dtype = weight.dtype if weight is not None else None
        ctx.channels_last = is_channels_last(input)

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_invstd):
        input, weight, mean, invstd, bias = ctx.saved_tensors
        needs_input, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        dtype = grad_output.dtype
        x, stats, per_channel = _grouped(input, ctx.num_groups, ctx.eps, mean, invstd)
        mean, invstd = stats.mean, stats.torch_invstd
        delta = upcast(grad_output).reshape(x.shape)
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            g = delta if weight is None else delta * upcast(weight).reshape(per_channel)  # ∂e/∂x̂ = γ ⊙ δ
            grad_input = normalised_input_grad(g, x, stats, (2, 3))  # eq. T3
            grad_input = in_layout(grad_input.reshape(input.shape).to(dtype), ctx.channels_last)
        if needs_weight:
            sum_delta = delta.sum(3)
            if is_literal():
                grad_weight = (delta * normalised(x, stats)).sum((0, 3))  # eq. T2: ∂e/∂γ = Σ δ ⊙ x̂
            else:  # Σ δ⊙x̂ = (Σ δ·(x − μ) − shift Σ δ)/σ̂ per sample and channel: no x̂ map in memory
                shift, accurate = stats.shift.squeeze(-1), stats.invstd.squeeze(-1)
                grad_weight = (((delta * (x - mean)).sum(3) - shift * sum_delta) * accurate).sum(0)  # eq. T2
            # where the channel's δ is not finite: torch's NaN and infinities, from (Σ δx − μ Σ δ)/σ̂ as its kernel
            torchs = ((delta * x).sum(3) - mean.squeeze(-1) * sum_delta) * invstd.squeeze(-1)  # eq. T2, (N, G, C/G)
            grad_weight = torch.where(torch.isfinite(sum_delta.sum(0)), grad_weight, torchs.sum(0))
            grad_weight = grad_weight.reshape(-1).to(ctx.weight_dtype)
        if needs_bias:
            grad_bias = delta.sum((0, 3)).reshape(-1).to(ctx.weight_dtype or dtype)  # eq. T2: Σ δ
        # torch's double backward reaches γ and β with zeros where no first derivative varies with them (β never;
        # γ without x's gradient, or over an empty batch)
        grad_input = linked_with_zero(grad_input, weight, bias)
        grad_weight = linked_with_zero(grad_weight, weight, bias)
        return grad_input, None, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, input_t, _num_groups_t, weight_t, bias_t, _eps_t):
        input, weight, mean, invstd = ctx.saved_tensors
        x, stats, per_channel = _grouped(input, ctx.num_groups, ctx.eps, mean, invstd)
        x_hat = normalised(x, stats)  # eq. T1
        out_t = torch.zeros_like(x_hat)
        if input_t is not None:
            x_hat_t = normalised_tangent(upcast(input_t).reshape(x.shape), x, stats, (2, 3))  # eq. T4: x̂'
            out_t = out_t + (x_hat_t if weight is None else x_hat_t * upcast(weight).reshape(per_channel))  # eq. T4
        if weight_t is not None:
            out_t = out_t + upcast(weight_t).reshape(per_channel) * x_hat  # eq. T4: γ̇ ⊙ x̂
        if bias_t is not None:
            out_t = out_t + upcast(bias_t).reshape(per_channel)  # eq. T4: β̇
        return in_layout(out_t.reshape(input.shape).to(input.dtype), ctx.channels_last), None, None


def _grouped(input, num_groups: int, eps: float, mean, invstd):
    """Group norm's x as (N, G, C/G, H·W) (a group's values along dims 2 and 3), its :class:`Statistics`, and the
    shape (1, G, C/G, 1) a per-channel γ is read in."""
    N, C, G = input.shape[0], input.shape[1], num_groups
    x = upcast(input).reshape(N, G, C // G, math.prod(input.shape[2:]))  # (N, G, C/G, H·W)
    stats = _statistics(x, (2, 3), eps, mean.reshape(N, G, 1, 1), invstd.reshape(N, G, 1, 1))
    return x, stats, (1, G, C // G, 1)
