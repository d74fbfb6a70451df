"""LeNet: Note B's architecture and initialisation; manual (bp_torch) and native (torch.nn) agree everywhere."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from bp_torch import nn as bnn
from bp_torch.models import LeNet

KEYS = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"]


def pair(device, dtype=torch.float32, seed=0):
    """A manual and a native LeNet drawn from the same seed."""
    torch.manual_seed(seed)
    manual = LeNet("manual").to(device, dtype)
    torch.manual_seed(seed)
    native = LeNet("native").to(device, dtype)
    return manual, native


def outputs_and_grads(model, x, y, run=None):
    """Logits and ∂L/∂θ for Note B's loss, L = ½Σ(σ(logits) − y)² (eq. 13); ``run`` (default ``model``) computes."""
    model.zero_grad(set_to_none=True)
    out = (model if run is None else run)(x)
    (0.5 * (torch.sigmoid(out) - y).square().sum()).backward()
    return out.detach(), {name: p.grad for name, p in model.named_parameters()}


def batch(device, dtype=torch.float32, n=4):
    x = torch.rand(n, 1, 28, 28, device=device, dtype=dtype)
    y = F.one_hot(torch.randint(10, (n,), device=device), 10).to(dtype)
    return x, y


def test_architecture():
    manual, native = LeNet(), LeNet("native")
    assert manual.count_parameters() == native.count_parameters() == 3898  # Note B: 156 + 1,812 + 1,930
    assert list(manual.state_dict()) == list(native.state_dict()) == KEYS
    assert [name for name, _ in manual.named_children()] == ["conv1", "act1", "pool1", "conv2", "act2", "pool2", "fc"]
    assert all(type(m).__module__ == "bp_torch.nn" for m in manual.children())
    assert all(type(m).__module__.startswith("torch.nn") for m in native.children())
    assert manual(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="impl must be one of"):
        LeNet("autograd")


def test_initialisation_is_note_b_eq_1_to_3():
    model = LeNet()
    # U(±√(6 / (fan_in + fan_out))), fan = maps·k² for the convolutions; fan_in 192, fan_out 10 for the FC layer
    bounds = {
        "conv1": math.sqrt(6 / (1 * 25 + 6 * 25)),
        "conv2": math.sqrt(6 / (6 * 25 + 12 * 25)),
        "fc": math.sqrt(6 / 202),
    }
    for name, bound in bounds.items():
        layer = getattr(model, name)
        assert torch.all(layer.bias == 0)
        w = layer.weight
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.9 * bound and w.min() < 0 < w.max()  # spread over the whole interval
        assert abs(w.mean().item()) < 0.1 * bound  # roughly centred (≥ 150 draws)


def test_same_seed_same_weights_and_cross_loading(device):
    manual, native = pair(device)
    for (name, p), q in zip(manual.state_dict().items(), native.state_dict().values()):
        assert torch.equal(p, q), name
    other = LeNet("native").to(device)
    assert not torch.equal(other.conv1.weight, manual.conv1.weight)
    other.load_state_dict(manual.state_dict())  # strict: the keys agree both ways
    manual.load_state_dict(native.state_dict())
    x = torch.rand(2, 1, 28, 28, device=device)
    torch.testing.assert_close(other(x), manual(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_manual_matches_native(dtype, device):
    manual, native = pair(device, dtype)
    x, y = batch(device, dtype)
    out_m, grads_m = outputs_and_grads(manual, x, y)
    out_n, grads_n = outputs_and_grads(native, x, y)
    if dtype == torch.float64:  # tight: the same arithmetic up to summation order
        tolerance = {"rtol": 1e-12, "atol": 1e-12}
    else:
        tolerance = {}  # assert_close's float32 defaults (rtol 1.3e-6, atol 1e-5)
    torch.testing.assert_close(out_m, out_n, **tolerance)
    for name in KEYS:
        torch.testing.assert_close(grads_m[name], grads_n[name], **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def test_compile_fullgraph_trains_like_eager(device):
    eager, _ = pair(device)
    compiled_model, _ = pair(device)
    # dynamo must capture the whole model, Functions included (fullgraph), and AOTAutograd trace our backward.
    # On CPU, aot_eager does exactly that and skips only code generation: inductor's C++ build costs ~30 s here.
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)
    optimizers = [torch.optim.SGD(m.parameters(), lr=1.0) for m in (eager, compiled_model)]  # Note B: α = 1
    for _ in range(3):
        x, y = batch(device)
        out_e, grads_e = outputs_and_grads(eager, x, y)
        out_c, grads_c = outputs_and_grads(compiled_model, x, y, run=compiled)
        torch.testing.assert_close(out_c, out_e)
        for name in KEYS:
            torch.testing.assert_close(grads_c[name], grads_e[name], msg=lambda m, name=name: f"{name}: {m}")
        for optimizer in optimizers:
            optimizer.step()
    for p, q in zip(compiled_model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("impl", ["manual", "native"])
def test_per_sample_grads_with_vmap(impl, device):
    torch.manual_seed(0)
    model = LeNet(impl).to(device, torch.float64)
    params = {name: p.detach() for name, p in model.named_parameters()}
    x, y = batch(device, torch.float64, n=5)

    def loss(params, x, y):  # one sample
        logits = functional_call(model, params, (x.unsqueeze(0),))
        return 0.5 * (torch.sigmoid(logits[0]) - y).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        expected = torch.autograd.grad(loss(dict(model.named_parameters()), x[i], y[i]), list(model.parameters()))
        for name, g in zip(params, expected):
            torch.testing.assert_close(per_sample[name][i], g, rtol=1e-12, atol=1e-12)


def test_autocast_bfloat16(device):
    manual, native = pair(device)
    x, y = batch(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out_m, grads_m = outputs_and_grads(manual, x, y)
        out_n, grads_n = outputs_and_grads(native, x, y)
    assert out_m.dtype == out_n.dtype == torch.bfloat16
    assert all(grads_m[k].dtype == grads_n[k].dtype == torch.float32 for k in KEYS)  # the parameters' dtype
    # bfloat16 keeps 8 significant bits (relative step 2^-8 ≈ 0.004), and the two backwards round in different
    # places: compare to a few bfloat16 steps, relative to each tensor's largest entry
    for a, b, name in [(out_m, out_n, "logits"), *[(grads_m[k], grads_n[k], k) for k in KEYS]]:
        scale = b.abs().max().item()
        torch.testing.assert_close(
            a.float(), b.float(), rtol=2e-2, atol=2e-2 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_manual_lenet_is_convert_of_native():
    manual, native = pair("cpu")
    converted, summary = bnn.convert(native)
    assert [type(m) for m in converted.children()] == [type(m) for m in manual.children()]
    assert summary.swapped == {
        "Conv2d": ["conv1", "conv2"],
        "Sigmoid": ["act1", "act2"],
        "AvgPool2d": ["pool1", "pool2"],
        "Linear": ["fc"],
    }
    assert summary.left == {}
