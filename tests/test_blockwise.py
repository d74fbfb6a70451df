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
