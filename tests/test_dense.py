"""W̃ (Note A sections 3.3, 3.4): a convolution is a fully connected layer, checked against bp_torch's conv2d."""

import pytest
import torch
from cases import CONV_GRID, ConvCase, conv_cases
from hypothesis import given, settings

from bp_torch import functional as BF
from bp_torch.autograd import conv2d_input_grad
from bp_torch.dense import DenseConv2d, conv2d_matrix, dense_conv2d

F64 = torch.float64
LENET = [
    ConvCase(1, 6, 1, (5, 5), (28, 28), batch=4, name="lenet-C1"),
    ConvCase(6, 12, 1, (5, 5), (12, 12), batch=4, name="lenet-C2"),
]
GRID = [pytest.param(case, id=str(case)) for case in CONV_GRID]


@pytest.mark.parametrize("case", GRID)
def test_matrix_times_input_is_conv2d(case, device):
    """Note A eq. 23: conv2d(x, w) flattened = W̃ᵀ x flattened; the sparse and dense W̃ agree."""
    x, w, _ = case.tensors(F64, device)
    s = BF.conv2d(x, w, **case.options)
    W_sparse = conv2d_matrix(w, case.size, **case.options)
    W_dense = conv2d_matrix(w, case.size, **case.options, dense=True)
    assert W_sparse.is_sparse and W_sparse.is_coalesced() and not W_dense.is_sparse
    assert W_dense.shape == (case.C_in * case.size[0] * case.size[1], s[0].numel())
    torch.testing.assert_close(W_sparse.to_dense(), W_dense, rtol=0, atol=0)
    torch.testing.assert_close(x.flatten(1) @ W_dense, s.flatten(1), rtol=1e-12, atol=1e-12)


def _matches_conv2d(case, device):
    x, w, b = case.tensors(F64, device)
    params = [t for t in (x, w, b) if t is not None]
    ours, theirs = dense_conv2d(x, w, b, **case.options), BF.conv2d(x, w, b, **case.options)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(theirs)
    for a, e in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(theirs, params, g)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", GRID)
def test_dense_conv2d_matches_conv2d(case, device):
    """Forward and all three gradients of the fully connected view equal bp_torch.functional.conv2d's."""
    _matches_conv2d(case, device)


@settings(max_examples=20, deadline=None)
@given(conv_cases())
def test_dense_conv2d_matches_conv2d_on_random_configs(case):
    _matches_conv2d(case, "cpu")


@pytest.mark.parametrize("case", LENET, ids=str)
def test_lenet_layers_float32(case, device):
    x, w, b = case.tensors(torch.float32, device)
    ours, theirs = dense_conv2d(x, w, b), BF.conv2d(x, w, b)
    g = torch.randn_like(theirs)
    # float32, and the two compute sums of up to 4·24·24 products in different orders: ~1e-6 relative, so 1e-4
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    for a, e in zip(torch.autograd.grad(ours, (x, w, b), g), torch.autograd.grad(theirs, (x, w, b), g)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [{}, {"stride": 2, "padding": 1}, {"dilation": (2, 1), "padding": "same"}, {"groups": 2, "padding": (0, 1)}],
)
def test_gradcheck(options, device):
    x, w, b = ConvCase(2, 2, options.get("groups", 1), (3, 2), (5, 4)).tensors(F64, device)
    assert torch.autograd.gradcheck(lambda x, w, b: dense_conv2d(x, w, b, **options), (x, w, b))


def test_gradgradcheck(device):
    """The hand-written backward is made of differentiable ops, so second derivatives exist too."""
    x, w, b = ConvCase(2, 2, 1, (2, 2), (4, 4)).tensors(F64, device)
    assert torch.autograd.gradgradcheck(lambda x, w, b: dense_conv2d(x, w, b, stride=2), (x, w, b))


