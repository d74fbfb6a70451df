"""GELU, y = x·Φ(x), exact or with torch's tanh approximation, with the derivatives of eq. T5 and T6.

Φ is the standard normal distribution function and φ = Φ' its density. Exact: y' = Φ(x) + x·φ(x) (eq. T5).
Approximated, y = ½x(1 + tanh u) with u = √(2/π)(x + 0.044715x³): y' = ½(1 + tanh u) + ½x(1 − tanh²u)·u' with
u' = √(2/π)(1 + 3·0.044715x²) (eq. T6). Backward δ·y', tangent y'·ẋ; the forward is torch's kernel. Labels T are
ours (docs/derivation.md).

The two terms of y' cancel where y' crosses zero (x₀ ≈ −0.7518), and Φ = ½(1 + erf) cancels in its left tail. In
literal mode, and for the tanh form, the slope is evaluated one precision wider than the input (float32 in float64,
half precision in float32) and rounded once. In fast mode the exact form is evaluated in the input's precision (half
in float32) without either cancellation: Φ as ½·erfc(−x/√2), and within 0.35 of x₀ y' as its Taylor polynomial in
t = x − x₀ (eq. T5's derivatives: y^(k) = Q_k·φ, Q_1 = 2 − x², Q_{k+1} = Q_k' − x·Q_k), as close to the truth as
the wider evaluation, without float64. On a tensor larger than a block, fast mode evaluates that chain of a dozen
passes block by block (:mod:`bp_torch._blockwise`): the same values, with its temporaries in cache.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._blockwise import blockwise, can_run_blockwise
from bp_torch._formulas import is_literal
from bp_torch._function import batched_or_traced, elementwise_layout, with_direct_call
from bp_torch.autograd.batch_norm import upcast

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_CUBIC = 0.044715


def _root_and_taylor(degree: int = 10) -> tuple[float, list[float]]:
    """x₀ with y'(x₀) = Φ(x₀) + x₀φ(x₀) = 0 (Newton's method in float64), and the Taylor coefficients of y' there,
    c_k = Q_k(x₀)·φ(x₀)/k! for k = 1 … degree (eq. T5 differentiated: y^(k) = Q_k·φ)."""

    def pdf(x):
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    x0 = -0.75
    for _ in range(8):
        x0 -= (0.5 * math.erfc(-x0 / math.sqrt(2)) + x0 * pdf(x0)) / ((2 - x0 * x0) * pdf(x0))
    q, coefficients = [2.0, 0.0, -1.0], []  # Q_1 = 2 − x², by power of x
    for k in range(1, degree + 1):
        coefficients.append(sum(c * x0**i for i, c in enumerate(q)) * pdf(x0) / math.factorial(k))
        derivative = [i * c for i, c in enumerate(q)][1:] + [0.0, 0.0]
        q = [derivative[i] - (q[i - 1] if i else 0.0) for i in range(len(q) + 1)]  # Q_{k+1} = Q_k' − x·Q_k
    return x0, coefficients


_ROOT, _TAYLOR = _root_and_taylor()
_ROOT_HI = torch.tensor(_ROOT, dtype=torch.float32).item()  # x₀ as float32, and the rest
_ROOT_LO = _ROOT - _ROOT_HI
_NEAR_ROOT = 0.35  # within it the float32 terms cancel to a few ulps of y' or worse; the polynomial: 8e-9 of y'


@functools.cache
def _taylor_coefficients(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The c_k of eq. T5's Taylor polynomial, highest degree first, as 0-d tensors of ``dtype`` (addcmul's addend)."""
    return tuple(torch.tensor(c, dtype=dtype) for c in reversed(_TAYLOR))


