"""What every Function of ``bp_torch.autograd`` shares: how it is called, and the layout its gradients come back in.

A Function written as ``forward`` + ``setup_context`` (the style torch.func's transforms need) has ``apply`` bind
every call's arguments to ``forward``'s signature in Python (``inspect.Signature.bind``, ``apply_defaults``), which
costs as much as a small layer's whole forward (benchmarks/README.md, "Python overhead"). The combined style,
``forward(ctx, ...)``, skips that binding, but torch.func accepts only the other. So :func:`with_direct_call`
gives each Function a combined-style copy, its *direct* Function, running the very same ``forward``,
``setup_context`` and ``backward``; :func:`apply` calls it whenever neither torch.func nor torch.compile is at work.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch.autograd import Function

from bp_torch._formulas import is_literal


def with_direct_call(cls: type[Function]) -> type[Function]:
    """Class decorator: gives a forward + setup_context Function ``cls._direct``, its combined-style copy.

    Also caches ``forward``'s signature, which ``inspect.signature`` would otherwise rebuild on every
    ``cls.apply``, for the calls that still go through ``cls.apply`` (under torch.func).
    """
    cls.forward.__signature__ = inspect.signature(cls.forward)
    forward, setup_context = cls.forward, cls.setup_context

    def combined_forward(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        return _outputs_of_its_own(output, args)

    namespace = {
        "forward": staticmethod(combined_forward),
        "backward": staticmethod(cls.backward),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,  # the same names: its graph nodes read as cls's ("SigmoidFunctionBackward")
        "__doc__": cls.__doc__,
    }
    if "jvp" in vars(cls):
        namespace["jvp"] = staticmethod(cls.jvp)
    cls._direct = type(cls.__name__, (Function,), namespace)
    if "jvp" in vars(cls):
        names = ("forward", "setup_context", "backward", "vmap", "generate_vmap_rule", "__module__", "__qualname__")
        _TRACED[id(cls)] = type(cls.__name__, (Function,), {k: vars(cls)[k] for k in names if k in vars(cls)})
    return cls


def _outputs_of_its_own(output, args):
    """``output`` with each tensor that is a view of an intermediate of the forward (F.linear on a 3-D input, a loss
    reduced then reshaped) made a tensor of its own, sharing that storage: torch forbids modifying a custom Function's
    view in place (``nn.ReLU(inplace=True)`` after a Linear), and nothing else can see the intermediate. A view of an
    input stays one: writing through it must reach the input."""
    if isinstance(output, tuple):
        return tuple(_outputs_of_its_own(o, args) for o in output)
    if not (isinstance(output, torch.Tensor) and output._is_view()):
        return output
    base = output._base
    if any(isinstance(a, torch.Tensor) and (a is base or a._base is base) for a in args):
        return output
    return output.detach()  # the same storage, not tracked as a view


# Dynamo refuses to trace a Function that defines jvp, and a compiled graph runs no forward-mode AD: under
# torch.compile each such Function runs as its copy without jvp (the same forward, setup_context and backward).
# Keyed by id: Dynamo can neither read an attribute of a Function class nor hash one, but it can take its id.
_TRACED: dict[int, type[Function]] = {}


def apply(function: type[Function], *args):
    """``function.apply(*args)``, through its direct Function unless a torch.func transform (vmap, grad, jacrev ...)
    is active or torch.compile is tracing (which compiles the binding away, and traces ``apply`` but not the direct
    Function; it runs the copy without jvp); all run the same code, so results and gradients are identical."""
    if torch.compiler.is_compiling():
        return _TRACED.get(id(function), function).apply(*args)
    if torch._C._are_functorch_transforms_active():
        if transform_levels(TransformType.Jvp) > 1:
            # forward over forward (jacfwd of jacfwd, jvp of jvp): torch differentiates no Function's jvp at an
            # outer forward level, and would silently give zeros (for any Function, a textbook sin too); its forward's
            # torch ops compute torch's derivatives instead (docs/limits.md)
            return function.forward(*args)
        return function.apply(*(Leaf(a) if type(a) is tuple else a for a in args))
    return function._direct.apply(*args)


def transform_levels(kind: TransformType) -> int:
    """How many of torch.func's transforms of a kind (``TransformType.Jvp``, ``TransformType.Vmap`` ...) are active."""
    return sum(i.key() == kind for i in retrieve_all_functorch_interpreters())


