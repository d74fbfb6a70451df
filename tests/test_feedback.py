"""Backward rules (bp_torch.feedback): exact backprop unchanged, each rule's δ equal to its explicit reference
(for a convolution through bp_torch.dense's W̃ with B̃ in its place), the weight gradient still the derived one,
buffers through state_dict, .to(), convert/to_native, checkpoints and resume, and the alignment monitor."""

import copy

import pytest
import torch
from torch.func import jvp

from bp_torch import nn as bnn
from bp_torch.dense import conv2d_matrix
from bp_torch.feedback import RULES, alignment, angle, exact, feedback_matrix, set_rule
from bp_torch.models import LeNet

pytestmark = pytest.mark.usefixtures("both_formulas")

RANDOM = [r for r in RULES if r not in ("backprop", "dfa")]  # B in W's place; dfa: tests/test_direct_feedback.py


def _layers(rule, dtype=torch.float64):
    torch.manual_seed(0)
    conv = bnn.Conv2d(3, 4, 3, stride=2, padding=1, rule=rule).to(dtype)
    fc = bnn.Linear(5, 3, rule=rule).to(dtype)
    return conv, fc


def _expected_feedback(module, rule, seed):
    """B by each rule's definition, from the module's weight and buffer (brsf: the draw after ``seed``)."""
    W = module.weight.detach()
    if rule == "fa":
        return module.feedback
    if rule == "usf":
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(W)
        return torch.sign(W) * (2.0 / (fan_in + fan_out)) ** 0.5
    if rule == "frsf":
        assert (module.feedback >= 0).all()
        return module.feedback * torch.sign(W)
    torch.manual_seed(seed)  # brsf: |M| drawn as torch draws the weight, U(±1/√fan_in)
    bound = 1 / W[0].numel() ** 0.5
    return torch.empty_like(W).uniform_(-bound, bound).abs() * torch.sign(W)


@pytest.mark.parametrize("rule", RANDOM)
def test_linear_delta_is_the_feedback_matrix_times_delta(rule):
    _, fc = _layers(rule)
    x, delta = torch.randn(7, 5, dtype=torch.float64, requires_grad=True), torch.randn(7, 3, dtype=torch.float64)
    B = _expected_feedback(fc, rule, seed=1)
    torch.manual_seed(1)
    grad_x, grad_w = torch.autograd.grad(fc(x), (x, fc.weight), delta)
    torch.testing.assert_close(grad_x, delta @ B, rtol=1e-12, atol=1e-12)  # Note A eq. 8 with B in W's place
    torch.testing.assert_close(grad_w, delta.T @ x.detach(), rtol=1e-12, atol=1e-12)  # eq. 7 unchanged


@pytest.mark.parametrize("rule", RANDOM)
def test_conv_delta_is_the_feedback_matrix_of_w_tilde(rule):
    """δ_in = B̃ δ, with B̃ the matrix of Note A eq. 23 built from the feedback kernel as W̃ is from the weight."""
    conv, _ = _layers(rule)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    B = _expected_feedback(conv, rule, seed=2)
    torch.manual_seed(2)
    out = conv(x)
    delta = torch.randn_like(out)
    grad_x, grad_w = torch.autograd.grad(out, (x, conv.weight), delta)
    B_tilde = conv2d_matrix(B, (7, 7), stride=2, padding=1, dense=True)
    expected = (B_tilde @ delta.reshape(2, -1).T).T.reshape(x.shape)
    torch.testing.assert_close(grad_x, expected, rtol=1e-10, atol=1e-12)
    with exact():  # the weight gradient is the derived one, from the δ the layer receives
        exact_w = torch.autograd.grad(conv(x), conv.weight, delta)[0]
    torch.testing.assert_close(grad_w, exact_w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ["fa", "frsf"])
