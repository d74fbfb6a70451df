"""Direct feedback alignment (Nøkland 2016), the backward rule ``"dfa"`` of :mod:`bp_torch.feedback`.

Backprop sends δ down layer by layer, each through the transposed weight of the layer above (Note A eq. 8). DFA sends
the network's *output* error e = ∂L/∂y straight to every layer, each through a fixed random matrix of its own: the δ
a rule-``"dfa"`` Linear or Conv2d passes to its input is B̃ᵀe, whatever the layers above it did (docs/derivation.md
eq. F1–F4). The activation and pooling between two layers then apply their own derivatives to it, as in backprop, so
the layer below trains on δ = θ' ⊙ B̃ᵀe, Nøkland's update; every weight gradient is still the derived xδᵀ (Note A
eq. 7, Note B eq. 40) with the δ the layer receives, and forward mode (``jvp``) stays exact.

Why the rule needs the model, not only the layer: e exists only where the network ends, and a layer's backward sees
only the δ of the layer above. So :func:`attach` marks a module (the whole model) as the network: a forward hook puts
an identity node on its output whose backward keeps e — it runs before any layer's, the output being the last thing
computed — and every rule-``"dfa"`` layer run inside that forward puts an identity node on its input whose backward
returns B̃ᵀe in place of what arrives. ``convert(model, rule="dfa")`` and ``LeNet(rule="dfa")`` attach for you.

B is drawn once per layer as torch draws a layer weight of its shape, U(±1/√fan_in), from torch's default generator:
``(K, in_features)`` for a Linear, a ``(K, in_channels, kH, kW)`` kernel for a Conv2d (K the model's outputs); e is
repeated at every output position of a convolution and sent back through the B kernel as A 17 sends δ through W
(BioTorch's construction). It is the buffer ``feedback``: in ``state_dict``, checkpoints, ``.to()``, and broadcast
from rank 0 by DistributedDataParallel, like ``fa``'s.

Example::

    >>> import torch
    >>> from bp_torch import nn as bnn
    >>> model, _ = bnn.convert(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)),
    ...                        rule="dfa")
    >>> model[0].feedback.shape, model[2].feedback.shape
    (torch.Size([3, 4]), torch.Size([3, 8]))
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from bp_torch import feedback as _feedback
from bp_torch._arguments import check_conv2d
from bp_torch._function import apply
from bp_torch.autograd.direct import DirectFeedbackFunction, OutputError, OutputErrorFunction

__all__ = ["attach", "release", "gate"]


class _Running(threading.local):
    """The output errors of the attached modules' forwards now running in this thread (DataParallel's replicas run
    in threads of their own), innermost last."""

    def __init__(self) -> None:
        self.errors: list[OutputError] = []


_running = _Running()


def attach(model: nn.Module, outputs: int | None = None) -> nn.Module:
    """Make ``model``'s output the error e that every rule-``"dfa"`` layer inside it sends to its input, in place.

    Draws B (the buffer ``feedback``) for each such layer that has none of the right shape — a B already there, a
    restored checkpoint's, is kept — and hooks ``model``'s forward once. ``outputs`` is K, the size of e: the
    model's output must be ``(batch, K)``; by default the out_features of the model's last Linear (or out_channels
    of its last Conv2d) in registration order, checked against the output at every forward.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "rule", None) == "dfa"]
    if not layers:
        return model  # no rule-'dfa' layer: no error to send
    if outputs is None:
        outputs = _last_outputs(model)
    if not isinstance(outputs, int) or isinstance(outputs, bool) or outputs < 1:
        raise ValueError(f"outputs must be a positive int (the size of the model's output), but got {outputs!r}")
    for layer in layers:
        shape = (outputs, layer.in_channels, *layer.kernel_size) if isinstance(layer, nn.Conv2d) else (
            outputs, layer.in_features)  # fmt: skip
        held = layer._buffers.get("feedback")
        if held is None or tuple(held.shape) != shape:
            with torch.no_grad():  # U(±1/√fan_in), as torch draws a weight of B's shape (fa's draw)
                drawn = _feedback._draw_like(torch.empty(shape, dtype=layer.weight.dtype, device=layer.weight.device))
            layer.register_buffer("feedback", drawn)
    if _begin not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_begin)
        model.register_forward_hook(_end, always_call=True)
    return model


def release(model: nn.Module) -> nn.Module:
    """Undo :func:`attach`'s hooks on ``model`` (its layers' buffers are left to their rule), in place."""
    for hooks, hook in ((model._forward_pre_hooks, _begin), (model._forward_hooks, _end)):
        for key in [k for k, h in hooks.items() if h is hook]:
            del hooks[key]
            model._forward_hooks_always_called.pop(key, None)
    return model


def _last_outputs(model: nn.Module) -> int:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module.out_features
        elif isinstance(module, nn.Conv2d):
            last = module.out_channels
    if last is None:
        raise ValueError("rule='dfa' needs the model's number of outputs, and the model has no Linear or Conv2d")
    return last


def _begin(model: nn.Module, args) -> None:
    _running.errors.append(OutputError())


def _end(model: nn.Module, args, output):
    error = _running.errors.pop()
    if error.outputs is None or not isinstance(output, torch.Tensor) or not output.requires_grad:
        return None  # no rule-'dfa' layer needs this forward's error (evaluation, or exact())
    if output.dim() != 2 or output.shape[1] != error.outputs:
        raise RuntimeError(
            f"rule='dfa': the layers' B were drawn for {error.outputs} outputs, but {type(model).__name__}'s output "
            f"has shape {list(output.shape)}; give the model's outputs to bp_torch.direct_feedback.attach(model, "
            f"outputs=K) (its output must be (batch, K))"
        )
    return apply(OutputErrorFunction, output, error)


def gate(layer: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """``input`` of a rule-``"dfa"`` Linear or Conv2d, through the node that sends B̃ᵀe back in place of W̃ᵀδ
    (unchanged where no δ goes to it: no graph, an input that needs no gradient, or inside :func:`exact`)."""
    if _feedback._exact_depth or not (torch.is_grad_enabled() and input.requires_grad):
        return input
    B = layer._buffers.get("feedback")
    if not _running.errors or B is None:
        raise RuntimeError(
            f"rule='dfa': this {type(layer).__name__} sends the network's output error to its input, so it must "
            f"run inside the forward of a model marked as the network: bp_torch.nn.convert(model, rule='dfa') or "
            f"bp_torch.direct_feedback.attach(model)"
        )
    error = _running.errors[-1]
    error.outputs = B.shape[0]
    if B.dim() == 2:
        return apply(DirectFeedbackFunction, input, B, error, None)
    stride, padding, extra, dilation, _ = check_conv2d(input, B, None, layer.stride, layer.padding, layer.dilation, 1)
    return apply(DirectFeedbackFunction, input, B, error, (stride, padding, extra, dilation))