def test_w_tilde_delta_is_the_flipped_kernel(device):
    """Eq. 28 = eq. 17: W̃δ is the full cross-correlation of δ with the rot180 kernel, channels swapped (eq. 35)."""
    x, w, _ = ConvCase(3, 4, 1, (3, 2), (6, 7)).tensors(F64, device)
    delta = torch.randn_like(BF.conv2d(x, w))  # (N, C_out, H_out, W_out)
    W_tilde = conv2d_matrix(w, (6, 7), dense=True)
    ours = (delta.flatten(1) @ W_tilde.T).reshape(x.shape)  # W̃δ for each sample
    # eq. 17 written out: pad δ by k−1 (a 'full' correlation), correlate with the flipped kernel, in/out swapped
    flipped = torch.nn.functional.conv2d(delta, w.flip(2, 3).transpose(0, 1), padding=(2, 1))
    torch.testing.assert_close(ours, flipped, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in GRID if c.values[0].padding != "same"])
def test_w_tilde_delta_is_the_core_input_gradient(case, device):
    """The same with stride (zeros inserted into δ), padding (cropped), dilation and groups: the core's eq. 17/35."""
    x, w, _ = case.tensors(F64, device)
    delta = torch.randn_like(BF.conv2d(x, w, **case.options))
    W_tilde = conv2d_matrix(w, case.size, **case.options)
    ours = torch.sparse.mm(W_tilde, delta.flatten(1).T).T.reshape(x.shape)
    pair = torch.nn.modules.utils._pair
    padding = (0, 0) if case.padding == "valid" else pair(case.padding)
    core = conv2d_input_grad(delta, w, case.size, pair(case.stride), padding, pair(case.dilation), case.groups)
    torch.testing.assert_close(ours, core, rtol=1e-12, atol=1e-12)


def test_eq28_through_a_sigmoid(device):
    """δ = θ'(s) ⊙ W̃δ' (eq. 28): the δ of a conv layer below a sigmoid and a second conv layer."""
    x = torch.randn(2, 1, 8, 8, dtype=F64, device=device)
    w1 = torch.randn(3, 1, 3, 3, dtype=F64, device=device)
    w2 = torch.randn(2, 3, 3, 3, dtype=F64, device=device)
    s1 = BF.conv2d(x, w1).requires_grad_()  # (2, 3, 6, 6)
    z1 = BF.sigmoid(s1)
    s2 = BF.conv2d(z1, w2)  # (2, 2, 4, 4)
    delta2 = torch.randn_like(s2)  # δ' = ∂e/∂s2
    (delta1,) = torch.autograd.grad(s2, s1, delta2)
    W2 = conv2d_matrix(w2, (6, 6), dense=True)
    expected = (z1 * (1 - z1)) * (delta2.flatten(1) @ W2.T).reshape(z1.shape)  # θ' = σ(1−σ) (Note B eq. 37)
    torch.testing.assert_close(delta1, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_channel_blocks_are_fully_connected(groups, device):
    """Section 3.4: with M input and N output channels, W̃ is an M×N grid of single-channel W̃s, block (m, n)
    built from kernel w[n, m] — all non-zero (fully connected), except across groups, where they are zero."""
    M, N, size, k = 4, 6, (5, 4), (3, 2)
    w = torch.randn(N, M // groups, *k, dtype=F64, device=device)
    W_tilde = conv2d_matrix(w, size, groups=groups, dense=True)
    blocks = W_tilde.reshape(M, size[0] * size[1], N, -1)  # (m, input pixel, n, output pixel)
    for m in range(M):
        for n in range(N):
            block = blocks[m, :, n, :]
            if m // (M // groups) == n // (N // groups):  # same group: block holds kernel w[n, m_local]
                m_local = m % (M // groups)
                single = conv2d_matrix(w[n : n + 1, m_local : m_local + 1], size, dense=True)
                torch.testing.assert_close(block, single, rtol=0, atol=0)
                assert block.count_nonzero() == k[0] * k[1] * (size[0] - k[0] + 1) * (size[1] - k[1] + 1)
            else:
                assert block.count_nonzero() == 0


def test_sparsity_and_weight_sharing():
    """Each column of W̃ holds one copy of its kernel; taps in the padding are dropped, not stored as zeros."""
    w = torch.arange(1.0, 1 + 2 * 3 * 3 * 3).reshape(2, 3, 3, 3)
    W_tilde = conv2d_matrix(w, (5, 5))
    assert W_tilde._nnz() == 2 * 3 * 9 * 3 * 3
    columns = W_tilde.to_dense().T  # (C_out·H_out·W_out, C_in·H·W)
    for o in range(2):  # every column of output channel o holds exactly the 27 weights of kernel o
        for col in columns[o * 9 : (o + 1) * 9]:
            assert sorted(col[col != 0].tolist()) == w[o].flatten().tolist()
    padded = conv2d_matrix(w, (5, 5), padding=1)
    assert (padded.values() != 0).all()
    # per axis, 5 outputs × 3 taps less the 2 taps that fall in the padding
    assert padded._nnz() == 2 * 3 * (5 * 3 - 2) ** 2


def test_matrix_is_differentiable_in_the_weight(device):
    x, w, _ = ConvCase(2, 3, 1, (3, 3), (5, 5)).tensors(F64, device)
    x = x.detach()
    g = torch.randn(2, 3 * 3 * 3, dtype=F64, device=device)  # ∂e/∂s, s of size (C_out·H_out·W_out)
    (grad_sparse,) = torch.autograd.grad(x.flatten(1) @ conv2d_matrix(w, 5, 2, 1), w, g)
    (grad_conv,) = torch.autograd.grad(BF.conv2d(x, w, stride=2, padding=1).flatten(1), w, g)
    torch.testing.assert_close(grad_sparse, grad_conv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"stride": 0}, ["stride=0"]),
        ({"dilation": (1, -1)}, ["dilation=(1, -1)"]),
        ({"padding": -1}, ["padding=-1"]),
        ({"padding": "full"}, ["'full'"]),
        ({"padding": "same", "stride": 2}, ["stride"]),
        ({"groups": 3}, ["groups=3"]),
        ({"groups": 0}, ["groups=0"]),
        ({"groups": 2.0}, ["groups"]),
        ({"input_size": (2, 9)}, ["height 3", "padded input height 2"]),
    ],
)
def test_matrix_raises_what_conv2d_raises(kwargs, words):
    """W̃'s options are conv2d's: a bad one raises the exception type torch's conv2d raises, naming it."""
    size = kwargs.pop("input_size", (5, 5))
    weight = torch.randn(4, 1, 3, 3)
    with pytest.raises(Exception) as native:
        torch.nn.functional.conv2d(torch.randn(1, 1, *size), weight, **kwargs)
    with pytest.raises(native.type) as ours:
        conv2d_matrix(weight, size, **kwargs)
    for word in words:
        assert word in str(ours.value)