class Leaf(tuple):
    """A tuple argument (an int pair) that torch's pytree takes as one leaf. torch.func's generated vmap rule gives a
    Function's jvp one tangent per argument but counts a plain tuple's items (``get_tangents_in_dims``), which
    breaks vmap over a jvp (jacfwd of jacrev: the Hessian); torch.compile cannot trace a tuple subclass, so only the
    torch.func path wraps."""

    __slots__ = ()


def nested_apply(function: type[Function], *args):
    """A Function called inside another's backward: through ``apply`` when a graph of the backward is being built
    (``create_graph=True``), so that higher derivatives run through hand-written code too; otherwise its forward
    alone, without a Function's bookkeeping (and without the aliases legacy vmap cannot batch)."""
    if torch.is_grad_enabled():
        return apply(function, *args)
    return function.forward(*args)


@with_direct_call
class _LinkedWithZero(Function):
    """``result`` as it is, with a zero derivative with respect to ``inputs``: the edge torch's double backward has
    where a first derivative is constant in an input (threshold_backward's derivative in its saved output is
    ``zeros_like``), so that a second derivative through it is a zero tensor, as torch's, not None."""

    generate_vmap_rule = True

    @staticmethod
    def forward(result, *inputs):
        return result.detach()  # the same values; its graph is this Function's

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[1:])

    @staticmethod
    def backward(ctx, grad):
        zeros = (torch.zeros_like(t) if need else None for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[1:]))
        return grad, *zeros  # ∂result/∂result = 1, ∂result/∂input = 0

    @staticmethod
    def jvp(ctx, result_t, *_):
        return result_t.clone()


def linked_with_zero(result: torch.Tensor | None, *inputs: torch.Tensor | None) -> torch.Tensor | None:
    """``result``, a first derivative computed in a backward, tied with a zero derivative to ``inputs`` it does not
    vary with — only while a graph of the backward is built (``create_graph=True``) and an input requires grad:
    torch's double backward reaches them (a ReLU's saved output, a normalisation's bias) with zeros, and a
    parameter's ``.grad`` is then a zero tensor, not None (an input-gradient penalty, WGAN-GP's or R1's)."""
    if result is None or not torch.is_grad_enabled():
        return result
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return result  # torch.func's gradients are tensors (zeros) for every input anyway; a compiled graph, its own
    linked = [t for t in inputs if t is not None and t.requires_grad]
    return apply(_LinkedWithZero, result, *linked) if linked else result


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether ``t``'s strides read as channels_last by the rule torch's convolution and pooling apply to choose
    their layout (``Tensor.suggest_memory_format``, c10's ``is_channels_last_strides_2d_s4``, here in plain Python: a
    few integer comparisons): a sliced channels_last map counts, a 1x1 map or a single channel laid out plainly not."""
    try:
        if t.dim() != 4:
            return False
        sizes, strides = t.shape, t.stride()
    except RuntimeError:  # vmap cannot query strides; its per-sample tensors have no layout of their own
        return False
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):  # C, W, H, N: channels_last's order of ever larger strides
        if sizes[d] == 0 or strides[d] < smallest or (d == 0 and smallest == strides[1]):
            return False
        smallest = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def in_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A gradient in its input's layout (channels_last or plainly contiguous)."""
    if not channels_last:
        return t.contiguous()
    try:
        return t.contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # vmap (a backward under torch.func.jacrev) has no layout to ask for
        return t


def masks_may_multiply(saved: torch.Tensor, grad_output: torch.Tensor) -> bool:
    """Whether fast mode may multiply δ by a 0/1 mask where torch's kernel selects (δ or 0): in fast mode, on the CPU,
    for full-precision real tensors, outside vmap (torch.func's, or the legacy one gradcheck and
    ``jacobian(vectorize=True)`` batch δ with) and compiled graphs (the caller's check that the product came out
    finite, or δ is, is a data-dependent branch). A selection gives 0 where the mask is 0 even for an infinite δ; the
    product gives 0·∞ = NaN there, so the caller falls back to the selection when that check fails."""
    if is_literal() or saved.dtype in (torch.float16, torch.bfloat16) or saved.is_complex():
        return False
    return saved.device.type == "cpu" and not batched_or_traced(grad_output)


def opmath(t: torch.Tensor | None) -> torch.Tensor | None:
    """float16/bfloat16 as float32, the "opmath" type torch's kernels compute reduced-precision gradients in (each
    backward casts its result back once, at the end); other dtypes and None unchanged."""
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def batched_or_traced(t: torch.Tensor) -> bool:
    """Whether vmap (see :func:`batched`) or torch.compile is at work: then no in-place writes or ``out=``."""
    return torch.compiler.is_compiling() or _vmapped(t)


