"""``torch.nn``'s Conv2d, AvgPool2d, Sigmoid and Linear; ReLU, LeakyReLU, Tanh, Dropout, Softmax, LogSoftmax,
MSELoss, NLLLoss and CrossEntropyLoss; MaxPool2d, AdaptiveAvgPool2d and BatchNorm2d; Hardtanh, ReLU6, Hardsigmoid,
Hardswish and SiLU — with the hand-derived backward; and ``convert()``, which also routes the functions a model's
``forward`` calls to bp_torch (:mod:`bp_torch.routing`).

Each class subclasses its ``torch.nn`` twin and keeps torch's ``__init__``: constructor arguments, defaults,
parameter initialisation, ``state_dict`` keys, ``repr`` and ``isinstance`` checks are torch's own (Linear and Conv2d
add one keyword, ``rule``, :mod:`bp_torch.feedback`'s backward rules; with the default none of that changes). Only
the forward is ours — it calls ``bp_torch.functional`` — and so the backward is the derived one.

Example::

    >>> import torch
    >>> from bp_torch import nn as bnn
    >>> layer = bnn.Conv2d(1, 6, 5)
    >>> isinstance(layer, torch.nn.Conv2d), layer(torch.randn(2, 1, 28, 28)).shape
    (True, torch.Size([2, 6, 24, 24]))
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from bp_torch import direct_feedback, routing
from bp_torch import functional as BF
from bp_torch.feedback import feedback_matrix, set_rule

__all__ = ["Conv2d", "AvgPool2d", "Sigmoid", "Linear", "convert", "to_native", "Conversion"]
__all__ += ["ReLU", "LeakyReLU", "Tanh", "Dropout", "Softmax", "LogSoftmax", "MSELoss", "NLLLoss", "CrossEntropyLoss"]
__all__ += ["MaxPool2d", "AdaptiveAvgPool2d", "BatchNorm2d"]
__all__ += ["Hardtanh", "ReLU6", "Hardsigmoid", "Hardswish", "SiLU"]
__all__ += ["LayerNorm", "GroupNorm", "GELU", "MultiheadAttention"]


class NotScriptable:
    """Mixed into every bp_torch module: ``torch.jit.script`` fails at once with a one-line error naming the way out.

    TorchScript cannot compile a Python ``autograd.Function``, and the hand-derived backward is one. torch.jit.script
    calls ``__prepare_scriptable__`` on every module it is given before compiling anything.
    """

    def __prepare_scriptable__(self):
        kind = type(self).__name__
        raise RuntimeError(
            f"bp_torch.nn.{kind} cannot be scripted: TorchScript cannot compile the Python autograd.Function that "
            f"holds its hand-derived backward. Script bp_torch.nn.to_native(model)[0] instead (torch's own {kind}), "
            f"or use torch.compile, which keeps the hand-derived backward (torch.export gives a forward-only graph)."
        )


class Conv2d(NotScriptable, nn.Conv2d):
    """:class:`torch.nn.Conv2d` whose forward is :func:`bp_torch.functional.conv2d` (Note A eq. 10, 17, 35).

    Every argument, every ``padding_mode`` and the initialisation are torch's; ``rule`` (keyword only) is the
    backward rule of :mod:`bp_torch.feedback` (default ``"backprop"``, exact). Non-'zeros' padding modes pad with
    ``F.pad`` first, exactly as torch does; that pad is native autograd, the convolution behind it is ours.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        rule: str = "backprop",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        set_rule(self, rule)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # mirrors torch.nn.Conv2d._conv_forward line for line, with our conv2d in place of F.conv2d
        if getattr(self, "rule", None) == "dfa":  # δ to the input: B̃ᵀe, e the output error (bp_torch.direct_feedback)
            input = direct_feedback.gate(self, input)
        feedback = feedback_matrix(self)  # None: exact backprop
        if self.padding_mode != "zeros":
            input, padding = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), 0
        else:
            padding = self.padding
        return BF._conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups, feedback)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.weight, self.bias)  # torch.nn.Conv2d.forward, as torch writes it