def _exact_slope(x: torch.Tensor) -> torch.Tensor:
    """eq. T5 in x's precision without cancellation (fast mode, nothing recording it): Φ + xφ with
    Φ = ½·erfc(−x/√2), and near the root x₀ the Taylor polynomial Σ c_k·t^k, t = x − x₀ (x₀ split in two parts: t is
    exact where it is used). In place, in three buffers: on a CPU a new tensor's first write costs several passes."""
    slope = x.mul(-math.sqrt(0.5)).erfc_().mul_(0.5)  # Φ(x), accurate where ½(1 + erf) would cancel (x ≪ 0)
    gauss = x.square().mul_(-0.5).exp_()  # e^(−x²/2): φ(x) but for its constant, which the product takes
    slope.addcmul_(x, gauss, value=1 / math.sqrt(2 * math.pi))  # eq. T5: y' = Φ(x) + x·φ(x), φ = e^(−x²/2)/√(2π)
    if x.dtype == torch.float64:  # its cancellation near x₀ costs a few float64 ulps: torch's own there
        return slope
    # the polynomial on every value clamped into the window (in the Gaussian's buffer), then blended in by a 0/1
    # weight: cheaper than a mask's selection, and no data-dependent shape (vmap, compile)
    t = torch.clamp(x, _ROOT - _NEAR_ROOT, _ROOT + _NEAR_ROOT, out=gauss)
    t.sub_(_ROOT_HI).sub_(_ROOT_LO)  # x − x₀: the first difference is exact (Sterbenz), the second rounds once
    # near x₀, y' = Σ_k c_k t^k by Horner's rule: each step p·t + c one fused pass (addcmul)
    coefficients = _taylor_coefficients(t.dtype)
    taylor = torch.addcmul(coefficients[1], t, coefficients[0])
    for c in coefficients[2:]:
        torch.addcmul(c, taylor, t, out=taylor)  # eq. T5 near x₀: p ← p·t + c_k
    taylor.mul_(t)
    # 1 strictly inside the window, 0 where the clamp moved x (|t| is the window's half-width there, give or take
    # its rounding: the bound sits a hair inside it)
    inside = t.abs_().lt_(_NEAR_ROOT * (1 - 1e-5))
    # eq. T5: the polynomial within the window, Φ + xφ outside (lerp with a weight of exactly 0 or 1 is exact)
    return slope.lerp_(taylor, inside)


def _exact_gradient(grad_output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """δ·y' with eq. T5 in fast mode's form (:func:`_exact_slope`), half precision in float32."""
    return _exact_slope(upcast(input)).mul_(grad_output)  # eq. T5: δ·y'


def gelu_derivative(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """y'(x) as eq. T5 or T6 is written, in x's dtype (the caller widens it: :func:`_slope`)."""
    if approximate == "tanh":
        x_sq = x * x
        t = torch.tanh(_SQRT_2_OVER_PI * (x + _CUBIC * (x_sq * x)))  # tanh u
        u_prime = _SQRT_2_OVER_PI * (1 + 3 * _CUBIC * x_sq)  # u' = √(2/π)(1 + 3·0.044715x²)
        return 0.5 * (1 + t) + (0.5 * x) * (1 - t * t) * u_prime  # eq. T6
    cdf = 0.5 * (1 + torch.erf(x * math.sqrt(0.5)))  # Φ(x)
    pdf = (1 / math.sqrt(2 * math.pi)) * torch.exp(x * x * -0.5)  # φ(x)
    return cdf + x * pdf  # eq. T5: y' = Φ(x) + x·φ(x)


@with_direct_call
class GeluFunction(Function):
    """GELU(x) = x·Φ(x) (``approximate="none"``) or its tanh approximation; backward δ·y' (eq. T5, T6)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, approximate: str):
        return F.gelu(input, approximate=approximate)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.approximate = inputs[1]
        ctx.save_for_backward(inputs[0])  # y' is a function of x alone
        ctx.save_for_forward(inputs[0])

    @staticmethod
    @elementwise_layout
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        if ctx.approximate == "none" and not is_literal() and can_run_blockwise(grad_output, input):
            # fast mode's y' (eq. T5) and the product with δ over blocks of the tensor, in cache
            return blockwise(_exact_gradient, grad_output, input, dtype=grad_output.dtype), None
        slope = _slope(input, ctx.approximate)  # a buffer of its own
        if not (torch.is_grad_enabled() or batched_or_traced(grad_output)) and slope.dtype == grad_output.dtype:
            if slope.stride() == grad_output.stride():  # laid out as δ, as torch's gradient is: in place
                return slope.mul_(grad_output), None  # eq. T5/T6: δ·y'
        return (_as(grad_output, slope) * slope).to(grad_output.dtype), None  # eq. T5/T6: δ·y'

    @staticmethod
    def jvp(ctx, input_t, _):
        (input,) = ctx.saved_tensors
        slope = _slope(input, ctx.approximate)
        return (_as(input_t, slope) * slope).to(input.dtype)  # eq. T5/T6: y'·ẋ


def _slope(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """y'(x): in fast mode, unless autograd records it (a second derivative, which differentiates the formula), the
    exact form in x's precision without cancellation (half in float32); otherwise eq. T5 or T6 as written, one
    precision wider than x (float32 in float64, half in float32) and rounded once by the caller — where y' = Φ + xφ
    (and T6's two terms) cancel, float32 as written is off by some 20 ulps."""
    if approximate == "none" and not is_literal() and not torch.is_grad_enabled():
        return _exact_slope(upcast(x))
    return gelu_derivative(x.double() if x.dtype == torch.float32 else upcast(x), approximate)


def _as(t: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """δ (or ẋ) in the slope's precision."""
    return t if t.dtype == slope.dtype else t.to(slope.dtype)
