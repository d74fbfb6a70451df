"""The activations of the mobile networks: hardtanh (and ReLU6, its [0, 6] case), hardsigmoid, hardswish and SiLU,
with the backward and jvp of docs/derivation.md eq. H1–H4.

torch computes each derivative in float32 for half-precision inputs ("opmath"); the smooth ones here do the same
(:func:`_opmath`), the piecewise-constant ones (a mask times δ) need no wider type.

Literal mode computes each derivative as written, with boolean masks. Fast mode (the default) computes the same
numbers with float arithmetic on one fresh buffer, updated in place: on the CPU a boolean mask costs several times
a float pass, and every fresh tensor its first-touch page faults. Both give torch's values at the kinks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._function import elementwise_layout, linked_with_zero, masks_may_multiply, with_direct_call

_LOW = (torch.float16, torch.bfloat16)
# torch's hardsigmoid backward multiplies by the float constant 1.0f/6.0f, in every dtype: so do we
_ONE_SIXTH = 0.1666666716337204


def _fast(grad_output: torch.Tensor, saved: torch.Tensor) -> bool:
    """Whether fast mode's arithmetic masks may stand in for torch's selections: on the CPU, for full-precision real
    tensors, and only when δ is finite (δ = ±inf times a zero mask is NaN where a selection gives 0); one sum tells."""
    return masks_may_multiply(saved, grad_output) and math.isfinite(grad_output.sum().item())


def _times(grad_output: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """δ ⊙ factor in the layout torch's elementwise backward kernels give (δ's first, then the input's): in place in
    ``factor``, a fresh buffer, when the two are laid out alike."""
    if factor.stride() == grad_output.stride():
        return factor.mul_(grad_output)
    return torch.mul(grad_output, factor)


def _opmath(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is half precision (torch's opmath type on CPU and CUDA), else ``t``."""
    return t.float() if t.dtype in _LOW else t


