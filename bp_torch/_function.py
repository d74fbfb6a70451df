"""What ``Function.apply`` costs per call, paid once per class instead.

A Function written as ``forward`` + ``setup_context`` (the style torch.func's transforms need) has ``apply`` bind
every call's arguments to ``forward``'s signature in Python (``inspect.Signature.bind``, ``apply_defaults``): about
40 µs a call on the 2-core CPU of ``benchmarks/``, as long as a LeNet sigmoid's whole forward at batch 64. The
combined style, ``forward(ctx, ...)``, skips that binding; torch.func accepts only the other. So each Function
gets a combined-style twin running the very same ``forward``, ``setup_context`` and ``backward``, and
:func:`apply` picks the twin whenever neither torch.func nor torch.compile is at work.
"""

from __future__ import annotations

import inspect

import torch
from torch.autograd import Function


def with_combined_twin(cls: type[Function]) -> type[Function]:
    """Class decorator: gives a forward + setup_context Function ``cls._combined``, its combined-style twin.

    Also caches ``forward``'s signature, which ``inspect.signature`` would otherwise rebuild on every
    ``cls.apply`` (about 30 µs), for the calls that still go through ``cls.apply`` (under torch.func).
    """
    cls.forward.__signature__ = inspect.signature(cls.forward)
    forward, setup_context = cls.forward, cls.setup_context

    def combined_forward(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    namespace = {
        "forward": staticmethod(combined_forward),
        "backward": staticmethod(cls.backward),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,  # the same names: its graph nodes read as cls's ("SigmoidFunctionBackward")
        "__doc__": cls.__doc__,
    }
    cls._combined = type(cls.__name__, (Function,), namespace)
    return cls


def apply(function: type[Function], *args):
    """``function.apply(*args)``, through its combined-style twin unless a torch.func transform (vmap, grad,
    jacrev ...) is active or torch.compile is tracing (which compiles the binding away, and traces ``apply`` but not
    the twin); both run the same code, so results and gradients are identical."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return function._combined.apply(*args)