class AvgPool2d(NotScriptable, nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` whose forward is :func:`bp_torch.functional.avg_pool2d` (Note B eq. 32, 52)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class Sigmoid(NotScriptable, nn.Sigmoid):
    """:class:`torch.nn.Sigmoid` whose forward is :func:`bp_torch.functional.sigmoid` (Note B eq. 37, 57)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.sigmoid(input)


class Linear(NotScriptable, nn.Linear):
    """:class:`torch.nn.Linear` whose forward is :func:`bp_torch.functional.linear` (Note A eq. 5, 7, 8); ``rule``
    (keyword only) is the backward rule of :mod:`bp_torch.feedback` (default ``"backprop"``, exact)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *, rule: str = "backprop"
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        set_rule(self, rule)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if getattr(self, "rule", None) == "dfa":  # δ to the input: Bᵀe, e the output error (bp_torch.direct_feedback)
            input = direct_feedback.gate(self, input)
        return BF._linear(input, self.weight, self.bias, feedback_matrix(self))  # feedback None: exact backprop


# activations, dropout, softmax and the losses (docs/derivation.md eq. D1–D12; the squared error is Note B eq. 13–16)


class ReLU(NotScriptable, nn.ReLU):
    """:class:`torch.nn.ReLU` whose forward is :func:`bp_torch.functional.relu` (eq. D1)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.relu(input, inplace=self.inplace)


class LeakyReLU(NotScriptable, nn.LeakyReLU):
    """:class:`torch.nn.LeakyReLU` whose forward is :func:`bp_torch.functional.leaky_relu` (eq. D2)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.leaky_relu(input, self.negative_slope, self.inplace)


class Tanh(NotScriptable, nn.Tanh):
    """:class:`torch.nn.Tanh` whose forward is :func:`bp_torch.functional.tanh` (eq. D3)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.tanh(input)


class Dropout(NotScriptable, nn.Dropout):
    """:class:`torch.nn.Dropout` whose forward is :func:`bp_torch.functional.dropout` (eq. D4): the same masks as
    torch's on the CPU for the same seed; identity in eval mode."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.dropout(input, self.p, self.training, self.inplace)


class Softmax(NotScriptable, nn.Softmax):
    """:class:`torch.nn.Softmax` whose forward is :func:`bp_torch.functional.softmax` (eq. D5)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(NotScriptable, nn.LogSoftmax):
    """:class:`torch.nn.LogSoftmax` whose forward is :func:`bp_torch.functional.log_softmax` (eq. D6)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.log_softmax(input, self.dim, _stacklevel=5)


class MSELoss(NotScriptable, nn.MSELoss):
    """:class:`torch.nn.MSELoss` whose forward is :func:`bp_torch.functional.mse_loss` (Note B eq. 13–16, eq. D7)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return BF.mse_loss(input, target, reduction=self.reduction)


class NLLLoss(NotScriptable, nn.NLLLoss):
    """:class:`torch.nn.NLLLoss` whose forward is :func:`bp_torch.functional.nll_loss` (eq. D9)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return BF.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class CrossEntropyLoss(NotScriptable, nn.CrossEntropyLoss):
    """:class:`torch.nn.CrossEntropyLoss` whose forward is :func:`bp_torch.functional.cross_entropy` (eq. D10–D12):
    backward the softmax minus the (weighted, smoothed) targets."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return BF.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


# pooling and normalisation beyond the notes (docs/derivation.md, eq. M)


class MaxPool2d(NotScriptable, nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` whose forward is :func:`bp_torch.functional.max_pool2d` (eq. M1, M2)."""

    def forward(self, input: torch.Tensor):
        return BF.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class AdaptiveAvgPool2d(NotScriptable, nn.AdaptiveAvgPool2d):
    """:class:`torch.nn.AdaptiveAvgPool2d` whose forward is :func:`bp_torch.functional.adaptive_avg_pool2d`
    (eq. M4, M5)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.adaptive_avg_pool2d(input, self.output_size)


class BatchNorm2d(NotScriptable, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` whose forward is :func:`bp_torch.functional.batch_norm` (eq. M6–M11).

    Training, eval, ``affine``, ``track_running_stats`` and ``momentum=None`` (a cumulative moving average over
    ``num_batches_tracked`` batches) behave as torch's: the forward below is torch's, line for line.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # mirrors torch.nn.modules.batchnorm._BatchNorm.forward, with our batch_norm in place of F.batch_norm
        if not isinstance(input, torch.fx.Proxy):  # torch.fx traces through (torch's own module is a leaf there)
            self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            # momentum=None is the cumulative moving average: α = 1/(batches seen)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum  # eq. M7
        # batch statistics in training, and in eval when there are no running ones
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        # the running statistics are passed only where they are read (eval) or tracked (training)
        tracked = not self.training or self.track_running_stats
        return BF.batch_norm(
            input,
            self.running_mean if tracked else None,
            self.running_var if tracked else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )


# the mobile networks' activations (docs/derivation.md, eq. H)


class Hardtanh(NotScriptable, nn.Hardtanh):
    """:class:`torch.nn.Hardtanh` whose forward is :func:`bp_torch.functional.hardtanh` (eq. H1)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.hardtanh(input, self.min_val, self.max_val, self.inplace)


class ReLU6(NotScriptable, nn.ReLU6):
    """:class:`torch.nn.ReLU6` (torch's Hardtanh on [0, 6]) whose forward is :func:`bp_torch.functional.hardtanh`
    (eq. H1)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.hardtanh(input, self.min_val, self.max_val, self.inplace)


class Hardsigmoid(NotScriptable, nn.Hardsigmoid):
    """:class:`torch.nn.Hardsigmoid` whose forward is :func:`bp_torch.functional.hardsigmoid` (eq. H2)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.hardsigmoid(input, self.inplace)


class Hardswish(NotScriptable, nn.Hardswish):
    """:class:`torch.nn.Hardswish` whose forward is :func:`bp_torch.functional.hardswish` (eq. H3)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.hardswish(input, self.inplace)


class SiLU(NotScriptable, nn.SiLU):
    """:class:`torch.nn.SiLU` whose forward is :func:`bp_torch.functional.silu` (eq. H4)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.silu(input, inplace=self.inplace)


# the transformer's operations (docs/derivation.md, eq. T)


class LayerNorm(NotScriptable, nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` whose forward is :func:`bp_torch.functional.layer_norm` (eq. T1–T4)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(NotScriptable, nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` whose forward is :func:`bp_torch.functional.group_norm` (eq. T1–T4)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class GELU(NotScriptable, nn.GELU):
    """:class:`torch.nn.GELU` whose forward is :func:`bp_torch.functional.gelu` (eq. T5, T6)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.gelu(input, approximate=self.approximate)


class MultiheadAttention(NotScriptable, nn.MultiheadAttention):
    """:class:`torch.nn.MultiheadAttention` whose forward is torch's, with ``F.multi_head_attention_forward`` routed
    to :func:`bp_torch.functional.multi_head_attention_forward`: bp_torch's projections (Note A eq. 5–8) and
    attention (eq. T7–T12). The output projection runs with ``out_proj``'s backward rule: under ``rule="fa"`` its
    feedback matrix carries δ back, as in a Linear of its own. (torch's inference fast path is not taken.)"""

    def forward(self, *args, **kwargs):
        with _AttentionRouting(self.out_proj):
            return super().forward(*args, **kwargs)


class _AttentionRouting(TorchFunctionMode):
    """Hands ``F.multi_head_attention_forward``, which torch's MultiheadAttention.forward calls, to bp_torch's, with
    ``out_proj``'s feedback matrix; every other call runs as it would."""

    def __init__(self, out_proj: nn.Linear) -> None:
        super().__init__()
        self.out_proj = out_proj

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.multi_head_attention_forward:
            feedback = feedback_matrix(self.out_proj)
            return BF.multi_head_attention_forward(*args, **(kwargs or {}), out_proj_feedback=feedback)
        return func(*args, **(kwargs or {}))


# The one table both directions read. Matching is by exact type: a user's subclass of nn.Conv2d (weight
# standardisation, a parametrized layer's generated class ...) has its own forward, which a swap would silently drop,
# so it is left native and listed in the summary.
TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: Conv2d,
    nn.AvgPool2d: AvgPool2d,
    nn.Sigmoid: Sigmoid,
    nn.Linear: Linear,
    # activations, dropout, softmax and the losses
    nn.ReLU: ReLU,
    nn.LeakyReLU: LeakyReLU,
    nn.Tanh: Tanh,
    nn.Dropout: Dropout,
    nn.Softmax: Softmax,
    nn.LogSoftmax: LogSoftmax,
    nn.MSELoss: MSELoss,
    nn.NLLLoss: NLLLoss,
    nn.CrossEntropyLoss: CrossEntropyLoss,
    nn.MaxPool2d: MaxPool2d,
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.Hardtanh: Hardtanh,
    nn.ReLU6: ReLU6,
    nn.Hardsigmoid: Hardsigmoid,
    nn.Hardswish: Hardswish,
    nn.SiLU: SiLU,
    # the transformer's operations
    nn.LayerNorm: LayerNorm,
    nn.GroupNorm: GroupNorm,
    nn.GELU: GELU,
    nn.MultiheadAttention: MultiheadAttention,
}


# Every twin but MultiheadAttention (whose forward is torch's, its inner call routed) runs with convert()'s routing
# mode set aside: it calls bp_torch.functional itself (routing.suspended).
for _module in dict.fromkeys(TWINS.values()):
    if _module is not MultiheadAttention:
        _module.forward = routing.suspended(_module.forward)


@dataclass
class Conversion:
    """What :func:`convert` / :func:`to_native` did: qualified module names, grouped by class name.

    ``swapped`` maps each new class name to the modules that became it; ``left`` maps each class name to the leaf
    modules (no children) that have no twin and kept their own forward. ``native_calls`` (after :func:`convert`)
    fills in as the model runs: each function its forward called that :mod:`bp_torch.routing` has no twin for and
    that left a native backward node, mapped to that node's class name (``{"Tensor.__imul__": "MulBackward0"}``).
    """

    swapped: dict[str, list[str]] = field(default_factory=dict)
    left: dict[str, list[str]] = field(default_factory=dict)
    native_calls: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        def lines(groups: dict[str, list[str]]) -> list[str]:
            return [f"  {kind} x{len(names)}: {', '.join(names)}" for kind, names in groups.items()] or ["  none"]

        calls = [f"  {call} ({node})" for call, node in self.native_calls.items()] or ["  none so far"]
        return "\n".join(
            ["swapped:", *lines(self.swapped), "left as they were:", *lines(self.left)]
            + ["functional calls left native (seen while the model ran):", *calls]
        )


def _swap(
    model: nn.Module, table: dict[type[nn.Module], type[nn.Module]], derive: bool = False
) -> tuple[nn.Module, Conversion]:
    # The swap reassigns __class__: the twins add no state and keep torch's __init__, so an object of one is a
    # valid object of the other. Being the same object, the module keeps its Parameters and buffers (optimizers built
    # before still hold them), training/eval mode, hooks and every reference to it (a module shared by two parents,
    # or held by the caller); nothing is copied and no parent needs re-wiring, which a fresh object would require.
    targets = set(table.values())
    swapped, left = defaultdict(list), defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=True):
        kind = type(module)
        twin = table.get(kind) or (_derived_twin(kind) if derive else None)
        if twin is not None:
            module.__class__ = twin
            swapped[twin.__name__].append(name or "<root>")
        elif kind not in targets and kind not in _DERIVED_NATIVE and next(module.children(), None) is None:
            left[kind.__name__].append(name or "<root>")
    return model, Conversion(dict(swapped), dict(left))


# A subclass of a native module of TWINS that overrides neither forward nor any other method its twin replaces
# (Conv2d's _conv_forward) computes what its base computes: NonDynamicallyQuantizableLinear, torch's Linear subclass in
# MultiheadAttention, is one. It is converted to a class of both, made once per subclass: its twin first (our forward,
# the backward rule), then the subclass (isinstance checks, any other method of its own). Any other subclass stays.
_DERIVED: dict[type[nn.Module], type[nn.Module]] = {}  # subclass -> its derived twin
_DERIVED_NATIVE: dict[type[nn.Module], type[nn.Module]] = {}  # derived twin -> the subclass


def _derived_twin(kind: type[nn.Module]) -> type[nn.Module] | None:
    if kind in _DERIVED or kind in _DERIVED_NATIVE:
        return _DERIVED.get(kind)
    base = next((b for b in kind.__mro__[1:] if b in TWINS), None)
    if base is None or any(b in TWINS.values() for b in kind.__mro__):
        return None
    twin = TWINS[base]
    replaced = {n for n, v in vars(twin).items() if callable(v) and n != "__init__" and hasattr(base, n)}
    if any(getattr(kind, n) is not getattr(base, n) for n in replaced | {"forward"}):
        return None  # a forward of its own: left native, and named in the summary
    namespace = {"__module__": __name__, "__qualname__": kind.__qualname__, "__reduce_ex__": _reduce_derived}
    derived = type(kind.__name__, (twin, kind), namespace)
    _DERIVED[kind], _DERIVED_NATIVE[derived] = derived, kind
    return derived


def _reduce_derived(module: nn.Module, protocol: int):
    """Pickles (torch.save, deepcopy) a module of a derived class as its subclass and its state: the derived class,
    made at run time, is made again when the module is loaded."""
    return _rebuild_derived, (_DERIVED_NATIVE[type(module)], module.__getstate__())


def _rebuild_derived(kind: type[nn.Module], state: dict) -> nn.Module:
    module = kind.__new__(kind)
    module.__setstate__(state)
    module.__class__ = _derived_twin(kind)
    return module


def convert(model: nn.Module, rule: str = "backprop") -> tuple[nn.Module, Conversion]:
    """Swap, in place, every ``torch.nn`` module of ``TWINS`` in ``model`` (Conv2d, AvgPool2d, Sigmoid, Linear, ReLU,
    LeakyReLU, Tanh, Dropout, Softmax, LogSoftmax, the losses, MaxPool2d, AdaptiveAvgPool2d, BatchNorm2d, LayerNorm,
    GroupNorm, GELU, MultiheadAttention) for its bp_torch twin.

    The modules stay the same objects, so parameters and buffers are shared, not copied: an optimizer built before
    the conversion trains the converted model. A subclass is swapped only if it overrides none of the methods its
    twin replaces (``NonDynamicallyQuantizableLinear`` is a Linear); one with a forward of its own stays native, as
    every other layer, and is named in the summary. For an untouched original, convert a copy:
    ``convert(copy.deepcopy(model))``. ``rule`` sets the backward rule of every bp_torch Linear and Conv2d in the
    model (:mod:`bp_torch.feedback`; default ``"backprop"``, exact); a layer that has it already keeps its feedback
    matrices. ``"dfa"`` also marks ``model`` as the network whose output error its layers receive
    (:func:`bp_torch.direct_feedback.attach`: K is the out_features of its last Linear, or out_channels of its last
    Conv2d).

    The functions the model's ``forward`` calls (``F.relu``, ``x.mean([2, 3])``, ``scale * x`` ...) are routed to
    bp_torch's twins while it runs (:mod:`bp_torch.routing`: hooks on ``model``, removed by :func:`to_native`); the
    calls that still leave a native derivative are added to the summary's ``native_calls`` as they run.

    Returns:
        ``(model, summary)``: the same ``model``, and a :class:`Conversion` naming what was swapped and what was not.

    Example::

        >>> import torch
        >>> model, summary = convert(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Softplus()))
        >>> type(model[0]).__module__, summary.swapped, summary.left
        ('bp_torch.nn', {'Linear': ['0']}, {'Softplus': ['1']})
    """
    model, summary = _swap(model, TWINS, derive=True)
    routing.install(model, summary.native_calls)
    summary.native_calls = routing.installed(model)  # a model converted before keeps its record
    for module in model.modules():
        had = getattr(module, "rule", None)
        # a layer that already has the rule keeps its matrices (a checkpoint restored before the call survives it)
        if isinstance(module, (Linear, Conv2d)) and had != rule and (rule != "backprop" or had is None):
            set_rule(module, rule)
    if rule == "dfa":  # the model's output is the error its layers receive; B drawn where there is none
        direct_feedback.attach(model)
    return model, summary


def to_native(model: nn.Module) -> tuple[nn.Module, Conversion]:
    """The reverse of :func:`convert`: every bp_torch module in ``model`` becomes its ``torch.nn`` class, in place
    (a backward rule's feedback buffer removed: torch's backward is exact)."""
    for module in model.modules():
        if isinstance(module, (Linear, Conv2d)):
            module._buffers.pop("feedback", None)
            module.__dict__.pop("rule", None)
        direct_feedback.release(module)
    routing.uninstall(model)
    return _swap(model, {twin: native for native, twin in TWINS.items()} | _DERIVED_NATIVE)
