"""GELU, y = x·Φ(x), exact or with torch's tanh approximation, with the derivatives of eq. T5 and T6.

Φ is the standard normal distribution function and φ = Φ' its density. Exact: y' = Φ(x) + x·φ(x) (eq. T5).
Approximated, y = ½x(1 + tanh u) with u = √(2/π)(x + 0.044715x³): y' = ½(1 + tanh u) + ½x(1 − tanh²u)·u' with
u' = √(2/π)(1 + 3·0.044715x²) (eq. T6). Backward δ·y', tangent y'·ẋ; the forward is torch's kernel. The slope is
evaluated one precision wider than the input (float32 in float64, half precision in float32) and rounded once.
Labels T are ours (docs/derivation.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._function import with_direct_call
from bp_torch.autograd.batch_norm import upcast

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_CUBIC = 0.044715


def gelu_derivative(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """y'(x), in x's dtype (the caller widens it: :func:`_wide`)."""
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
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        slope = gelu_derivative(_wide(input), ctx.approximate)
        return (_wide(grad_output) * slope).to(grad_output.dtype), None  # eq. T5/T6: δ·y'

    @staticmethod
    def jvp(ctx, input_t, _):
        (input,) = ctx.saved_tensors
        return (_wide(input_t) * gelu_derivative(_wide(input), ctx.approximate)).to(input.dtype)  # eq. T5/T6: y'·ẋ


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 as float64, half precision as float32: y' = Φ + xφ (and eq. T6's two terms) cancel where y' crosses
    zero, and float32 evaluated there is off by some 20 ulps, more than torch's kernel; one wider evaluation and one
    rounding keep every slope within half an ulp."""
    return t.double() if t.dtype == torch.float32 else upcast(t)