def test_fa_with_the_weight_as_its_feedback_is_backprop_exactly(rule):
    models = []
    for rule_ in ("backprop", rule):
        torch.manual_seed(0)
        models.append(LeNet(rule=rule_))
    exact_model, model = models
    assert all(torch.equal(p, q) for p, q in zip(exact_model.parameters(), model.parameters()))  # same weights
    for layer in (model.conv1, model.conv2, model.fc):
        set_rule(layer, "fa")
        layer.feedback.copy_(layer.weight.detach())
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    grads = [torch.autograd.grad(torch.nn.functional.cross_entropy(m(x), y), list(m.parameters()))
             for m in (exact_model, model)]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_backprop_has_no_buffer_and_is_the_default():
    torch.manual_seed(0)
    default, explicit = bnn.Linear(4, 2), bnn.Linear(4, 2, rule="backprop")
    assert list(default.state_dict()) == list(explicit.state_dict()) == ["weight", "bias"]
    assert feedback_matrix(default) is None and default.rule == "backprop"


@pytest.mark.parametrize("rule", RANDOM)
def test_buffers_follow_the_module(rule):
    conv, fc = _layers(rule, torch.float32)
    for module in (conv, fc):
        keys = set(module.state_dict())
        assert ("feedback" in keys) == (rule in ("fa", "frsf"))
        clone = type(module)(*_shape(module), rule=rule)
        clone.load_state_dict(module.state_dict())
        if "feedback" in keys:
            assert torch.equal(clone.feedback, module.feedback)
            assert module.to(torch.float64).feedback.dtype == torch.float64


def _shape(module):
    return (module.in_channels, module.out_channels, module.kernel_size) if hasattr(module, "kernel_size") else (
        module.in_features, module.out_features)  # fmt: skip


def test_convert_sets_a_rule_and_to_native_removes_it():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    model, _ = bnn.convert(model, rule="fa")
    assert {k for k in model.state_dict() if k.endswith("feedback")} == {"0.feedback", "2.feedback"}
    assert model(torch.randn(1, 1, 4, 4)).shape == (1, 3)
    bnn.to_native(model)
    assert not any(k.endswith("feedback") for k in model.state_dict())
    bnn.convert(model)  # back, exact
    assert model[0].rule == "backprop" and feedback_matrix(model[0]) is None


def test_forward_mode_is_exact_under_every_rule():
    x, t = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    for rule in RANDOM:
        fc = _layers(rule)[1]
        _, tangent = jvp(fc, (x,), (t,))
        torch.testing.assert_close(tangent, t @ fc.weight.detach().T)  # eq. J6: ẋWᵀ, W itself under every rule


def test_unknown_rules_and_native_layers_are_refused():
    with pytest.raises(ValueError, match="rule must be one of"):
        bnn.Linear(2, 2, rule="kp")
    with pytest.raises(ValueError, match="needs impl='manual'"):
        LeNet("native", rule="fa")


def test_angle():
    a = torch.randn(10)
    assert angle(a, 3 * a) == pytest.approx(0, abs=1e-6) and angle(a, -a) == pytest.approx(180)
    assert angle(torch.tensor([1.0, 0]), torch.tensor([0.0, 1])) == pytest.approx(90)


def test_alignment_is_zero_for_a_rule_that_sends_delta_through_w():
    """The monitor's angles: 0 where the rule's B is W (fa with B := W), above 0 for a random B."""
    from bp_torch.train.config import Loss

    torch.manual_seed(0)
    model = LeNet(rule="fa")
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    random = alignment(model, x, y, Loss("ce"))
    assert random["conv1/delta_angle"] > 10 and random["fc/weight_grad_angle"] == pytest.approx(0, abs=1e-3)
    aligned = copy.deepcopy(model)
    for layer in (aligned.conv1, aligned.conv2, aligned.fc):
        layer.feedback.copy_(layer.weight.detach())
    values = alignment(aligned, x, y, Loss("ce"))
    assert set(values) == {f"{layer}/{what}_{kind}" for layer in ("conv1", "conv2", "fc")
                           for what in ("delta", "weight_grad") for kind in ("angle", "norm_ratio")}  # fmt: skip
    for name, value in values.items():
        assert value == pytest.approx(1.0 if name.endswith("ratio") else 0.0, abs=1e-2), name