def test_matrix_argument_types():
    with pytest.raises(RuntimeError, match="4D"):
        conv2d_matrix(torch.randn(4, 3, 3), 5)
    with pytest.raises(TypeError, match="weight"):
        conv2d_matrix([[1.0]], 5)
    with pytest.raises(RuntimeError, match="input_size=0"):
        conv2d_matrix(torch.randn(4, 1, 3, 3), 0)


def test_unbatched_and_empty_batch():
    w = torch.randn(3, 2, 3, 3, dtype=F64, requires_grad=True)
    x = torch.randn(2, 5, 5, dtype=F64)
    torch.testing.assert_close(dense_conv2d(x, w, padding=1), BF.conv2d(x, w, padding=1), rtol=1e-12, atol=1e-12)
    empty = torch.randn(0, 2, 5, 5, dtype=F64, requires_grad=True)
    out = dense_conv2d(empty, w)
    assert out.shape == (0, 3, 3, 3)
    grad_x, grad_w = torch.autograd.grad(out.sum(), (empty, w))
    assert grad_x.shape == empty.shape and grad_w.abs().sum() == 0


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_module_is_a_drop_in_conv2d(padding_mode):
    native = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode=padding_mode).double()
    dense = DenseConv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode=padding_mode).double()
    dense.load_state_dict(native.state_dict())
    assert dense.state_dict().keys() == native.state_dict().keys()
    x = torch.randn(2, 4, 7, 7, dtype=F64)
    torch.testing.assert_close(dense(x), native(x), rtol=1e-12, atol=1e-12)
