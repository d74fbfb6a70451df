"""Backwards evaluated block by block (bp_torch._blockwise) give the values of the same formula on the whole tensor,
in δ's layout, and step aside where they cannot apply. The op table's samples are smaller than a block; these are
not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bp_torch import functional as BF
from bp_torch._blockwise import block_size, blockwise, can_run_blockwise
from bp_torch.autograd import gelu

# more than two blocks, the last one partial
SHAPES = [(3 * block_size() + 123,), (3, 5, 97, 3 * block_size() // (3 * 5 * 97) + 7)]


def _input(shape, dtype, channels_last=False):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 1.5 - 0.5).to(dtype)
    x[..., :7] = torch.tensor([-0.7517916, 0.0, float("nan"), float("inf"), -float("inf"), -9.0, 1e-40])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gelu_in_blocks_gives_the_whole_tensors_values(shape, dtype, channels_last, monkeypatch):
    if channels_last and len(shape) != 4:
        pytest.skip("channels_last is 4-D")
    x = _input(shape, dtype, channels_last)
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    delta = delta.contiguous(memory_format=torch.channels_last) if channels_last else delta
    ours, theirs = BF.gelu, F.gelu
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    calls = []
    monkeypatch.setattr(gelu, "blockwise", lambda *a, **k: calls.append(a) or blockwise(*a, **k))
    (grad,) = torch.autograd.grad(ours(x_ours), x_ours, delta)
    assert len(calls) == 1  # in blocks
    monkeypatch.undo()
    # the same Function on pieces of half a block (too small for blocks): its formula on a whole tensor
    pieces = zip(x.reshape(-1).split(block_size() // 2), delta.reshape(-1).split(block_size() // 2))
    whole = torch.cat([_grad_of(ours, p, d) for p, d in pieces])
    flat = grad.reshape(-1)
    assert torch.equal(flat.nan_to_num(7.0), whole.nan_to_num(7.0))
    (reference,) = torch.autograd.grad(theirs(x_theirs), x_theirs, delta)
    assert grad.dtype == reference.dtype and grad.stride() == reference.stride()
    torch.testing.assert_close(grad, reference, equal_nan=True, rtol=1e-5 if dtype != torch.bfloat16 else 1e-2,
                               atol=1e-6)  # fmt: skip


def _grad_of(function, x, delta):
    x = x.clone().requires_grad_()
    return torch.autograd.grad(function(x), x, delta)[0]


def test_only_where_it_applies():
    x = torch.randn(3 * block_size())
    assert can_run_blockwise(x, x.clone()) is False  # autograd records (grad mode on)
    with torch.no_grad():
        assert can_run_blockwise(x, x.clone())
        assert not can_run_blockwise(x[: 2 * block_size()], x[: 2 * block_size()])  # two blocks: nothing to gain
        assert not can_run_blockwise(x.reshape(2, -1), x.reshape(-1, 2).T)  # another layout
        strided = torch.randn(6 * block_size())[::2]
        assert not can_run_blockwise(strided, strided)  # not dense
        assert not torch.func.vmap(lambda t: torch.tensor(can_run_blockwise(t, t)))(x.reshape(1, -1)).any()


def test_blocks_in_memory_order():
    x = torch.arange(3 * block_size() + 5, dtype=torch.float32).reshape(1, -1, 1, 1)
    x = x.expand(2, -1, 1, 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = blockwise(lambda a: a * 2, x, dtype=torch.float64)
    assert out.dtype == torch.float64 and out.stride() == x.stride() and torch.equal(out, x.double() * 2)


def test_a_view_with_an_offset_and_zero_strides():
    base = torch.randn(3 * block_size() + 9)
    view = base[9:]  # dense, its first element 9 into the storage
    with torch.no_grad():
        assert can_run_blockwise(view, view.clone())
        assert torch.equal(blockwise(torch.neg, view, dtype=view.dtype), -view)
        expanded = torch.randn(1, 3 * block_size()).expand(2, -1)  # the same memory twice: not dense
        assert not can_run_blockwise(expanded, expanded)


@pytest.mark.parametrize("channels_last", [False, True])
def test_relu_in_blocks_is_torchs_gradient(channels_last, monkeypatch):
    """ReLU's fast backward block by block (large tensors): torch's gradient bit for bit, NaN inputs passing δ; an
    infinite δ where the input was cut gives 0 (the blocks' sums tell, and the select runs)."""
    from bp_torch.autograd import activation

    calls = []
    in_blocks = activation._blockwise_relu_grad
    monkeypatch.setattr(activation, "_BLOCKWISE_FROM", 0)
    monkeypatch.setattr(activation, "_blockwise_relu_grad", lambda *a: calls.append(1) or in_blocks(*a))
    shape = (3, 5, 97, 3 * block_size() // (3 * 5 * 97) + 7)
    x = _input(shape, torch.float32, channels_last)
    for upstream in (1.0, float("inf")):
        delta = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        delta = delta.contiguous(memory_format=torch.channels_last) if channels_last else delta
        delta[tuple(torch.nonzero(x < 0)[0].tolist())] = upstream  # where the input was cut
        grads = [_grad_of(f, x, delta) for f in (BF.relu, F.relu)]
        assert torch.equal(grads[0].nan_to_num(7.0), grads[1].nan_to_num(7.0))
        assert grads[0].stride() == grads[1].stride()
    assert len(calls) == 2


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_in_slabs_of_samples(channels_last, monkeypatch):
    """Batch norm's training backward on slabs of samples (large maps; here every slab three samples, the last two):
    the whole-tensor passes' gradients but for the order of the sums' additions, each within twice torch's distance
    to float64; the input's layout."""
    from bp_torch import _blockwise
    from bp_torch.autograd import batch_norm

    shape = (11, 6, 9, 7)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 0.1 + 3
    delta, gamma, beta = torch.randn(shape, generator=gen), torch.rand(6, generator=gen) + 0.5, torch.randn(6)
    if channels_last:
        x, delta = (t.contiguous(memory_format=torch.channels_last) for t in (x, delta))

    def grads(f, dtype=torch.float32):
        leaves = [t.to(dtype).clone().requires_grad_() for t in (x, gamma, beta)]
        f(leaves[0], None, None, leaves[1], leaves[2], training=True).backward(delta.to(dtype))
        return [t.grad for t in leaves]

    whole = grads(BF.batch_norm)
    calls = []
    chunked = batch_norm._chunked
    monkeypatch.setattr(batch_norm, "_CHUNKED_FROM", 0)
    monkeypatch.setattr(_blockwise, "BLOCK", 3 * 6 * 9 * 7 // 4 + 1)  # 4 blocks a slab: three samples
    monkeypatch.setattr(batch_norm, "_chunked", lambda *a: calls.append(1) or chunked(*a))
    slabs = grads(BF.batch_norm)
    assert calls and len(_blockwise.sample_chunks(x)) == 4
    assert slabs[0].stride() == whole[0].stride()
    for ours, passes in zip(slabs, whole):
        torch.testing.assert_close(ours, passes, rtol=1e-5, atol=1e-5)
    truth, native = grads(F.batch_norm, torch.float64), grads(F.batch_norm)
    for ours, theirs, exact in zip(slabs, native, truth):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        assert (ours.double() - exact).abs().max() <= 2 * (theirs.double() - exact).abs().max() + 1e-6