def batched(t: torch.Tensor) -> bool:
    """Whether vmap batches: a torch.func transform, or gradcheck's batched gradients (the legacy vmap over δ, ``t``),
    which cannot batch in-place writes, ``out=`` or writes into a slice of an unbatched tensor."""
    # a compiled graph is traced unbatched (Dynamo cannot read the legacy flag)
    return not torch.compiler.is_compiling() and _vmapped(t)


def _vmapped(t: torch.Tensor) -> bool:
    return torch._C._are_functorch_transforms_active() or torch._C._functorch.is_legacy_batchedtensor(t)


def like_torch_elementwise(
    result: torch.Tensor, grad_output: torch.Tensor, saved: torch.Tensor, saved_first: bool = False
) -> torch.Tensor:
    """``result`` in the layout torch's elementwise backward kernel gives its gradient: a TensorIterator over δ and
    the saved tensor (``gelu_backward``, ``sigmoid_backward``, ``hardswish_backward`` ...), or over the saved tensor
    and δ (``saved_first``: ``threshold_backward``, ``leaky_relu_backward``), read off the same iteration over meta
    tensors with their strides (an expanded δ keeps its zero strides there); copied only where that differs."""
    if not isinstance(result, torch.Tensor) or result.dim() == 0 or result.shape != saved.shape:
        return result
    if grad_output.stride() == saved.stride() == result.stride():  # the common case: nothing to decide
        return result
    if batched_or_traced(grad_output):
        return result  # vmap's per-sample tensors have no layout of their own; a compiled graph has its own rules
    first, second = (saved, grad_output) if saved_first else (grad_output, saved)
    strides = _elementwise_strides(result.shape, first.stride(), second.stride())
    if strides == result.stride():
        return result
    return torch.empty_strided(result.shape, strides, dtype=result.dtype, device=result.device).copy_(result)


@functools.lru_cache(maxsize=1024)
def _elementwise_strides(shape: torch.Size, first: tuple[int, ...], second: tuple[int, ...]) -> tuple[int, ...]:
    """The strides TensorIterator gives the result of a binary elementwise op on operands of ``shape`` with these
    strides, read off float32 meta tensors (the layout does not depend on the dtype, but a half-precision meta
    product decides plainly where the CPU kernel follows the operands' layout). Cached: a meta product goes through
    Python meta registrations, and a training loop asks about the same few layouts every step."""
    meta = [torch.empty_strided(shape, strides, dtype=torch.float32, device="meta") for strides in (first, second)]
    return torch.mul(*meta).stride()


def elementwise_layout(backward=None, *, saved_first: bool = False):
    """Decorates ``backward(ctx, δ)`` of an elementwise Function whose first saved tensor is x (or its output y): its
    first gradient laid out as torch's kernel lays it out (:func:`like_torch_elementwise`, ``saved_first`` as there),
    whichever operand the formula's own first operation read. ``@elementwise_layout`` or
    ``@elementwise_layout(saved_first=True)``."""
    if backward is None:
        return functools.partial(elementwise_layout, saved_first=saved_first)

    @functools.wraps(backward)
    def laid_out(ctx, grad_output):
        if torch.compiler.is_compiling():
            return backward(ctx, grad_output)  # a compiled graph lays its gradients out by its own rules
        # the saved tensors unpacked once, for the formula and the layout alike: non-reentrant checkpointing
        # (torch.utils.checkpoint) recomputes them for one unpacking, and refuses a second
        ctx = _UnpackedOnce(ctx, ctx.saved_tensors)
        grads = backward(ctx, grad_output)
        first = grads[0] if isinstance(grads, tuple) else grads
        if first is None:
            return grads
        laid = like_torch_elementwise(first, grad_output, ctx.saved_tensors[0], saved_first)
        return (laid, *grads[1:]) if isinstance(grads, tuple) else laid

    return laid_out


class _UnpackedOnce:
    """A backward's ``ctx`` whose ``saved_tensors`` were unpacked once, already: every other attribute is ctx's."""

    __slots__ = ("_ctx", "saved_tensors")

    def __init__(self, ctx, saved_tensors: tuple) -> None:
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "saved_tensors", saved_tensors)

    def __getattr__(self, name: str):
        return getattr(self._ctx, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._ctx, name, value)
