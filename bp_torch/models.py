"""LeNet: the network of Note B (and of DeepLearnToolbox's CNN example), built from bp_torch or torch.nn modules.

Example::

    >>> import torch
    >>> from bp_torch.models import LeNet
    >>> model = LeNet()
    >>> model(torch.randn(2, 1, 28, 28)).shape, model.count_parameters()
    (torch.Size([2, 10]), 3898)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bp_torch import direct_feedback
from bp_torch import nn as bnn
from bp_torch.feedback import set_rule

__all__ = ["LeNet"]

_IMPLS = {"manual": bnn, "native": nn}


class LeNet(nn.Module):
    """Note B's CNN: 1x28x28 → C1 → S1 → C2 → S2 → FC, returning logits.

    ============  ==========================================  ============
    layer         operation                                   output
    ============  ==========================================  ============
    conv1, act1   5x5 'valid' conv, 6 maps, sigmoid           6 x 24 x 24
    pool1         2x2 mean pool                               6 x 12 x 12
    conv2, act2   5x5 'valid' conv, 12 maps over all 6, σ     12 x 8 x 8
    pool2         2x2 mean pool                               12 x 4 x 4
    fc            flatten 192 → linear 10                     10
    ============  ==========================================  ============

    3,898 parameters. Note B ends in a sigmoid under a squared-error loss (eq. 13); that is the trainer's choice of
    loss, so the model returns the linear layer's output. Note B writes a true convolution, PyTorch a
    cross-correlation (Note A eq. 10): with a rot180 kernel they are the same model.

    Args:
        impl: ``"manual"`` for bp_torch modules (hand-derived backward), ``"native"`` for their ``torch.nn``
            counterparts. Both consume the random generator identically, so the same seed gives the same weights,
            and their state_dicts load into each other.
        rule: the backward rule of conv1, conv2 and fc (``bp_torch.feedback``; manual only): ``"backprop"`` (exact,
            the default), ``"fa"``, ``"usf"``, ``"brsf"``, ``"frsf"`` or ``"dfa"`` (direct feedback alignment of the
            logits' error, ``bp_torch.direct_feedback``). The weights are the same for every rule
            (a rule's fixed matrices are drawn after them).

    Shape:
        ``(N, 1, 28, 28) -> (N, 10)``.
    """

    def __init__(self, impl: str = "manual", rule: str = "backprop") -> None:
        super().__init__()
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {sorted(_IMPLS)}, but got impl={impl!r}")
        if rule != "backprop" and impl != "manual":
            raise ValueError(f"rule={rule!r} needs impl='manual': torch's own backward is exact")
        self.impl, self.rule = impl, rule
        layers = _IMPLS[impl]
        self.conv1 = layers.Conv2d(1, 6, 5)
        self.act1 = layers.Sigmoid()
        self.pool1 = layers.AvgPool2d(2)
        self.conv2 = layers.Conv2d(6, 12, 5)
        self.act2 = layers.Sigmoid()
        self.pool2 = layers.AvgPool2d(2)
        self.fc = layers.Linear(12 * 4 * 4, 10)
        self.reset_parameters()
        if rule != "backprop":
            for layer in (self.conv1, self.conv2, self.fc):
                set_rule(layer, rule)
        if rule == "dfa":  # the logits' error goes straight to each layer (its B drawn here, after fa's would be)
            direct_feedback.attach(self, 10)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Note B eq. 1–3 (DeepLearnToolbox ``cnnsetup.m``): biases 0, weights U(±√(6 / (fan_in + fan_out))).

        For a convolution fan_in = in_maps·k², fan_out = out_maps·k²; for the linear layer fan_in = 192,
        fan_out = 10. Layers draw in order conv1, conv2, fc.
        """
        for layer in (self.conv1, self.conv2, self.fc):
            out_maps, in_maps, *kernel = layer.weight.shape
            k2 = math.prod(kernel)  # 1 for the linear layer
            bound = math.sqrt(6 / ((in_maps + out_maps) * k2))  # Note B eq. 1–3: √(6 / (fan_in + fan_out))
            layer.weight.uniform_(-bound, bound)
            layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))  # (N, 6, 12, 12)
        x = self.pool2(self.act2(self.conv2(x)))  # (N, 12, 4, 4)
        return self.fc(x.flatten(1))  # (N, 192) -> (N, 10)

    def count_parameters(self) -> int:
        """The number of trainable scalars: 3,898 (156 + 1,812 + 1,930)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}" + (f", rule={self.rule!r}" if self.rule != "backprop" else "")
