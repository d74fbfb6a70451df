"""Route the functions a model's ``forward`` calls — ``torch.nn.functional.*``, ``torch.*`` and Tensor methods — to
bp_torch's hand-derived twins.

A module swap (:func:`bp_torch.nn.convert`) reaches the layers a model holds, not the functions its ``forward``
calls: ``F.relu(x)`` in googlenet, ``x.mean([2, 3])`` in shufflenet, the squeeze-excitation product ``scale * x``.
:class:`Routed` is a ``TorchFunctionMode``: while it is active, each call of a function in :data:`ROUTES` runs
bp_torch's function instead, with the same arguments; every other call runs as it was. Inside a mode's
``__torch_function__`` the mode itself is off, so the torch calls bp_torch's functions make are never re-routed.

:func:`routed` is the mode as a context manager, for any code::

    >>> import torch
    >>> import bp_torch
    >>> x = torch.randn(3, requires_grad=True)
    >>> with bp_torch.routed():
    ...     y = torch.nn.functional.relu(x) * 2
    >>> type(y.grad_fn).__name__
    'MulFunctionBackward'

:func:`bp_torch.nn.convert` keeps it on during the converted model's forward (a forward pre-hook and an
``always_call`` forward hook on the root module, both removed by ``to_native``), and records each call that still
left a native derivative in the graph: the conversion summary names them.

Under ``torch.compile`` the hooks leave the mode off: the swapped modules keep their hand-derived backward, the
functional calls compile as torch's own (Dynamo cannot yet trace this mode's calls into bp_torch's Functions).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from bp_torch import functional as BF
from bp_torch.audit import _kind

__all__ = ["ROUTES", "Routed", "routed", "suspended"]


def _routes() -> dict:
    T = torch.Tensor
    twins = {
        BF.relu: (F.relu, torch.relu, T.relu),
        BF.relu_: (F.relu_, torch.relu_, T.relu_),
        BF.leaky_relu: (F.leaky_relu,),
        BF.leaky_relu_: (F.leaky_relu_,),
        BF.hardtanh: (F.hardtanh,),
        BF.hardtanh_: (F.hardtanh_,),
        BF.relu6: (F.relu6,),
        BF.hardsigmoid: (F.hardsigmoid,),
        BF.hardswish: (F.hardswish,),
        BF.silu: (F.silu,),
        BF.sigmoid: (F.sigmoid, torch.sigmoid, T.sigmoid),
        BF.tanh: (F.tanh, torch.tanh, T.tanh),
        BF.dropout: (F.dropout,),
        BF.softmax: (F.softmax,),
        BF.log_softmax: (F.log_softmax,),
        BF.conv2d: (F.conv2d,),
        BF.linear: (F.linear,),
        BF.avg_pool2d: (F.avg_pool2d,),
        BF.max_pool2d: (F.max_pool2d,),
        BF.max_pool2d_with_indices: (F.max_pool2d_with_indices,),
        BF.adaptive_avg_pool2d: (F.adaptive_avg_pool2d,),
        BF.batch_norm: (F.batch_norm,),
        BF.cross_entropy: (F.cross_entropy,),
        BF.nll_loss: (F.nll_loss,),
        BF.mse_loss: (F.mse_loss,),
        BF.mul: (torch.mul, T.mul, T.__mul__, T.__rmul__),  # a ⊙ b = b ⊙ a: __rmul__(b, a) is mul(b, a)
        BF.div: (torch.div, T.div, T.__truediv__),
        BF.sum: (torch.sum, T.sum),
        BF.mean: (torch.mean, T.mean),
        # the transformer's operations (docs/derivation.md eq. T)
        BF.gelu: (F.gelu,),
        BF.layer_norm: (F.layer_norm,),
        BF.group_norm: (F.group_norm,),
        BF.matmul: (torch.matmul, T.matmul, T.__matmul__),
        BF.bmm: (torch.bmm, T.bmm),
        BF.addmm: (torch.addmm,),
        BF.baddbmm: (torch.baddbmm,),
        BF.scaled_dot_product_attention: (F.scaled_dot_product_attention,),
        BF.einsum: (torch.einsum,),
        # data movement (eq. S)
        BF.getitem: (T.__getitem__,),
        BF.roll: (torch.roll, T.roll),
        BF.pad: (F.pad,),
    }
    return {native: twin for twin, natives in twins.items() for native in natives}


# native function -> bp_torch's twin, called with the same arguments
ROUTES: dict = _routes()
_OPERATORS = frozenset({torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__truediv__, torch.Tensor.__matmul__})


def _name(func) -> str:
    owner = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
    if owner is not None and isinstance(owner, type):  # a Tensor method or a slot such as __imul__
        return f"Tensor.{func.__name__}"
    module = getattr(func, "__module__", None) or "torch"
    module = {"torch._C._nn": "torch.nn.functional", "torch._C._VariableFunctions": "torch"}.get(module, module)
    return f"{module}.{getattr(func, '__name__', repr(func))}"


class Routed(TorchFunctionMode):
    """Runs bp_torch's twin in place of each function of :data:`ROUTES`; ``native_calls``, if given (a dict), gets
    the name of every other call whose output has a native backward node, mapped to that node's class name."""

    def __init__(self, native_calls: dict[str, str] | None = None) -> None:
        super().__init__()
        self.native_calls = native_calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        twin = ROUTES.get(func)
        # the inputs' nodes before the call: a node the call made is none of them (an in-place call moves its
        # input's node to the one it made)
        before = () if self.native_calls is None else [a.grad_fn for a in args if isinstance(a, torch.Tensor)]
        if twin is None or "out" in kwargs:
            out = func(*args, **kwargs)
        elif func in _OPERATORS:
            try:
                out = twin(*args, **kwargs)
            except TypeError:  # as torch's operators do: Python then asks the other operand (NumPy ...)
                return NotImplemented
        else:
            out = twin(*args, **kwargs)  # a twin may run torch's own where it derives nothing (pad's other modes)
        if self.native_calls is not None and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            node = out.grad_fn  # a native node this call made (not one of its inputs' passed through)
            if _kind(node) == "native" and all(node is not b for b in before):
                self.native_calls.setdefault(_name(func), type(node).__name__)
        return out


