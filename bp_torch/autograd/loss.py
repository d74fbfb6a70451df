"""The losses: mean squared error (Note B eq. 13–16, docs/derivation.md eq. D7, D8), negative log-likelihood (eq. D9)
and softmax cross-entropy (eq. D10–D12), each backward the derived formula.

Arguments arrive validated and normalised by ``bp_torch.functional``: same-shaped input and target for the squared
error; a batch dimension, classes along dimension 1, for the other two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._formulas import is_literal
from bp_torch._function import linked_with_zero, nested_apply, opmath, with_direct_call
from bp_torch.autograd.softmax import LogSoftmaxFunction, SoftmaxFunction


def _reduce(per_element: torch.Tensor, reduction: str, denominator=None) -> torch.Tensor:
    if reduction == "none":
        return per_element
    total = per_element.sum()
    return total if reduction == "sum" else total / (per_element.numel() if denominator is None else denominator)


@with_direct_call
class MSELossFunction(Function):
    """L = Σ w (ŷ − y)² / D, torch's ``mse_loss`` (no ½; D = the element count, or Σw with a weight, for ``"mean"``;
    the input and target come broadcast, the weight of the input's size as given, broadcast by the product);
    backward ∂L/∂ŷ = 2w(ŷ − y)/D = −∂L/∂y (Note B eq. 13–16, eq. D7), ∂L/∂w (eq. D8)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction: str):
        if weight is None:
            return F.mse_loss(input, target, reduction=reduction)
        loss = torch.pow(input - target, 2) * weight  # torch's weighted form, operation for operation
        return loss.sum() / weight.sum() if reduction == "mean" else _reduce(loss, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction = inputs
        ctx.reduction = reduction
        ctx.save_for_backward(input, target, weight, output if weight is not None and reduction == "mean" else None)
        ctx.save_for_forward(input, target, weight, output)

    @staticmethod
    def backward(ctx, grad_output):
        input, target, weight, loss = saved = ctx.saved_tensors
        dtypes = [t.dtype if t is not None else None for t in (input, target, weight)]
        as_given = grad_output
        # half precision: computed in float32 (torch's opmath), each gradient cast back to its input's dtype
        input, target, weight, loss, grad_output = map(opmath, (input, target, weight, loss, grad_output))
        grad_input = grad_target = grad_weight = None
        diff = input - target
        # D: the element count ("mean"), Σw ("mean" with a weight), 1 ("sum", "none")
        if ctx.reduction != "mean":
            scale = grad_output
        else:
            scale = grad_output / (weight.sum() if weight is not None else diff.numel())
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # with Note B's ½ (w = ½, D = 1 per image) this is its ŷ − y, the first factor of eq. 17's Δŷ
            if weight is None:  # contiguous, as torch's mse_loss_backward allocates it
                delta = (diff * (2 * scale)).contiguous()  # Note B eq. 13/17, eq. D7: ∂L/∂ŷ = 2(ŷ − y)/D
            else:  # in the layout of torch's composed weighted form: δ's, else the weight's
                delta = (scale * weight) * (2 * diff)  # Note B eq. 13/17, eq. D7: ∂L/∂ŷ = 2w(ŷ − y)/D
            grad_input = delta if ctx.needs_input_grad[0] else None
            grad_target = -delta if ctx.needs_input_grad[1] else None  # eq. D7: ∂L/∂y = −∂L/∂ŷ
        if ctx.needs_input_grad[2]:
            # the weight has the input's size, broadcast against the target: its gradient sums over the copies
            if ctx.reduction == "mean":
                # two terms that cancel where (ŷ − y)² ≈ L, computed as torch's composed weighted form computes them,
                # operation for operation in the inputs' dtype (the same roundings cancel alike; an infinite δ gives
                # NaN, not ±∞)
                x, y, w, L = saved
                total = w.sum()
                squares = ((as_given / total) * torch.pow(x - y, 2)).sum_to_size(w.shape)  # eq. D8: (ŷ − y)²/Σw
                grad_weight = squares - as_given * (L / total)  # eq. D8: ∂L/∂w = ((ŷ − y)² − L)/Σw
            else:
                grad_weight = (scale * diff * diff).sum_to_size(weight.shape)  # eq. D8: ∂L/∂w = (ŷ − y)², δ's layout
        return (*(g if g is None else g.to(d) for g, d in zip((grad_input, grad_target, grad_weight), dtypes)), None)

    @staticmethod
    def jvp(ctx, input_t, target_t, weight_t, _):
        input, target, weight, loss = ctx.saved_tensors
        diff = input - target
        diff_t = (input_t if input_t is not None else 0) - (target_t if target_t is not None else 0)
        rate = 2 * diff * diff_t * (weight if weight is not None else 1)  # eq. D7, forward mode: 2w(ŷ − y)(ŷ̇ − ẏ)
        if weight_t is not None:
            rate = rate + diff * diff * weight_t  # eq. D8, forward mode: (ŷ − y)² ẇ
        if weight is None or ctx.reduction != "mean":
            return _reduce(rate, ctx.reduction)
        weight_rate = weight_t.sum() if weight_t is not None else 0
        return (rate.sum() - loss * weight_rate) / weight.sum()  # eq. D8, forward mode: (Ṡ − L Σẇ)/Σw


def _safe_targets(target: torch.Tensor, ignore_index: int):
    """The kept positions and the class indices with ignored ones made 0, a valid index (their rows weigh 0)."""
    kept = target != ignore_index
    return kept, target.long().masked_fill(~kept, 0)


def _support(ctx, target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Where class-index targets put a term (torch's nll_loss writes only there): each kept position's target class,
    and with label smoothing every class of a kept position."""
    kept, classes = _safe_targets(target, ctx.ignore_index)
    support = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    support = support.scatter(1, _per_element(classes), _per_element(kept))
    return support | _per_element(kept) if ctx.label_smoothing > 0 else support


def _per_element(t: torch.Tensor) -> torch.Tensor:
    """(N, d...) -> (N, 1, d...): broadcast along the class dimension (a scalar broadcasts as it is)."""
    return t.unsqueeze(1) if t.dim() else t


def _class_weight(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """(C,) -> (1, C, 1, ...): broadcast over the batch and the extra dimensions."""
    return None if weight is None else weight.view(1, -1, *([1] * (like.dim() - 2)))


@with_direct_call
class NllLossFunction(Function):
    """L = −Σ_n w_{t_n} ℓ_{n, t_n} / D over the log-probabilities ℓ (torch's ``nll_loss``; D = Σ_n w_{t_n} over the
    targets kept, for ``"mean"``); backward −w_{t_n}/D at each target class, zero elsewhere (eq. D9)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction: str, ignore_index: int):
        return F.nll_loss(input, target, weight, reduction=reduction, ignore_index=ignore_index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction, ignore_index = inputs
        ctx.reduction, ctx.ignore_index, ctx.input_shape = reduction, ignore_index, input.shape
        # ℓ itself only for its edge in a double backward (torch's reaches it, with zeros; log_softmax keeps it too)
        ctx.save_for_backward(target, weight, input)
        ctx.save_for_forward(target, weight)

    @staticmethod
    def _coefficients(ctx, target, weight, like) -> tuple[torch.Tensor, torch.Tensor]:
        """The target classes (ignored ones made 0) and −w_{t_n}/D there, zero where ignored."""
        kept, classes = _safe_targets(target, ctx.ignore_index)
        w = (weight[classes] if weight is not None else torch.ones_like(classes, dtype=like.dtype)) * kept
        denominator = w.sum() if ctx.reduction == "mean" else 1
        return classes, torch.where(kept, -w / denominator, 0)

    @staticmethod
    def backward(ctx, grad_output):
        target, weight, input = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        dtype, grad_output = grad_output.dtype, opmath(grad_output)  # half precision: −w/D·δ in float32
        classes, coefficient = NllLossFunction._coefficients(ctx, target, opmath(weight), grad_output)
        zeros, index = grad_output.new_zeros(ctx.input_shape), _per_element(classes)
        # times the incoming δ (one per position for "none"); under torch.func out of place (vmap batches no
        # in-place scatter without a loop)
        scatter = zeros.scatter if torch._C._are_functorch_transforms_active() else zeros.scatter_
        # an ignored position's gradient is 0 whatever its δ (torch's kernel skips it: a NaN δ stays out)
        delta = torch.where(target != ctx.ignore_index, coefficient * grad_output, 0)
        grad_input = scatter(1, index, _per_element(delta))  # eq. D9: −w_{t_n}/D at t_n
        return linked_with_zero(grad_input.to(dtype), input), None, None, None, None  # constant in ℓ

    @staticmethod
    def jvp(ctx, input_t, target_t, weight_t, _, __):
        target, weight = ctx.saved_tensors
        kept, classes = _safe_targets(target, ctx.ignore_index)
        w = (weight[classes] if weight is not None else torch.ones_like(classes, dtype=input_t.dtype)) * kept
        picked = input_t.gather(1, _per_element(classes)).squeeze(1)
        # an ignored position adds nothing, whatever its tangent (as torch's nll_loss of the tangent skips it)
        terms = torch.where(kept, -w * picked, 0)  # eq. D9, forward mode: −w_{t_n} ℓ̇_{n, t_n}
        if ctx.reduction == "mean":  # summed, then divided by D, as torch's: D = 0 (every target ignored) gives NaN
            return terms.sum() / w.sum()
        return _reduce(terms, ctx.reduction)


@with_direct_call
class CrossEntropyFunction(Function):
    """Softmax cross-entropy on logits x, torch's ``cross_entropy`` (class-index or class-probability targets,
    weight, ignore_index, label_smoothing, reduction): L = −Σ_n Σ_c a_nc ℓ_nc / D with ℓ = log_softmax(x) and a the
    weighted, smoothed targets (eq. D10, D11); backward (s_n p_n − a_n)/D, p = softmax(x), s_n = Σ_c a_nc — for plain
    class indices, the softmax minus the one-hot target.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction: str, ignore_index: int, label_smoothing: float):
        return F.cross_entropy(
            input, target, weight, reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction, ignore_index, label_smoothing = inputs
        ctx.reduction, ctx.ignore_index, ctx.label_smoothing = reduction, ignore_index, label_smoothing
        ctx.probabilities = target.shape == input.shape  # torch's rule: the same shape means class probabilities
        # the backward recomputes p = softmax(x): one fused pass, cheaper on the CPU than e^ℓ from a saved ℓ
        ctx.save_for_backward(input, target, weight)
        ctx.save_for_forward(input, target, weight)

    @staticmethod
    def _terms(ctx, input, target, weight, scale):
        """eq. D11 with its normaliser: the dense targets a, s_n = Σ_c a_nc (N, 1, d...) and the factor δ/D. Class
        indices: a_nc = m_n((1 − ε) w_{t_n} 1[c = t_n] + ε w_c/C), D = Σ_n m_n w_{t_n}; probabilities:
        a_nc = w_c((1 − ε) q_nc + ε/C), D = N·d (the positions)."""
        eps, C, w = ctx.label_smoothing, input.shape[1], _class_weight(weight, input)
        if ctx.probabilities:
            smoothed = target * (1 - eps) + eps / C if eps > 0 else target  # eq. D11: q̃ = (1 − ε) q + ε/C
            a = smoothed * w if w is not None else smoothed  # eq. D11: a_nc = w_c q̃_nc
            positions = input.numel() // C if input.numel() else float("nan")  # torch's mean of nothing is NaN
            factor = scale / positions if ctx.reduction == "mean" else scale
            return a, a.sum(1, keepdim=True), _per_element(factor) if ctx.reduction == "none" else factor
        kept, classes, w_t, factor = CrossEntropyFunction._indices(ctx, target, weight, scale, input.dtype)
        a = torch.zeros_like(input).scatter_(1, _per_element(classes), _per_element(w_t * (1 - eps)))  # eq. D11
        if eps > 0:
            spread = _per_element(kept.to(a.dtype) * (eps / C))
            a = torch.addcmul(a, w if w is not None else torch.ones_like(a), spread)  # eq. D11: + m_n ε w_c / C
        return a, a.sum(1, keepdim=True), _per_element(factor)

    @staticmethod
    def _indices(ctx, target, weight, scale, dtype):
        """The kept positions m, the classes (ignored made 0), m·w_t and, per position, δ/D where kept, else 0."""
        kept, classes = _safe_targets(target, ctx.ignore_index)
        w_t = weight[classes] * kept if weight is not None else kept.to(dtype)
        # D = Σ m_n w_{t_n} as it is: negative class weights may make it negative, or zero (then, as torch's, the
        # kept positions' gradients are not finite); an ignored position's gradient is zero whatever δ/D is
        factor = scale / w_t.sum() if ctx.reduction == "mean" else scale
        return kept, classes, w_t, torch.where(kept, factor, 0)

    @staticmethod
    def backward(ctx, grad_output):
        input, target, weight = ctx.saved_tensors
        dtypes = [t.dtype if t is not None else None for t in (input, target, weight)]
        # half precision: p, the targets and δ/D in float32 (torch's opmath), each gradient cast back at the end
        input, weight, grad_output = opmath(input), opmath(weight), opmath(grad_output)
        target = opmath(target) if ctx.probabilities else target
        grad_input = grad_target = grad_weight = None
        eps, C = ctx.label_smoothing, input.shape[1]
        scale = grad_output if ctx.reduction == "none" else grad_output.reshape(())
        if ctx.needs_input_grad[0]:
            p = nested_apply(SoftmaxFunction, input, 1)
            if is_literal() or ctx.probabilities:
                a, s, factor = CrossEntropyFunction._terms(ctx, input, target, weight, scale)
                # as torch composes it (nll_loss, then log_softmax's backward g − p Σ g), so that a non-finite δ
                # gives torch's NaN and inf: g = a/D where a target is (exactly 0 elsewhere), s/D = Σ g
                g = a * factor if ctx.probabilities else torch.where(_support(ctx, target, p), a * factor, 0)
                grad_input = p * g.sum(1, keepdim=True) - g  # eq. D10: ∂L/∂x = (s p − a)/D
            else:
                grad_input = CrossEntropyFunction._index_grad(ctx, p, target, weight, scale)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # probability targets only: indices have none
            log_p = nested_apply(LogSoftmaxFunction, input, 1)
            factor = scale / (input.numel() // C) if ctx.reduction == "mean" else scale
            factor = _per_element(factor) if ctx.reduction == "none" else factor
            w = _class_weight(weight, input)
            if ctx.needs_input_grad[1]:
                weighted = log_p * w if w is not None else log_p
                grad_target = weighted * (factor * -(1 - eps))  # eq. D12: ∂L/∂q = −(1 − ε) w ℓ / D
            if ctx.needs_input_grad[2]:
                smoothed = target * (1 - eps) + eps / C if eps > 0 else target
                dims = [d for d in range(input.dim()) if d != 1]
                grad_weight = -(smoothed * log_p * factor).sum(dims)  # eq. D12: ∂L/∂w_c = −Σ_n q̃_nc ℓ_nc / D
        grads = (g if g is None else g.to(d) for g, d in zip((grad_input, grad_target, grad_weight), dtypes))
        return (*grads, None, None, None)

    @staticmethod
    def _index_grad(ctx, p, target, weight, scale):
        """eq. D10 for class indices without the dense a: p scaled by s_n/D, then −(1 − ε) w_{t_n}/D added at each
        target class and, with smoothing, −ε w_c/(C·D) at every class of the kept positions."""
        eps, C = ctx.label_smoothing, p.shape[1]
        kept, classes, w_t, factor = CrossEntropyFunction._indices(ctx, target, weight, scale, p.dtype)
        at_target = w_t * factor  # w_{t_n}/D, zero where ignored (factor is)
        # the targets' share and smoothing's, each s p/D − a/D on its own (as torch's two terms): each is exactly 0
        # where p is the one-hot target
        share = at_target if eps == 0 else at_target * (1 - eps)
        grad = p * _per_element(share)  # eq. D10: s p / D, the targets' share
        grad.scatter_add_(1, _per_element(classes), _per_element(-share))  # eq. D10: − a/D at the targets
        if eps > 0:
            w = _class_weight(weight, p) if weight is not None else 1
            spread = factor * (eps * (weight.sum() if weight is not None else C) / C)
            grad += p * _per_element(spread) - _per_element(factor) * (w * (eps / C))  # eq. D10: what smoothing spreads
        return grad

    @staticmethod
    def jvp(ctx, input_t, target_t, weight_t, _, __, ___):
        input, target, weight = ctx.saved_tensors
        eps, log_p = ctx.label_smoothing, torch.log_softmax(input, 1)
        one = torch.ones((), dtype=input.dtype, device=input.device)
        a, s, factor = CrossEntropyFunction._terms(ctx, input, target, weight, one)
        rate = ((s * log_p.exp() - a) * input_t).sum(1)  # eq. D10, forward mode: Σ_c (s p − a) ẋ
        if ctx.probabilities and (target_t is not None or weight_t is not None):  # indices: x alone has a tangent
            C = input.shape[1]
            if target_t is not None:
                w = _class_weight(weight, input)
                q_rate = target_t * (1 - eps) * (w if w is not None else 1)
                rate = rate - (q_rate * log_p).sum(1)  # eq. D12, forward mode: −(1 − ε) Σ_c w_c q̇_c ℓ_c
            if weight_t is not None:
                smoothed = target * (1 - eps) + eps / C if eps > 0 else target
                rate = rate - (smoothed * _class_weight(weight_t, input) * log_p).sum(1)  # eq. D12, fwd: −Σ ẇ q̃ ℓ
        if ctx.reduction == "mean" and not ctx.probabilities:
            # summed, then divided by D, as torch's forward mode (log_softmax, then nll_loss of the tangent): D = 0,
            # every target ignored, gives its NaN
            kept, _, w_t, _ = CrossEntropyFunction._indices(ctx, target, weight, one, input.dtype)
            return torch.where(kept, rate, 0).sum() / w_t.sum()
        per_position = rate * (factor.squeeze(1) if factor.dim() else factor)  # δ/D, zero where ignored
        return per_position if ctx.reduction == "none" else per_position.sum()
