"""bp_torch.audit: the manual LeNet's backward is hand-derived node by node, no aten *_backward kernel runs in it,
and the audit and the runtime check do catch native autograd where it is."""

import doctest
import sys

import pytest
import torch
from torch import nn

import bp_torch
from bp_torch import functional as BF
from bp_torch import nn as bnn
from bp_torch.audit import STRUCTURAL, audit, backward_kernels, label_modules
from bp_torch.models import LeNet
from bp_torch.train.config import Loss

LOSSES = ["ce", "mse"]


def _lenet_loss(impl: str, loss: str, label_smoothing: float = 0.0):
    torch.manual_seed(0)
    model = LeNet(impl)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    with label_modules(model):
        return model, Loss(loss, impl, label_smoothing)(model(x), y)


@pytest.mark.parametrize("loss", LOSSES)
def test_manual_lenet_backward_is_all_hand_derived(loss):
    """The training losses (the seed preset's ½Σ(ŷ − y)², the default cross-entropy) and the LeNet: 0 native."""
    _, value = _lenet_loss("manual", loss)
    report = audit(value)
    assert report.all_derived and report.counts["native"] == 0, str(report)
    derived = {n.name for n in report.nodes if n.kind == "derived"}
    head = {"ce": {"CrossEntropyFunctionBackward"}, "mse": {"MSELossFunctionBackward", "SigmoidFunctionBackward"}}
    assert head[loss] | {"Conv2dFunctionBackward", "AvgPool2dFunctionBackward", "LinearFunctionBackward"} <= derived
    assert str(report).startswith(f"backward graph: {len(report.nodes)} nodes, all hand-derived")


def test_label_smoothing_keeps_it_hand_derived():
    assert audit(_lenet_loss("manual", "ce", label_smoothing=0.1)[1]).all_derived


@pytest.mark.parametrize("loss", LOSSES)
def test_no_aten_backward_kernel_runs_in_the_manual_backward(loss):
    model, value = _lenet_loss("manual", loss)
    with backward_kernels() as kernels:
        value.backward()
    assert kernels.seen == []
    assert all(p.grad is not None for p in model.parameters())  # the backward did run, through the mode


@pytest.mark.parametrize("loss", LOSSES)
def test_the_runtime_check_sees_native_backward_kernels(loss):
    """The check can fail: the native LeNet's backward runs aten's convolution, pooling and sigmoid backward."""
    _, value = _lenet_loss("native", loss)
    with backward_kernels() as kernels:
        value.backward()
    expected = {"aten.convolution_backward.default", "aten.avg_pool2d_backward.default"}
    assert expected <= set(kernels.seen) and "aten.sigmoid_backward.default" in kernels.seen


def test_the_audit_flags_native_nodes_with_their_modules():
    _, value = _lenet_loss("native", "ce")
    report = audit(value)
    assert not report.all_derived
    native = {(n.name, n.module) for n in report.native}
    assert {("ConvolutionBackward0", "conv1"), ("ConvolutionBackward0", "conv2"), ("AddmmBackward0", "fc")} <= native
    assert ("NllLossBackward0", None) in native  # the loss ran outside any labelled module
    assert "ConvolutionBackward0 x2 (conv2, conv1)" in str(report)


def test_one_native_layer_in_a_converted_model_is_the_one_flagged():
    torch.manual_seed(0)
    model, _ = bnn.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softplus(), nn.Flatten(), nn.Linear(8, 3), nn.ReLU()))
    with label_modules(model):
        value = BF.cross_entropy(model(torch.randn(2, 1, 4, 4)), torch.tensor([0, 2]))
    report = audit(value)
    assert [(n.name, n.module) for n in report.native] == [("SoftplusBackward0", "1")]
    assert str(report).endswith("1 native: SoftplusBackward0 (1)")


def test_structural_nodes_are_views_casts_copies_and_branch_sums():
    x = torch.randn(2, 3, requires_grad=True)
    h = BF.relu(x)
    y = (h.view(3, 2).t().unsqueeze(0).expand(2, 2, 3).double().clone() + h.double()).flatten()
    report = audit(BF.mse_loss(y, torch.zeros(12, dtype=torch.float64)))
    kinds = {n.name: n.kind for n in report.nodes}
    assert report.all_derived and kinds["ReluFunctionBackward"] == "derived"
    for name in ("ViewBackward0", "TBackward0", "ExpandBackward0", "ToCopyBackward0", "CloneBackward0"):
        assert kinds[name] == "structural" and name in STRUCTURAL
    assert kinds["AddBackward0"] == kinds["AccumulateGrad"] == "structural"


def test_a_derivative_computed_by_torch_is_never_structural():
    x = torch.randn(3, requires_grad=True)
    cases = [((x * 2).sum(), "MulBackward0"), (x.exp().mean(), "ExpBackward0"), ((-x).sum(), "NegBackward0")]
    for value, name in cases:
        assert name in {n.name for n in audit(value).native}


def test_table_and_module_labels():
    model, value = _lenet_loss("manual", "ce")
    table = audit(value).table()
    assert "| derived | Conv2dFunctionBackward | 2 | conv2, conv1 |" in table
    assert "| structural | ViewBackward0 | 1 | LeNet |" in table  # the flatten in LeNet.forward: the root's
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # hooks removed on exit


def test_audit_needs_a_graph():
    with pytest.raises(ValueError, match="no grad_fn"):
        audit(torch.zeros(3))


def test_bp_torch_audit_is_the_function_and_its_examples_run():
    assert bp_torch.audit is audit
    result = doctest.testmod(sys.modules["bp_torch.audit"], optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0