def routed(native_calls: dict[str, str] | None = None) -> Routed:
    """A context manager: inside it, the calls of :data:`ROUTES` run bp_torch's hand-derived functions."""
    return Routed(native_calls)


def suspended(forward):
    """A bp_torch module's ``forward``, run with the :class:`Routed` mode on top of the mode stack set aside: the
    module calls ``bp_torch.functional`` itself, and under the mode each tensor call it makes (attribute reads
    included) would pass through the mode's Python handler for nothing. A Conv2d padding other than with zeros keeps
    the mode: its ``F.pad`` is native, and the conversion summary records it."""

    @functools.wraps(forward)
    def run(self, *args, **kwargs):
        if torch.compiler.is_compiling() or not _depth() or getattr(self, "padding_mode", "zeros") != "zeros":
            return forward(self, *args, **kwargs)
        mode = _pop()
        if type(mode) is not Routed:  # another mode above ours: leave the stack as it is
            _push(mode)
            return forward(self, *args, **kwargs)
        try:
            return forward(self, *args, **kwargs)
        finally:
            _push(mode)

    return run


_depth, _pop, _push = (
    torch._C._len_torch_function_stack,
    torch._C._pop_torch_function_stack,
    torch._C._push_on_torch_function_stack,
)


def _is_routing() -> bool:
    return any(isinstance(m, Routed) for m in torch.overrides._get_current_function_mode_stack())


class _Hooks:
    """The root module's pair of hooks: ``enter`` turns a :class:`Routed` mode on before its forward (unless one is
    on already, or torch.compile is tracing), ``leave`` turns it off after, even when the forward raised. A
    module-level class, so that a model pickled whole (``torch.save(model)``) keeps its hooks."""

    def __init__(self, native_calls: dict[str, str]) -> None:
        self.native_calls = native_calls
        self.entered: list[Routed | None] = []

    def enter(self, module, args) -> None:
        mode = None if torch.compiler.is_compiling() or _is_routing() else Routed(self.native_calls)
        if mode is not None:
            mode.__enter__()
        self.entered.append(mode)

    def leave(self, module, args, output) -> None:
        mode = self.entered.pop() if self.entered else None
        if mode is not None:
            mode.__exit__(None, None, None)

    def __getstate__(self):
        return {"native_calls": self.native_calls, "entered": []}


def _ours(hook) -> bool:
    return isinstance(getattr(hook, "__self__", None), _Hooks)


def install(model: torch.nn.Module, native_calls: dict[str, str]) -> None:
    """Keep a :class:`Routed` mode on while ``model`` runs; calls left native are recorded in ``native_calls``.
    Installing twice keeps the first installation."""
    if any(_ours(h) for h in model._forward_pre_hooks.values()):
        return
    hooks = _Hooks(native_calls)
    model.register_forward_pre_hook(hooks.enter, prepend=True)
    model.register_forward_hook(hooks.leave, always_call=True)


def installed(model: torch.nn.Module) -> dict[str, str] | None:
    """The ``native_calls`` record of the hooks :func:`install` put on ``model``, or None."""
    for hook in model._forward_pre_hooks.values():
        if _ours(hook):
            return hook.__self__.native_calls
    return None


def uninstall(model: torch.nn.Module) -> None:
    """Remove :func:`install`'s hooks from ``model``."""
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, h in hooks.items() if _ours(h)]:
            del hooks[key]
            model._forward_hooks_always_called.pop(key, None)
