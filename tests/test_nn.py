"""bp_torch.nn against torch.nn: same construction, same outputs and gradients; convert() on real architectures."""

import copy

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from bp_torch import nn as bnn


def forward_backward(module: nn.Module, x: torch.Tensor, seed: int = 1):
    """Output, input gradient and every parameter gradient (by name) for one random upstream gradient δ."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    torch.manual_seed(seed)  # the same dropout masks / stochastic depth in both runs
    out = module(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out))
    grads = {name: p.grad for name, p in module.named_parameters()}
    return out.detach(), x.grad, grads


def assert_same(native, manual, **tolerance):
    out_n, gx_n, grads_n = native
    out_m, gx_m, grads_m = manual
    assert out_m.dtype == out_n.dtype and out_m.shape == out_n.shape
    torch.testing.assert_close(out_m, out_n, **tolerance)
    torch.testing.assert_close(gx_m, gx_n, **tolerance)
    assert grads_m.keys() == grads_n.keys()
    for name in grads_n:
        assert_close_named(grads_m[name], grads_n[name], name, **tolerance)


def assert_close_named(actual, expected, name, **tolerance):
    torch.testing.assert_close(actual, expected, **tolerance, msg=lambda m: f"{name}: {m}")


MODULES = [
    # (class name, constructor args, constructor kwargs, input shape)
    ("Conv2d", (3, 4, 3), {}, (2, 3, 9, 9)),
    ("Conv2d", (3, 4, 3), {}, (3, 9, 9)),  # unbatched
    ("Conv2d", (3, 4, (3, 2)), {"stride": 2, "padding": (1, 2), "dilation": (2, 1), "bias": False}, (2, 3, 11, 10)),
    ("Conv2d", (4, 6, 3), {"groups": 2, "padding": "same"}, (2, 4, 8, 8)),
    ("Conv2d", (4, 4, 3), {"groups": 4, "stride": 2, "padding": 1}, (2, 4, 9, 9)),  # depthwise
    ("Conv2d", (2, 3, 4), {"padding": "same", "dilation": 1}, (2, 2, 7, 7)),  # even kernel: asymmetric padding
    *[
        ("Conv2d", (2, 3, 3), {"padding": (1, 2), "padding_mode": mode, "stride": (1, 2)}, (2, 2, 6, 7))
        for mode in ("zeros", "reflect", "replicate", "circular")
    ],
    *[("Conv2d", (2, 3, 4), {"padding": "same", "padding_mode": m}, (2, 2, 7, 7)) for m in ("reflect", "circular")],
    ("AvgPool2d", (2,), {}, (2, 3, 8, 8)),
    ("AvgPool2d", (2,), {}, (3, 9, 9)),  # unbatched, odd size: last row/column never pooled
    ("AvgPool2d", (3,), {"stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}, (2, 2, 8, 8)),
    ("AvgPool2d", ((3, 2),), {"stride": (1, 2), "divisor_override": 5}, (2, 2, 7, 8)),
    ("Sigmoid", (), {}, (2, 3, 4)),
    ("Linear", (5, 3), {}, (4, 5)),
    ("Linear", (5, 3), {"bias": False}, (2, 4, 5)),
    # beyond the notes (eq. D1–D6)
    ("ReLU", (), {}, (2, 3, 4)),
    ("LeakyReLU", (0.2,), {}, (2, 3, 4)),
    ("Tanh", (), {}, (3, 4)),
    ("Dropout", (0.3,), {}, (2, 3, 4)),  # train mode; forward_backward reseeds: the same mask both ways
    ("Softmax", (1,), {}, (2, 3, 4)),
    ("LogSoftmax", (), {"dim": -1}, (2, 5)),
    # beyond the notes (eq. M1–M12)
    ("MaxPool2d", (3,), {"stride": 2, "padding": 1}, (2, 3, 9, 8)),
    ("MaxPool2d", ((2, 3),), {"dilation": (2, 1), "ceil_mode": True}, (3, 9, 9)),  # unbatched
    ("AdaptiveAvgPool2d", (1,), {}, (2, 3, 5, 5)),
    ("AdaptiveAvgPool2d", ((3, None),), {}, (3, 7, 5)),  # unbatched
    ("BatchNorm2d", (3,), {}, (4, 3, 5, 5)),
    ("BatchNorm2d", (3,), {"affine": False, "momentum": None}, (4, 3, 5, 5)),
    ("BatchNorm2d", (3,), {"track_running_stats": False, "eps": 1e-3}, (4, 3, 5, 5)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's own, from the native reference's even kernel
@pytest.mark.parametrize(("name", "args", "kwargs", "shape"), MODULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_module_matches_torch(name, args, kwargs, shape, dtype, device):
    torch.manual_seed(0)
    native = getattr(nn, name)(*args, **kwargs).to(device, dtype)
    torch.manual_seed(0)
    manual = getattr(bnn, name)(*args, **kwargs).to(device, dtype)
    # torch's __init__ untouched: the same seed draws the same parameters, under the same names, with the same repr
    assert isinstance(manual, getattr(nn, name))
    assert repr(manual) == repr(native)
    assert manual.state_dict().keys() == native.state_dict().keys()
    for p, q in zip(manual.parameters(), native.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(shape, device=device, dtype=dtype)
    assert_same(forward_backward(native, x), forward_backward(manual, x))  # assert_close's per-dtype defaults


CLASS_WEIGHT = torch.linspace(0.5, 1.5, 5)
LOSSES = [
    ("MSELoss", {}, lambda: (torch.randn(4, 3), torch.randn(4, 3))),
    ("MSELoss", {"reduction": "sum"}, lambda: (torch.randn(4, 3), torch.randn(4, 3))),
    ("NLLLoss", {"weight": CLASS_WEIGHT, "ignore_index": 2}, lambda: (torch.randn(6, 5), torch.randint(0, 5, (6,)))),
    ("CrossEntropyLoss", {}, lambda: (torch.randn(6, 5), torch.randint(0, 5, (6,)))),
    ("CrossEntropyLoss", {"weight": CLASS_WEIGHT, "ignore_index": 1, "label_smoothing": 0.2, "reduction": "none"},
     lambda: (torch.randn(2, 5, 3, 3), torch.randint(0, 5, (2, 3, 3)))),
    ("CrossEntropyLoss", {"label_smoothing": 0.1}, lambda: (torch.randn(6, 5), torch.rand(6, 5).softmax(1))),
]  # fmt: skip


@pytest.mark.parametrize(("name", "kwargs", "make"), LOSSES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(LOSSES)])
def test_loss_module_matches_torch(name, kwargs, make):
    native, manual = getattr(nn, name)(**kwargs), getattr(bnn, name)(**kwargs)
    assert isinstance(manual, getattr(nn, name)) and repr(manual) == repr(native)
    assert manual.state_dict().keys() == native.state_dict().keys()  # the class weight is a buffer in both
    x, target = make()
    results = []
    for module in (native, manual):
        leaf = x.clone().requires_grad_()
        out = module(leaf, target)
        results.append((out, torch.autograd.grad(out, leaf, torch.ones_like(out))[0]))
    torch.testing.assert_close(results[1], results[0])
    assert type(results[1][0].grad_fn).__name__.endswith("FunctionBackward")


def test_manual_modules_use_our_backward():
    x = torch.randn(2, 1, 6, 6, requires_grad=True)
    layers = [bnn.Conv2d(1, 2, 3), bnn.Sigmoid(), bnn.AvgPool2d(2), nn.Flatten(), bnn.Linear(8, 3)]
    y = x
    names = []
    for layer in layers:
        y = layer(y)
        names.append(type(y.grad_fn).__name__)
    assert names == [
        "Conv2dFunctionBackward",
        "SigmoidFunctionBackward",
        "AvgPool2dFunctionBackward",
        "ViewBackward0",
        "LinearFunctionBackward",
    ]


def small_model() -> nn.Module:
    shared = nn.Sigmoid()  # one module under two names: swapped once, reported once
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"),
        shared,
        nn.AvgPool2d(2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), shared, nn.Flatten()),
        nn.Linear(16, 3),
    )


def test_convert_swaps_in_place_and_shares_everything():
    model = small_model()
    params = {name: p for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}
    conv = model[0]
    calls = []
    conv.register_forward_hook(lambda *_: calls.append("hook"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the conversion
    model.eval()

    converted, summary = bnn.convert(model)

    assert converted is model and model[0] is conv and type(conv) is bnn.Conv2d
    assert [type(m) for m in model.modules() if type(m) in bnn.TWINS.values()] == [
        bnn.Conv2d,
        bnn.Sigmoid,
        bnn.AvgPool2d,
        bnn.BatchNorm2d,
        bnn.ReLU,
        bnn.Conv2d,
        bnn.Linear,
    ]
    assert all(p is params[name] for name, p in model.named_parameters())
    assert all(b is buffers[name] for name, b in model.named_buffers())
    assert not any(m.training for m in model.modules())
    assert summary.swapped == {
        "Conv2d": ["0", "5.0"],
        "Sigmoid": ["1"],
        "AvgPool2d": ["2"],
        "BatchNorm2d": ["3"],
        "ReLU": ["4"],
        "Linear": ["6"],
    }
    assert summary.left == {"Flatten": ["5.2"]}
    assert "Conv2d x2: 0, 5.0" in str(summary)

    model.train()
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert calls == ["hook"]
    before = conv.weight.detach().clone()
    optimizer.step()  # the optimizer made before the swap updates the swapped model's parameters
    assert not torch.equal(conv.weight, before)


def test_to_native_round_trip():
    torch.manual_seed(0)
    model = small_model()
    reference = copy.deepcopy(model)
    x = torch.randn(2, 1, 8, 8)
    bnn.convert(model)
    native, summary = bnn.to_native(model)
    assert native is model
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
    assert summary.swapped == {
        "Conv2d": ["0", "5.0"],
        "Sigmoid": ["1"],
        "AvgPool2d": ["2"],
        "BatchNorm2d": ["3"],
        "ReLU": ["4"],
        "Linear": ["6"],
    }
    assert repr(model) == repr(reference)
    assert_same(forward_backward(reference, x), forward_backward(model, x), rtol=0, atol=0)
    model.load_state_dict(reference.state_dict())  # same keys, both ways


def test_convert_leaves_subclasses_native():
    class StandardizedConv2d(nn.Conv2d):  # a user's subclass has its own forward: swapping would drop it
        def forward(self, input):
            w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
            return self._conv_forward(input, w, self.bias)

    model = nn.Sequential(StandardizedConv2d(1, 2, 3), bnn.Linear(2, 2))
    _, summary = bnn.convert(model)
    assert type(model[0]) is StandardizedConv2d
    assert summary.swapped == {}
    assert summary.left == {"StandardizedConv2d": ["0"]}  # already-bp_torch layers are neither swapped nor left
    _, summary = bnn.convert(bnn.Linear(2, 2))
    assert summary.swapped == {} and summary.left == {}
    model, summary = bnn.convert(nn.Linear(2, 2))  # the root itself
    assert type(model) is bnn.Linear and summary.swapped == {"Linear": ["<root>"]}


TORCHVISION = [
    # (constructor, input size, what convert must swap): weights=None, small inputs
    # (resnet's blocks each use one ReLU module twice: 9 modules). VGG adds nothing AlexNet lacks
    # but time; tests/test_converted_models.py has vgg11_bn and the backward graphs.
    (tvm.alexnet, 64, {"Conv2d": 5, "ReLU": 7, "MaxPool2d": 3, "AdaptiveAvgPool2d": 1, "Dropout": 2, "Linear": 3}),
    (tvm.resnet18, 32,
     {"Conv2d": 20, "BatchNorm2d": 20, "ReLU": 9, "MaxPool2d": 1, "AdaptiveAvgPool2d": 1, "Linear": 1}),
    (tvm.mobilenet_v2, 32,  # 17 depthwise convolutions
     {"Conv2d": 52, "BatchNorm2d": 52, "ReLU6": 35, "Dropout": 1, "Linear": 1}),
    # DenseNet's transitions are nn.AvgPool2d(2); a two-block DenseNet keeps the test quick
    (lambda **kw: tvm.DenseNet(8, (2, 2), 16, **kw), 32,
     {"Conv2d": 10, "BatchNorm2d": 11, "ReLU": 10, "MaxPool2d": 1, "AvgPool2d": 1, "Linear": 1}),
]  # fmt: skip


@pytest.mark.parametrize(("build", "size", "expected"), TORCHVISION, ids=["alexnet", "resnet18", "mbv2", "densenet"])
def test_convert_torchvision(build, size, expected, device):
    torch.manual_seed(0)
    model = build(num_classes=10).to(device)  # train mode: dropout (reseeded per run) and batch statistics
    x = torch.randn(2, 3, size, size, device=device)
    native = forward_backward(model, x)
    _, summary = bnn.convert(model)  # in place: the same parameters, so the same starting point
    assert {kind: len(names) for kind, names in summary.swapped.items()} == expected
    manual = forward_backward(model, x)
    # float32 (float64 makes torch's own depthwise backward take minutes on CPU): two backward algorithms through
    # up to 50 layers round differently, so compare relative to the largest gradient, not each entry. BatchNorm
    # after BatchNorm also makes some bias gradients exactly zero in theory, rounding noise in practice.
    out_n, gx_n, grads_n = native
    out_m, gx_m, grads_m = manual
    torch.testing.assert_close(out_m, out_n, rtol=1e-4, atol=1e-4 * out_n.abs().max().item())
    torch.testing.assert_close(gx_m, gx_n, rtol=1e-3, atol=1e-4 * gx_n.abs().max().item())
    scale = max(g.abs().max().item() for g in grads_n.values())
    for name, g in grads_n.items():
        assert_close_named(grads_m[name], g, name, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize(("c_in", "c_out", "groups"), [(1, 6, 1), (6, 1, 1), (1, 1, 1), (4, 4, 4), (6, 12, 1)])
def test_gradients_have_their_parameters_strides(c_in, c_out, groups):
    """torch's gradient layout contract: DistributedDataParallel's buckets compare strides, size-1 dimensions too."""
    conv = bnn.Conv2d(c_in, c_out, 3, groups=groups)
    conv(torch.randn(2, c_in, 8, 8)).sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad.stride() == p.stride(), name
