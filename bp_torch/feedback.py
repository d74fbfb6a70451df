"""Backward rules you can change: feedback alignment and sign symmetry on bp_torch's Linear and Conv2d.

Exact backprop sends δ to a layer's input through the layer's own weight, Δx = Wᵀδ (Note A eq. 8; for a
convolution eq. 17, the full correlation with the rot180 kernel). A *rule* replaces W there by a feedback matrix B
of W's shape; the weight gradient stays the derived one, xδᵀ (eq. 7 / Note B eq. 40), with the δ the rule delivered.
The Functions are the same (``LinearFunction``, ``Conv2dFunction``): B is their optional last input, read only by
the input-gradient line, and gets no gradient.

=============  ========================================================================================
rule           B
=============  ========================================================================================
``backprop``   W itself: exact backprop (the default; B is None)
``fa``         feedback alignment (Lillicrap et al. 2016): a fixed random matrix, drawn once as torch draws
               the layer's weight, U(±1/√fan_in); a buffer ``feedback``
``usf``        uniform sign-concordant (Liao, Leibo & Poggio 2016): sign(W) · √(2/(fan_in + fan_out)),
               the magnitude of BioTorch's scaling option (Xavier's standard deviation)
``brsf``       batchwise random magnitude (Moskovitz et al. 2018): |M| ⊙ sign(W), M drawn as for ``fa``
               afresh at every forward, from torch's default generator
``frsf``       fixed random magnitude: |M| ⊙ sign(W), M drawn once as for ``fa``; |M| is the buffer
               ``feedback``
``dfa``        direct feedback alignment (Nøkland 2016): not W's place but the whole path from the loss;
               the δ to the layer's input is B̃ᵀe, e the network's output error (:mod:`bp_torch.direct_feedback`)
=============  ========================================================================================

BioTorch (jsalbert/biotorch 0.0.16, ``layers/fa_constructor``, ``layers/dfa``) defines every rule as here (brsf and
frsf as |M| ⊙ sign(W), |M| stored once for frsf), but draws B and M Xavier-uniform, U(±√(6/(fan_in + fan_out))),
where these draw the layer's own default init, U(±1/√fan_in): its B is larger, and so is the δ it sends
(docs/rules.md measures by how much).

Direct feedback alignment sends the *output* error to every layer through its own fixed matrix, a path from the loss
to each layer that skips the layers above: a change to the graph, not to one layer's backward, since the Functions
here receive only the δ of the layer above. So its layer runs exact and :mod:`bp_torch.direct_feedback` replaces the
δ at its input; its B, ``(K, ...)`` for a model of K outputs, is drawn when the model is marked as the network
(``convert(model, rule="dfa")``, ``LeNet(rule="dfa")`` or ``direct_feedback.attach``), not by :func:`set_rule`.

A rule is about the path of δ, not about whether W trains: a layer whose weight is frozen (``requires_grad=False``)
still sends δ back through its B.

Forward-mode AD (``jvp``) has no feedback: a tangent is the exact derivative of the forward under every rule.

Example::

    >>> import torch
    >>> from bp_torch import nn as bnn
    >>> layer = bnn.Linear(4, 3, rule="fa")
    >>> sorted(layer.state_dict())
    ['bias', 'feedback', 'weight']
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["RULES", "set_rule", "feedback_matrix", "exact", "angle", "alignment"]

RULES = ("backprop", "fa", "usf", "brsf", "frsf", "dfa")
_BUFFERED = ("fa", "frsf")  # the rules whose B (or |M|) is drawn once and kept: in state_dict and checkpoints
_exact_depth = 0


def set_rule(module: nn.Module, rule: str) -> nn.Module:
    """Give a bp_torch ``Linear`` or ``Conv2d`` the backward rule ``rule`` (one of :data:`RULES`), in place.

    ``fa`` and ``frsf`` draw their fixed matrix now, from torch's default generator, as a buffer ``feedback`` (moved
    by ``.to()``, saved in ``state_dict``, broadcast by DistributedDataParallel from rank 0); other rules hold none,
    so a ``backprop`` module's state_dict is torch's own. ``dfa``'s B is drawn by ``bp_torch.direct_feedback.attach``
    (its shape needs the model's outputs).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, but got rule={rule!r}")
    if "feedback" in module._buffers:
        del module._buffers["feedback"]
    module.rule = rule
    if rule in _BUFFERED:
        with torch.no_grad():
            drawn = _draw_like(module.weight)
        module.register_buffer("feedback", drawn.abs_() if rule == "frsf" else drawn)
    return module


def _draw_like(weight: torch.Tensor) -> torch.Tensor:
    """U(±1/√fan_in): torch's default initialisation of a Linear or Conv2d weight (kaiming_uniform_, a=√5)."""
    drawn = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    return nn.init.kaiming_uniform_(drawn, a=math.sqrt(5))


def _xavier_std(weight: torch.Tensor) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(2.0 / (fan_in + fan_out))


def feedback_matrix(module: nn.Module) -> torch.Tensor | None:
    """The B that ``module``'s rule sends δ back through in this forward, or None for exact backprop (the rule
    ``backprop``, inside :func:`exact`, or with no graph being recorded). A frozen weight still has its rule's B: the
    rule is the path of δ to the input. ``dfa`` has none here: its layer runs exact and its input's δ is replaced
    (``bp_torch.direct_feedback``)."""
    rule = getattr(module, "rule", "backprop")
    if rule in ("backprop", "dfa") or _exact_depth or not torch.is_grad_enabled():
        return None  # exact, or no backward to send δ through (evaluation): nothing drawn
    weight = module.weight.detach()
    if rule == "fa":
        return module.feedback
    if rule == "usf":
        return torch.sign(weight) * _xavier_std(weight)
    if rule == "brsf":
        return _draw_like(weight).abs_() * torch.sign(weight)
    return module.feedback * torch.sign(weight)  # frsf


@contextmanager
def exact() -> Iterator[None]:
    """Every rule runs as exact backprop while active: the reference the alignment of a rule is measured against."""
    global _exact_depth
    _exact_depth += 1
    try:
        yield
    finally:
        _exact_depth -= 1


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between ``a`` and ``b`` as vectors, in degrees: 0 when one is a positive multiple of the other."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    cosine = (a @ b) / (a.norm() * b.norm()).clamp_min(torch.finfo(torch.float64).tiny)
    return math.degrees(math.acos(cosine.clamp(-1.0, 1.0).item()))


def alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> dict[str, float]:
    """How far each layer's backward rule (``bp_torch.feedback``) is from exact backprop on one batch.

    For every layer with a rule other than ``backprop``: ``<layer>/delta_angle``, the angle in degrees between the δ
    the rule sends to the layer's input and exact backprop's, ``<layer>/delta_norm_ratio`` (the rule's norm over
    exact's), and ``<layer>/weight_grad_angle`` and ``<layer>/weight_grad_norm_ratio`` for the weight gradient — the
    update the rule makes against the true gradient. The batch's pixels are given a gradient so that the first
    layer has a δ too. Random draws (brsf's magnitudes) come from a forked generator: training's stream is untouched.
    """
    layers = {
        name: m
        for name, m in model.named_modules()
        if getattr(m, "rule", "backprop") != "backprop" and "weight" in m._parameters  # a Linear or Conv2d (set_rule)
    }
    if not layers:
        return {}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0]))
        for name, m in layers.items()
    ]
    pixels = x.detach().requires_grad_()

    def gradients() -> list[torch.Tensor]:
        loss = loss_fn(model(pixels), y)
        wanted = [inputs[name] for name in layers] + [m.weight for m in layers.values()]
        return torch.autograd.grad(loss, wanted)

    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            rule = gradients()
        with exact():
            true = gradients()
    finally:
        for hook in hooks:
            hook.remove()
    out, n = {}, len(layers)
    for i, name in enumerate(layers):
        for what, ours, reference in (("delta", rule[i], true[i]), ("weight_grad", rule[n + i], true[n + i])):
            out[f"{name}/{what}_angle"] = angle(ours, reference)
            out[f"{name}/{what}_norm_ratio"] = (ours.norm() / reference.norm().clamp_min(1e-30)).item()
    return out