@with_direct_call
class HardtanhFunction(Function):
    """clamp(x, min_val, max_val); backward δ where min_val < x < max_val, 0 elsewhere (eq. H1). ReLU6 is
    ``min_val=0, max_val=6``. ``inplace`` overwrites x, as ``torch.nn.functional.hardtanh_`` does."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, min_val: float, max_val: float, inplace: bool):
        if inplace:
            return torch._C._nn.hardtanh_(input, min_val, max_val)
        return torch._C._nn.hardtanh(input, min_val, max_val)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, min_val, max_val, inplace = inputs
        if inplace:
            ctx.mark_dirty(input)
        ctx.min_val, ctx.max_val, ctx.inplace = min_val, max_val, inplace
        # min < y < max exactly where min < x < max: the output serves (in place, it is all that is left of x)
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def _outside(ctx, out: torch.Tensor) -> torch.Tensor:
        # written as torch's hardtanh_backward writes it, so that a NaN input passes δ as there
        return (out <= ctx.min_val) | (out >= ctx.max_val)

    @staticmethod
    @elementwise_layout
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        if not _fast(grad_output, out):
            grad_input = grad_output.masked_fill(HardtanhFunction._outside(ctx, out), 0)  # eq. H1
            # zero derivative in y (double backward), as torch's; laid out as torch's by @elementwise_layout
            return linked_with_zero(grad_input, out), None, None, None
        # (y − min)(max − y) > 0 exactly inside, = 0 at the clamped ends (y ∈ [min, max]): its sign is the mask
        # (at a NaN input: 0, as torch's vectorised loop gives; its scalar loop for the last elements passes δ);
        # y − 0 is y itself (ReLU6: no subtraction)
        above_min = out if ctx.min_val == 0 else torch.sub(out, ctx.min_val)
        inside = torch.rsub(out, ctx.max_val).mul_(above_min).sign_()  # eq. H1: 1[min < x < max]
        return _times(grad_output, inside), None, None, None  # eq. H1: δ ⊙ 1[min < x < max]

    @staticmethod
    def jvp(ctx, input_t, _, __, ___):
        (out,) = ctx.saved_tensors
        if ctx.inplace:  # an input changed in place has its tangent changed in place
            return input_t.masked_fill_(HardtanhFunction._outside(ctx, out), 0)  # eq. H1, forward mode
        return input_t.masked_fill(HardtanhFunction._outside(ctx, out), 0)  # eq. H1, forward mode: ẋ ⊙ 1[inside]


@with_direct_call
class HardsigmoidFunction(Function):
    """relu6(x + 3)/6; backward δ/6 where −3 < x < 3, 0 elsewhere (eq. H2). ``inplace`` overwrites x."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, inplace: bool):
        return torch._C._nn.hardsigmoid_(input) if inplace else torch._C._nn.hardsigmoid(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, inplace = inputs
        if inplace:
            ctx.mark_dirty(input)
        ctx.inplace = inplace
        ctx.save_for_backward(output)  # 0 < y < 1 exactly where −3 < x < 3 (NaN in neither, as in torch)
        ctx.save_for_forward(output)

    @staticmethod
    def _slope(out: torch.Tensor) -> torch.Tensor:
        inside = (out > 0) & (out < 1)
        # 1/6 in float32 for half precision, as torch multiplies by it
        return torch.where(inside, _ONE_SIXTH, 0.0).to(_opmath(out).dtype)  # eq. H2: h'(x) = 1/6 on (−3, 3), else 0

    @staticmethod
    @elementwise_layout
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        if not _fast(grad_output, out):
            inside = (out > 0) & (out < 1)  # a selection, as torch's kernel: an infinite δ outside gives 0
            grad_input = torch.where(inside, _opmath(grad_output) * _ONE_SIXTH, 0).to(grad_output.dtype)  # eq. H2
            return grad_input, None  # laid out as torch's by @elementwise_layout
        # y(1 − y) > 0 exactly where 0 < y < 1, i.e. −3 < x < 3: its sign is the mask, then δ/6 as torch rounds it
        inside = torch.rsub(out, 1).mul_(out).sign_()
        return _times(grad_output, inside).mul_(_ONE_SIXTH), None  # eq. H2: δ ⊙ h'(x) = δ/6 ⊙ 1[−3 < x < 3]

    @staticmethod
    def jvp(ctx, input_t, _):
        (out,) = ctx.saved_tensors
        if ctx.inplace:
            return input_t.mul_(HardsigmoidFunction._slope(out))  # eq. H2, forward mode, in place
        return (_opmath(input_t) * HardsigmoidFunction._slope(out)).to(input_t.dtype)  # eq. H2, forward mode


@with_direct_call
class HardswishFunction(Function):
    """x·relu6(x + 3)/6; backward δ·(x/3 + ½) for −3 < x < 3, δ from 3 up, 0 up to −3 (eq. H3). The derivative needs x,
    which the output does not determine: in place, ``HardswishInplaceFunction`` keeps a copy."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return torch._C._nn.hardswish(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def _slope(x: torch.Tensor) -> torch.Tensor:
        xf = _opmath(x)
        # torch's boundaries: 0 up to −3, x/3 + ½ on (−3, 3), 1 from 3 up
        return torch.where(xf <= -3, 0.0, torch.where(xf < 3, xf / 3 + 0.5, 1.0))  # eq. H3: h'(x)

    @staticmethod
    @elementwise_layout
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        if not _fast(grad_output, x):
            xf, grad = _opmath(x), _opmath(grad_output)
            # selections, as torch's kernel: an infinite δ gives 0 up to −3, not NaN
            grad_x = torch.where(xf <= -3, 0.0, torch.where(xf < 3, grad * (xf / 3 + 0.5), grad))  # eq. H3
            return grad_x.to(grad_output.dtype)  # laid out as torch's by @elementwise_layout
        # x/3 + ½ on (−3, 3), 1 from 3 up, 0 up to −3: x/3 of the clamped x plus t = ½ + ½(s₁ − s₂), where
        # s₁ = sign(max(3 − x, 0)) is 1 below 3 and s₂ = sign(max(x + 3, 0)) is 1 above −3 (t exact: 0, ½ or 1)
        s1 = torch.rsub(x, 3).clamp_(min=0).sign_()
        s2 = torch.add(x, 3).clamp_(min=0).sign_()
        offset = s1.sub_(s2).mul_(0.5).add_(0.5)
        slope = torch.clamp(x, -3, 3).div_(3).add_(offset)  # eq. H3: h'(x)
        return _times(grad_output, slope)  # eq. H3: δ ⊙ h'(x)

    @staticmethod
    def jvp(ctx, input_t):
        (x,) = ctx.saved_tensors
        return (_opmath(input_t) * HardswishFunction._slope(x)).to(input_t.dtype)  # eq. H3, forward mode


@with_direct_call
class SiluFunction(Function):
    """x·σ(x); backward δ·σ(x)(1 + x(1 − σ(x))) (eq. H4), in float32 for half-precision x as torch computes it. The
    derivative needs x: in place, ``SiluInplaceFunction`` keeps a copy."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return F.silu(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def _slope(x: torch.Tensor) -> torch.Tensor:
        xf = _opmath(x)
        s = torch.sigmoid(xf)
        return s * (1 + xf * (1 - s))  # eq. H4: (xσ)' = σ + xσ(1 − σ) = σ(1 + x(1 − σ))

    @staticmethod
    @elementwise_layout
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        if x.is_complex():
            slope = SiluFunction._slope(x)
            return grad_output * slope.conj()  # eq. H4: δ ⊙ conj(silu'(x))
        if not _fast(grad_output, x):
            xf = _opmath(x)
            s = torch.sigmoid(xf)
            # in torch's order and roundings: (δσ)(1 + x(1 − σ)), the last factor fused (one rounding: it cancels
            # near silu's minimum, x ≈ −1.28)
            rest = torch.addcmul(xf.new_ones(()), xf, 1 - s)  # eq. H4: 1 + x(1 − σ)
            return (_opmath(grad_output) * s * rest).to(grad_output.dtype)  # eq. H4: δ ⊙ σ(1 + x(1 − σ))
        s = torch.sigmoid(x)
        if torch.is_grad_enabled():  # a graph of this backward is being built: no out= and no writes over σ
            rest = torch.addcmul(x.new_ones(()), x, torch.rsub(s, 1))  # eq. H4: 1 + x(1 − σ), fused as above
            return torch.mul(grad_output, s).mul_(rest)  # eq. H4: (δ ⊙ σ) ⊙ (1 + x(1 − σ))
        rest = torch.rsub(s, 1)
        torch.addcmul(x.new_ones(()), x, rest, out=rest)  # eq. H4: 1 + x(1 − σ), fused as above, in 1 − σ's buffer
        if s.stride() == grad_output.stride():  # laid out as δ (torch's layout): over σ's buffer
            return s.mul_(grad_output).mul_(rest)  # eq. H4: (σ ⊙ δ) ⊙ (1 + x(1 − σ))
        return torch.mul(grad_output, s).mul_(rest)  # eq. H4: (δ ⊙ σ) ⊙ (1 + x(1 − σ))

    @staticmethod
    def jvp(ctx, input_t):
        (x,) = ctx.saved_tensors
        return (_opmath(input_t) * SiluFunction._slope(x)).to(input_t.dtype)  # eq. H4, forward mode


def _in_place_twin(function: type[Function], write_: Callable) -> type[Function]:
    """``function`` in place, for a derivative that reads the x the write destroys: called as ``(x, x.clone())``, it
    writes the result into x, as torch's in-place op does, and keeps the clone for the backward. The output depends
    on x's old values through the clone alone, so δ goes to the clone (whose backward passes it on to x's history)
    and none to x itself; the backward and jvp are ``function``'s, on the clone."""

    def forward(input, original):
        return write_(input)

    def setup_context(ctx, inputs, output):
        input, original = inputs
        ctx.mark_dirty(input)
        ctx.on_view = input._is_view()
        ctx.save_for_backward(original)
        ctx.save_for_forward(original)

    derived_gradient, derived_jvp = function.backward, function.jvp

    def backward(ctx, grad_output):
        # x's own gradient is zero; on a view it must be a tensor, which CopySlices writes into the base's slice
        zero = grad_output.new_zeros(()).expand_as(grad_output) if ctx.on_view else None
        return zero, derived_gradient(ctx, grad_output)  # eq. H3 (hardswish) or H4 (silu), on the kept copy of x

    def jvp(ctx, input_t, original_t):
        tangent = derived_jvp(ctx, original_t)  # eq. H3 or H4, forward mode, on the copy's tangent
        return tangent if input_t is None else input_t.copy_(tangent)  # an input changed in place: its tangent too

    namespace = {"forward": forward, "setup_context": setup_context, "backward": backward, "jvp": jvp}
    namespace = {k: staticmethod(v) for k, v in namespace.items()}
    name = function.__name__.replace("Function", "InplaceFunction")
    namespace.update(__module__=function.__module__, __qualname__=name, __doc__=f"{function.__name__}, in place.")
    namespace["generate_vmap_rule"] = True
    return with_direct_call(type(name, (Function,), namespace))


HardswishInplaceFunction = _in_place_twin(HardswishFunction, torch._C._nn.hardswish_)
SiluInplaceFunction = _in_place_twin(SiluFunction, torch._C._nn.silu_)
