"""Regression tests for the corners of issue 22, one small parametrized test per class of bug, each judged against
torch or a float64 reference (to be folded into the op table)."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import bp_torch
from bp_torch import functional as BF


def _grads(fn, args, kwargs, requested, create_graph=False):
    """fn(*args, **kwargs) with only the args at ``requested`` requiring grad: the gradients of Σ out², then (with
    ``create_graph``) the second-order ones of Σ g²."""
    leaves = [t.detach().clone().requires_grad_(i in requested) if t is not None else None for i, t in enumerate(args)]
    out = fn(*leaves, **kwargs)
    wanted = [leaves[i] for i in requested]
    grads = torch.autograd.grad((out * out).sum(), wanted, create_graph=create_graph)
    if create_graph:
        grads += torch.autograd.grad(sum((g * g).sum() for g in grads), wanted, materialize_grads=True)
    return grads


def _bn_args(training):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    stats = (
        (None, None) if training else (torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5)
    )
    return [x, *stats, torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)], {"training": training}


def _conv_args():
    d = torch.float64
    return [torch.randn(2, 3, 5, 5, dtype=d), torch.randn(2, 3, 3, 3, dtype=d), torch.randn(2, dtype=d)], {}


def _ce_args():
    d = torch.float64
    target = torch.softmax(torch.randn(3, 4, dtype=d), 1)
    return [torch.randn(3, 4, dtype=d), target, torch.rand(4, dtype=d)], {"label_smoothing": 0.1}


def _mse_args():
    d = torch.float64
    return [torch.randn(3, 4, dtype=d), torch.randn(3, 4, dtype=d), torch.rand(3, 4, dtype=d)], {}


_SUBSET_CASES = {
    "batch_norm_train": ("batch_norm", lambda: _bn_args(True), (0, 3, 4)),
    "batch_norm_eval": ("batch_norm", lambda: _bn_args(False), (0, 3, 4)),
    "conv2d": ("conv2d", _conv_args, (0, 1, 2)),
    "linear": (
        "linear",
        lambda: ([torch.randn(4, 3).double(), torch.randn(2, 3).double(), torch.randn(2).double()], {}),
        (0, 1, 2),
    ),
    "cross_entropy": ("cross_entropy", _ce_args, (0, 1, 2)),
    "mse_loss": ("mse_loss", _mse_args, (0, 1, 2)),
}


def _positional(f, op):
    """mse_loss's weight by keyword (its third positional argument is size_average); other ops as they are."""
    return (lambda x, y, w, **kw: f(x, y, weight=w, **kw)) if op == "mse_loss" else f


def _subsets():
    for name, (_, _, differentiable) in _SUBSET_CASES.items():
        for r in range(1, len(differentiable) + 1):
            for requested in itertools.combinations(differentiable, r):
                yield pytest.param(name, requested, id=f"{name}-{'-'.join(map(str, requested))}")


@pytest.mark.parametrize("name, requested", list(_subsets()))
def test_any_subset_of_inputs_may_require_grad(name, requested):
    """A gradient the graph does not request is skipped: first and second order match torch for every subset."""
    op, make, _ = _SUBSET_CASES[name]
    args, kwargs = make()
    ours = _grads(_positional(getattr(BF, op), op), args, kwargs, requested, create_graph=True)
    theirs = _grads(_positional(getattr(F, op), op), args, kwargs, requested, create_graph=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_fine_tuning_a_converted_resnet_with_a_frozen_stem():
    """convert()-ed torchvision resnet18 with conv1 frozen: batch_norm gets no input gradient request."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=4)
    bp_torch.nn.convert(model)
    model.conv1.requires_grad_(False)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.bn1.weight.grad is not None and model.conv1.weight.grad is None
