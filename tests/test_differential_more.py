"""The operations beyond the notes against torch on random configurations: max_pool2d, adaptive_avg_pool2d,
batch_norm, cross_entropy, nll_loss, relu, leaky_relu, tanh, softmax, log_softmax and mse_loss.

Each draw (a fixed seed per test: the same draws every run) is given to bp_torch and to torch.nn.functional on
copies of the same tensors: the exception type when torch raises, else the outputs (max_pool2d's indices exactly),
the gradients for one random upstream gradient, and batch_norm's running statistics. More draws:
``BP_TORCH_DIFFERENTIAL_EXAMPLES=2000 python -m pytest tests/test_differential_more.py``.
"""

from __future__ import annotations

import os
import random
import warnings

import pytest
import torch
import torch.nn.functional as F

from bp_torch import functional as BF

EXAMPLES = int(os.environ.get("BP_TORCH_DIFFERENTIAL_EXAMPLES", "150"))
pytestmark = pytest.mark.usefixtures("both_formulas")


def _outcome(function, args, kwargs, differentiable):
    """(exception type or None, outputs, gradients of the ``differentiable`` argument positions)."""
    args = [
        a.detach().clone().requires_grad_(i in differentiable) if isinstance(a, torch.Tensor) else a
        for i, a in enumerate(args)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the type is what is compared
            return type(error), None, None, args
    outputs = out if isinstance(out, tuple) else (out,)
    leaves = [args[i] for i in differentiable if isinstance(args[i], torch.Tensor)]
    grads = None
    if outputs[0].requires_grad and outputs[0].numel():
        upstream = torch.randn(outputs[0].shape, generator=torch.Generator().manual_seed(1), dtype=outputs[0].dtype)
        grads = torch.autograd.grad(outputs[0], leaves, upstream, allow_unused=True)
    return None, outputs, grads, args


def _same(name, args, kwargs=(), differentiable=(0,)):
    kwargs = dict(kwargs)
    ours = _outcome(getattr(BF, name), args, kwargs, differentiable)
    theirs = _outcome(getattr(F, name), args, kwargs, differentiable)
    what = f"{name}{[tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args]} {kwargs}"
    assert ours[0] == theirs[0], f"{what}: {ours[0]} vs torch's {theirs[0]}"
    if ours[0] is not None:
        return
    for a, b in zip(ours[1], theirs[1]):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        exact = {"rtol": 0, "atol": 0} if not a.is_floating_point() else {}
        torch.testing.assert_close(a, b, equal_nan=True, msg=what, **exact)
    assert (ours[2] is None) == (theirs[2] is None), what
    for a, b in zip(ours[2] or (), theirs[2] or ()):
        assert (a is None) == (b is None), what
        if a is not None:
            torch.testing.assert_close(a, b, equal_nan=True, msg=what)
    for a, b in zip(ours[3], theirs[3]):  # arguments changed in place: batch_norm's running statistics
        if isinstance(a, torch.Tensor) and not a.requires_grad:
            torch.testing.assert_close(a, b, equal_nan=True, msg=what)


def _map(rng: random.Random, channels_last_ok=True) -> torch.Tensor:
    x = torch.randn(rng.choice([0, 1, 2]), rng.randint(1, 3), rng.randint(1, 9), rng.randint(1, 9))
    if channels_last_ok and rng.random() < 0.3:
        x = x.contiguous(memory_format=torch.channels_last)
    if rng.random() < 0.1:
        x[..., 0, 0] = float("nan")
    return x


def test_max_pool2d():
    rng = random.Random(0)
    for _ in range(EXAMPLES):
        k, d, x = rng.randint(1, 4), rng.randint(1, 2), _map(rng)
        if min(x.shape[2:]) < d * (k - 1) + 1:
            # a window whose taps all fall in the padding: torch's own CPU max_pool2d corrupts its heap (README
            # "Limits"); bp_torch refuses nothing torch accepts there, but torch cannot be the reference
            continue
        options = dict(
            stride=rng.choice([None, 1, 2, 3, (1, 2)]),
            padding=rng.randint(0, k // 2),
            dilation=d,
            ceil_mode=rng.random() < 0.5,
            return_indices=rng.random() < 0.5,
        )
        _same("max_pool2d", [x, rng.choice([k, (k, max(1, k - 1))])], options)


def test_adaptive_avg_pool2d():
    rng = random.Random(1)
    for _ in range(EXAMPLES):
        size = rng.choice([1, 2, 3, 5, 0, (2, None), (None, 3), (1, 4), [3], (2, 3, 4)])
        _same("adaptive_avg_pool2d", [_map(rng), size])


def test_batch_norm():
    """In float64: with two values per channel ∂e/∂x is exactly 0, and both sides' float32 rounding, divided by a
    small σ̂, is all either computes."""
    rng, f64 = random.Random(2), torch.float64
    for _ in range(EXAMPLES):
        C = rng.randint(1, 4)
        x = torch.randn(
            [rng.randint(1, 3), C] + [rng.randint(1, 4) for _ in range(rng.choice([0, 1, 2, 3]))], dtype=f64
        )
        tracked = rng.random() < 0.7
        running = (torch.randn(C, dtype=f64), torch.rand(C, dtype=f64) + 0.1) if tracked else (None, None)
        affine = [torch.randn(C, dtype=f64) if rng.random() < 0.6 else None for _ in range(2)]
        options = dict(
            training=rng.random() < 0.6 or not tracked,
            momentum=rng.choice([0.1, 0.5, 0.0]),
            eps=rng.choice([1e-5, 1e-3]),
        )
        _same("batch_norm", [x, *running, *affine], options, differentiable=(0, 3, 4))


def test_cross_entropy_and_nll_loss():
    rng = random.Random(3)
    for _ in range(EXAMPLES):
        N, C = rng.randint(1, 4), rng.randint(1, 5)
        extra = [rng.randint(1, 3) for _ in range(rng.choice([0, 0, 1, 2]))]
        x = torch.randn([N, C, *extra])
        indices = rng.random() < 0.5
        target = torch.randint(0, C, [N, *extra]) if indices else torch.softmax(torch.randn([N, C, *extra]), 1)
        if indices and rng.random() < 0.3:
            target[0] = -100
        options = dict(
            weight=torch.rand(C) if rng.random() < 0.5 else None, reduction=rng.choice(["mean", "sum", "none"])
        )
        if indices:
            options["ignore_index"] = rng.choice([-100, 0])
        _same(
            "cross_entropy",
            [x, target],
            {**options, "label_smoothing": rng.choice([0.0, 0.1])},
            differentiable=(0,) if indices else (0, 1),
        )
        if indices:
            _same("nll_loss", [torch.log_softmax(x, 1), target], options)


def test_activations_softmax_and_mse_loss():
    rng = random.Random(4)
    for _ in range(EXAMPLES):
        shape = [rng.randint(0, 3) for _ in range(rng.randint(0, 3))]
        x = torch.randn(shape)
        _same("relu", [x])
        _same("leaky_relu", [x], dict(negative_slope=rng.choice([0.01, 0.2, -0.1])))
        _same("tanh", [x])
        if x.dim():
            dim = rng.randint(-x.dim(), x.dim() - 1)
            _same("softmax", [x], dict(dim=dim))
            _same("log_softmax", [x], dict(dim=dim))
        _same("mse_loss", [x, torch.randn(shape)], dict(reduction=rng.choice(["mean", "sum", "none"])), (0, 1))
