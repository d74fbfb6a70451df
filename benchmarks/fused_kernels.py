"""Elementwise backwards against torch's fused kernels, and what one torch operation of their formulas costs.

torch's ``gelu_backward``, ``threshold_backward``, ``native_batch_norm_backward`` and ``native_layer_norm_backward``
are each one fused loop over memory (the issues forbid running them). bp_torch's backwards of the same equations
are chains of torch operations, each a pass of its own; this times, on the shapes of real layers, torch's kernel,
bp_torch's backward (``torch.autograd.grad`` through each one's graph, kept) and the single operations a formula is
made of, each on the same tensor: interleaved in random order, medians, one thread::

    python benchmarks/fused_kernels.py            # the table
    python benchmarks/fused_kernels.py --quick    # one row of each kind, three repeats (the test suite runs this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from timing import medians_in_random_order, one_thread_rounds  # noqa: E402

from bp_torch import functional as BF  # noqa: E402


def _backward(op, *shapes_and_leaves):
    """A closure running the backward of ``op`` over inputs of the given shapes (all leaves), its graph kept."""
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(shape, generator=gen).requires_grad_() for shape in shapes_and_leaves]
    out = op(*leaves)
    delta = torch.randn(out.shape, generator=gen)
    return lambda: torch.autograd.grad(out, leaves, delta, retain_graph=True)


def _operation(op, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    return lambda: op(x)


def rows(quick: bool):
    """(what, elements, {name: closure}); the first closure of each row is torch's fused kernel (the yardstick)."""
    mlp = (2 * 64, 49, 256)  # maxvit_t's first MLP hidden layer, 224x224, batch 2: 64 windows of 49 tokens
    relu = (16, 64, 56, 56)  # resnet18's first stage, 224x224, batch 16
    norm = (128, 49, 64)  # maxvit_t's first stage's layer norm over 64 channels
    yield (
        "GELU, maxvit_t's MLP",
        mlp,
        {
            "torch's gelu_backward": _backward(F.gelu, mlp),
            "bp_torch's backward": _backward(BF.gelu, mlp),
            "one torch.erfc": _operation(torch.erfc, mlp),
            "one torch.erf": _operation(torch.erf, mlp),
            "one torch.exp": _operation(torch.exp, mlp),
            "one product": _operation(lambda x: x * x, mlp),
        },
    )
    if quick:
        return
    yield (
        "ReLU, resnet18's first stage",
        relu,
        {
            "torch's threshold_backward": _backward(F.relu, relu),
            "bp_torch's backward": _backward(BF.relu, relu),
            "one product": _operation(lambda x: x * x, relu),
            "one select (torch.where on a bool mask)": _operation(lambda x: torch.where(x > 0, x, 0.0), relu),
        },
    )
    channels = relu[1]
    batch_norm = lambda f: lambda x, w, b: f(x, None, None, w, b, training=True)  # noqa: E731
    yield (
        "batch norm, resnet18's first stage",
        relu,
        {
            "torch's native_batch_norm_backward": _backward(batch_norm(F.batch_norm), relu, channels, channels),
            "bp_torch's backward": _backward(batch_norm(BF.batch_norm), relu, channels, channels),
            "one product": _operation(lambda x: x * x, relu),
            "one sum over (N, H, W)": _operation(lambda x: x.sum((0, 2, 3)), relu),
        },
    )
    layer_norm = lambda f: lambda x, w, b: f(x, norm[-1:], w, b)  # noqa: E731
    yield (
        "layer norm, maxvit_t's first stage",
        norm,
        {
            "torch's native_layer_norm_backward": _backward(layer_norm(F.layer_norm), norm, norm[-1], norm[-1]),
            "bp_torch's backward": _backward(layer_norm(BF.layer_norm), norm, norm[-1], norm[-1]),
            "one product": _operation(lambda x: x * x, norm),
            "one sum over the rows": _operation(lambda x: x.sum(-1, keepdim=True), norm),
            "one torch.var_mean over the rows": _operation(lambda x: torch.var_mean(x, -1, keepdim=True), norm),
        },
    )


def main(argv=None) -> None:
    quick, repeats = one_thread_rounds(argv, __doc__.splitlines()[0], 15, "one row")
    print("| backward | shape | what runs | time | / torch's kernel |")
    print("|---|---|---|---|---|")
    for what, shape, runs in rows(quick):
        t = {name: seconds * 1e3 for name, seconds in medians_in_random_order(runs, repeats).items()}
        kernel = next(iter(t.values()))
        for name, ms in t.items():
            shape_text = "x".join(map(str, shape))
            print(f"| {what} | {shape_text} | {name} | {ms:.3f} ms | {ms / kernel:.2f} |")


if __name__ == "__main__":
    main()
