"""Zero sizes: no channels, no features, no samples — the same output shapes as torch and empty or zero gradients."""

import pytest
import torch
import torch.nn.functional as F

from bp_torch import functional as BF

pytestmark = pytest.mark.usefixtures("both_formulas")

# (name, call with module f, tensor shapes)
CASES = [
    ("conv2d no input channels", lambda f, x, w, b: f.conv2d(x, w, b), [(2, 0, 10, 12), (5, 0, 3, 3), (5,)]),
    ("conv2d no samples", lambda f, x, w, b: f.conv2d(x, w, b, padding=1), [(0, 3, 5, 5), (4, 3, 3, 3), (4,)]),
    ("conv2d unbatched no channels", lambda f, x, w: f.conv2d(x, w), [(0, 4, 4), (3, 0, 2, 2)]),
    ("conv2d no samples, groups", lambda f, x, w: f.conv2d(x, w, None, 2, 1, 1, 2), [(0, 4, 6, 6), (4, 2, 3, 3)]),
    ("linear no in_features", lambda f, x, w, b: f.linear(x, w, b), [(3, 0), (4, 0), (4,)]),
    ("linear no out_features", lambda f, x, w, b: f.linear(x, w, b), [(3, 4), (0, 4), (0,)]),
    ("linear neither", lambda f, x, w, b: f.linear(x, w, b), [(3, 0), (0, 0), (0,)]),
    ("linear no samples", lambda f, x, w, b: f.linear(x, w, b), [(2, 0, 4), (5, 4), (5,)]),
    ("avg_pool2d no samples", lambda f, x: f.avg_pool2d(x, 2), [(0, 2, 4, 4)]),
    ("sigmoid empty", lambda f, x: f.sigmoid(x), [(2, 0, 3)]),
]  # fmt: skip
NATIVE = type(
    "native", (), {"conv2d": F.conv2d, "avg_pool2d": F.avg_pool2d, "sigmoid": torch.sigmoid, "linear": F.linear}
)


@pytest.mark.parametrize("call, shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_empty_gradients_as_torch(call, shapes, device):
    inputs = [torch.randn(s, device=device, requires_grad=True) for s in shapes]
    native_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out, native = call(BF, *inputs), call(NATIVE, *native_inputs)
    assert out.shape == native.shape
    grad = torch.randn_like(native)
    ours = torch.autograd.grad(out, inputs, grad)
    theirs = torch.autograd.grad(native, native_inputs, grad)
    for g, n, t in zip(ours, theirs, inputs):
        assert g.shape == n.shape == t.shape
        torch.testing.assert_close(g, n)  # empty, or zero, or (a bias with no input features) Σδ


def test_input_grad_of_no_input_channels_is_empty_not_an_error():
    """The issue's report: conv2d with zero input channels crashed in backward; torch returns empty gradients."""
    x = torch.randn(2, 0, 10, 12, requires_grad=True)
    w = torch.randn(5, 0, 3, 3, requires_grad=True)
    gx, gw = torch.autograd.grad(BF.conv2d(x, w).sum(), (x, w))
    assert gx.shape == x.shape and gw.shape == w.shape and gw.numel() == 0


@pytest.mark.parametrize("shape", [(0, 5, 8), (2, 0, 8)], ids=["no samples", "no positions"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_converted_attention_of_an_empty_batch_or_sequence(shape, need_weights):
    """A converted MultiheadAttention (batch first) over no samples or an empty sequence: torch's empty outputs, and
    a backward that runs."""
    import copy

    from bp_torch.nn import convert

    native = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    ours = convert(copy.deepcopy(native))[0]
    x = torch.randn(*shape, requires_grad=True)
    expected, got = native(x, x, x, need_weights=need_weights), ours(x, x, x, need_weights=need_weights)
    assert got[0].shape == expected[0].shape
    assert (got[1] is None) == (expected[1] is None)
    if expected[1] is not None:
        assert got[1].shape == expected[1].shape
    got[0].sum().backward()
    assert x.grad.shape == x.shape
