"""Audit a backward graph: which nodes run a hand-derived backward, which only move data, and which are native.

:func:`audit` walks the graph autograd recorded for a tensor (``loss.grad_fn`` and every node it reaches through
``next_functions``) and sorts each node into one of three kinds:

- ``derived``: the backward of one of bp_torch's Functions, written from its derivation;
- ``structural``: a node that only moves, reshapes, casts or adds gradients — views and reshapes, expand, transpose,
  cat/stack/split, casts (``ToCopyBackward0``), clone and copy, the addition of branches (``AddBackward0``), the
  leaves' ``AccumulateGrad``, and the ``CopySlices`` that an in-place Function of bp_torch leaves on a view's base
  (marked by ``bp_torch.functional``: it runs our Function's backward on δ's slice and passes the rest on);
- ``native``: anything else: a derivative PyTorch computes for us (``ReluBackward0``, ``NllLossBackward0`` ...).

:func:`label_modules` names the module each node came from; :func:`backward_kernels` is the runtime check, a
``TorchDispatchMode`` that records every aten ``*_backward`` kernel run while it is active.

Example::

    >>> import torch
    >>> from bp_torch import functional as BF
    >>> x = torch.randn(4, 3, requires_grad=True)
    >>> print(audit(BF.cross_entropy(BF.relu(x), torch.tensor([0, 2, 1, 0]))))
    backward graph: 3 nodes, all hand-derived (2 derived, 1 structural)
    >>> print(audit(torch.nn.functional.relu(x).sum()))
    backward graph: 3 nodes, 2 native: SumBackward0, ReluBackward0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["audit", "Audit", "Node", "STRUCTURAL", "label_modules", "backward_kernels", "audit_backward"]

# Nodes whose backward only routes gradients: each passes δ on unchanged, reshaped, re-strided, cast, summed over a
# broadcast or added from two branches. Anything computing a derivative is not here.
STRUCTURAL = frozenset(
    {
        "AccumulateGrad",
        "AddBackward0",  # the addition of two branches: δ flows to both
        "AddBackward1",  # a constant added: δ unchanged
        "AliasBackward0",
        "AsStridedBackward0",
        "CatBackward0",
        "CloneBackward0",
        "CopyBackwards",
        "ExpandBackward0",
        "PermuteBackward0",
        "ReshapeAliasBackward0",
        "SelectBackward0",
        "SliceBackward0",
        "SplitBackward0",
        "SplitWithSizesBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "StackBackward0",
        "TBackward0",
        "ToCopyBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "UnbindBackward0",
        "UnsafeViewBackward0",
        "UnsqueezeBackward0",
        "ViewBackward0",
    }
)
KINDS = ("derived", "structural", "native")


@dataclass(frozen=True)
class Node:
    """One node of a backward graph: its class name, its kind and the module that made it (None if unknown)."""

    name: str
    kind: str
    module: str | None = None


_KIND_OF_TYPE: dict[type, str] = {}  # node types whose class alone decides their kind (the routing asks per call)


def _kind(node) -> str:
    kind = _KIND_OF_TYPE.get(type(node))
    if kind is not None:
        return kind
    forward = getattr(type(node), "_forward_cls", None)  # set on the nodes of torch.autograd.Function subclasses
    if forward is not None and forward.__module__.startswith("bp_torch."):
        _KIND_OF_TYPE[type(node)] = "derived"
        return "derived"
    if type(node).__name__ in STRUCTURAL:
        _KIND_OF_TYPE[type(node)] = "structural"
        return "structural"
    # a native node's own metadata can still make it structural: an in-place Function of ours on a view (its
    # CopySlices)
    return "structural" if node.metadata.get("bp_torch") == "structural" else "native"


def _walk(root) -> Iterator:
    """Every node reachable from ``root`` through ``next_functions``, each once, breadth first."""
    seen, queue = {id(root)}, [root]
    while queue:
        node = queue.pop(0)
        yield node
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                queue.append(child)


@dataclass
class Audit:
    """The nodes of one backward graph, in breadth-first order from the output. ``str()`` is a one-line summary;
    :meth:`table` counts each node type with its modules."""

    nodes: list[Node]

    @property
    def counts(self) -> dict[str, int]:
        """How many nodes of each kind."""
        counted = Counter(n.kind for n in self.nodes)
        return {kind: counted[kind] for kind in KINDS}

    @property
    def native(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "native"]

    @property
    def all_derived(self) -> bool:
        """True when no node is native: every derivative in the graph is hand-derived."""
        return not self.native

    def __str__(self) -> str:
        counts = self.counts
        head = f"backward graph: {len(self.nodes)} nodes"
        if self.all_derived:
            return f"{head}, all hand-derived ({counts['derived']} derived, {counts['structural']} structural)"
        return f"{head}, {counts['native']} native: " + ", ".join(_grouped(self.native))

    def table(self) -> str:
        """A Markdown table: each node type, its kind, how many and the modules they came from."""
        rows = ["| kind | node | count | modules |", "|---|---|---|---|"]
        groups: dict[tuple[str, str], list[Node]] = {}
        for n in self.nodes:
            groups.setdefault((n.kind, n.name), []).append(n)
        for (kind, name), members in sorted(groups.items(), key=lambda g: (KINDS.index(g[0][0]), g[0][1])):
            modules = ", ".join(dict.fromkeys(m.module for m in members if m.module)) or "—"
            rows.append(f"| {kind} | {name} | {len(members)} | {modules} |")
        return "\n".join(rows)


def _grouped(nodes: list[Node]) -> list[str]:
    """ "ReluBackward0 x9 (relu, layer1.0.relu ...)", one entry per node type, in order of first appearance."""
    groups: dict[str, list[Node]] = {}
    for n in nodes:
        groups.setdefault(n.name, []).append(n)
    out = []
    for name, members in groups.items():
        modules = list(dict.fromkeys(m.module for m in members if m.module))
        where = f" ({', '.join(modules[:3])}{' ...' if len(modules) > 3 else ''})" if modules else ""
        out.append(f"{name}{f' x{len(members)}' if len(members) > 1 else ''}{where}")
    return out


def audit(tensor: torch.Tensor) -> Audit:
    """Sort every node of ``tensor``'s backward graph into derived, structural or native.

    Args:
        tensor: the output of a forward pass (a loss), with a ``grad_fn``.

    Returns:
        an :class:`Audit`; modules are named where the forward ran under :func:`label_modules`.

    Example::

        >>> from bp_torch.models import LeNet
        >>> from bp_torch import functional as BF
        >>> model = LeNet()
        >>> with label_modules(model):
        ...     loss = BF.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([3, 7]))
        >>> report = audit(loss)
        >>> report.all_derived, report.counts
        (True, {'derived': 8, 'structural': 7, 'native': 0})
    """
    if tensor.grad_fn is None:
        raise ValueError("audit: the tensor has no grad_fn; it was not computed from tensors that require grad")
    return Audit([Node(type(n).__name__, _kind(n), n.metadata.get("module")) for n in _walk(tensor.grad_fn)])


@contextmanager
def label_modules(*models: torch.nn.Module) -> Iterator[None]:
    """While active, each backward node a module's forward creates is labelled with the module's qualified name
    (the innermost module; the root as its class name), for :func:`audit` to report.

    Forward hooks walk back from each module's outputs to its inputs' nodes; children finish before their parent,
    so a node belongs to the innermost module that made it.
    """
    handles = []
    for model in models:
        for name, module in model.named_modules():
            label = name or type(module).__name__
            handles.append(module.register_forward_pre_hook(_remember_inputs, with_kwargs=True))
            handles.append(module.register_forward_hook(lambda m, args, out, label=label: _label(m, out, label)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _remember_inputs(module, args, kwargs):
    module._bp_torch_audit_inputs = {id(t.grad_fn) for t in _tensors((args, kwargs)) if t.grad_fn is not None}


def _label(module, output, label: str) -> None:
    """Label the unlabelled nodes between ``module``'s inputs and its outputs (through its children's nodes)."""
    seen = set(getattr(module, "_bp_torch_audit_inputs", ()))
    queue = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
    while queue:
        node = queue.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        node.metadata.setdefault("module", label)
        queue.extend(child for child, _ in node.next_functions if child is not None)


class backward_kernels(TorchDispatchMode):
    """Records each aten kernel whose name holds ``backward`` (``threshold_backward``, ``convolution_backward``,
    ``_log_softmax_backward_data`` ...) that runs while active: native autograd at work.

    Example::

        >>> x = torch.randn(3, requires_grad=True)
        >>> with backward_kernels() as kernels:
        ...     torch.nn.functional.relu(x).sum().backward()
        >>> kernels.seen
        ['aten.threshold_backward.default']
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "backward" in func.__name__:
            self.seen.append(f"aten.{func.__name__}" if func.namespace == "aten" else str(func))
        return func(*args, **(kwargs or {}))


def audit_backward(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> tuple[Audit, list[str]]:
    """The audit of one training step's backward graph, and the aten ``*_backward`` kernels its backward ran.

    The step runs in training mode on ``x``, ``y`` with the random state saved and restored, and its backward
    through ``autograd.grad``: no ``.grad``, no random draw and no mode of the run is changed.
    """
    device = next(model.parameters()).device
    was_training = model.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        try:
            with label_modules(model):
                loss = loss_fn(model(x), y)
            with backward_kernels() as kernels:
                torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        finally:
            model.train(was_training)
    return audit(loss), kernels.seen
