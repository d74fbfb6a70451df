"""The transformer's operations beyond the op table (tests/op_db.py): the modules and convert(), attention's dropout,
MultiheadAttention against torch's (backward rules included), and vit_b_16 converted with no native node."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bp_torch
from bp_torch import functional as BF
from bp_torch import nn as bnn
from bp_torch.audit import backward_kernels, label_modules


def _grads(model, *inputs):
    out = model(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype))
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_norm_and_gelu_modules_are_drop_in():
    torch.manual_seed(0)
    native = nn.Sequential(nn.Conv2d(4, 6, 3), nn.GroupNorm(3, 6), nn.GELU("tanh"), nn.Flatten(2), nn.LayerNorm(16))
    model, summary = bnn.convert(copy.deepcopy(native))
    assert summary.swapped == {"Conv2d": ["0"], "GroupNorm": ["1"], "GELU": ["2"], "LayerNorm": ["4"]}
    assert summary.left == {"Flatten": ["3"]}
    assert isinstance(model[1], nn.GroupNorm) and repr(model) == repr(native)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    (out, grads), (ref, ref_grads) = _grads(model, x), _grads(native, x)
    torch.testing.assert_close(out, ref)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
    back, _ = bnn.to_native(model)
    assert [type(m) for m in back] == [type(m) for m in native]


def test_group_norm_gradient_keeps_channels_last():
    x = torch.randn(2, 6, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    BF.group_norm(x, 2).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_linear_subclass_with_linears_forward_is_converted_and_restored():
    layer = nn.modules.linear.NonDynamicallyQuantizableLinear(4, 3)
    model, summary = bnn.convert(nn.Sequential(layer), rule="fa")
    assert summary.swapped == {"NonDynamicallyQuantizableLinear": ["0"]} and not summary.left
    assert isinstance(layer, bnn.Linear) and isinstance(layer, nn.modules.linear.NonDynamicallyQuantizableLinear)
    assert layer.feedback.shape == layer.weight.shape  # rule="fa" reaches it
    x = torch.randn(5, 4, requires_grad=True)
    layer(x).sum().backward()
    assert "LinearFunction" in type(layer(x).grad_fn).__name__
    bnn.to_native(model)
    assert type(layer) is nn.modules.linear.NonDynamicallyQuantizableLinear and "feedback" not in layer._buffers
    model, _ = bnn.convert(model, rule="fa")  # the class derived at run time pickles as the subclass and its state
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded, copied = torch.load(buffer, weights_only=False), copy.deepcopy(model)
    assert type(loaded[0]) is type(copied[0]) is type(layer) and torch.equal(loaded[0].feedback, layer.feedback)


def test_subclass_with_its_own_forward_stays_native_and_is_named():
    class LayerNorm2d(nn.LayerNorm):  # torchvision's convnext: channels last, then F.layer_norm
        def forward(self, x):
            return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias).permute(
                0, 3, 1, 2
            )

    model, summary = bnn.convert(nn.Sequential(LayerNorm2d(4), nn.LayerNorm(3)))
    assert type(model[0]) is LayerNorm2d and summary.left == {"LayerNorm2d": ["0"]}
    assert summary.swapped == {"LayerNorm": ["1"]}


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_attention_dropout_is_a_fixed_mask_given_the_seed(p):
    """With the seed fixed each call draws the same mask, so the derived gradients check against finite differences
    of the very function (torch's kernel draws its own masks: the op table compares dropout-free calls)."""
    q, k, v = (torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def attention(q, k, v):
        torch.manual_seed(0)
        return BF.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)

    assert gradcheck(attention, (q, k, v)) and gradgradcheck(attention, (q, k, v))
    torch.manual_seed(0)
    keep = (torch.empty(2, 3, 3, dtype=torch.float64).bernoulli_(1 - p) / (1 - p)) if p < 1 else torch.zeros(2, 3, 3)
    causal = torch.ones(3, 3, dtype=torch.bool).tril()
    weights = torch.softmax((q @ k.mT / 2).masked_fill(~causal, float("-inf")), -1)  # scale 1/√4
    torch.testing.assert_close(attention(q, k, v), (weights * keep) @ v)


def test_attention_forward_mode_and_half_precision():
    q, k, v = (torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, m: BF.scaled_dot_product_attention(q, k, v, m)  # noqa: E731
    assert gradcheck(fn, (q, k, v, mask), check_forward_ad=True, check_backward_ad=False, check_undefined_grad=False)
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = BF.scaled_dot_product_attention(*low)
    assert out.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q, k, v)
    assert (out.double() - ref).abs().max() <= 2 * (F.scaled_dot_product_attention(*low).double() - ref).abs().max()


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_matches_torch(need_weights, batch_first):
    torch.manual_seed(0)
    native = nn.MultiheadAttention(8, 2, batch_first=batch_first, dtype=torch.float64)
    model, summary = bnn.convert(copy.deepcopy(native))
    assert set(summary.swapped) == {"MultiheadAttention", "NonDynamicallyQuantizableLinear"}
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    pad = torch.zeros((3, 5) if batch_first else (5, 3), dtype=torch.bool)  # (N, S): the last key of sample 1 unseen
    pad[1, -1] = True

    def run(m):
        xx = x.clone().requires_grad_()
        out, weights = m(xx, xx, xx, key_padding_mask=pad, need_weights=need_weights)
        out.backward(torch.ones_like(out))
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        return out.detach(), weights, xx.grad, grads

    (out, w, gx, grads), (ref, ref_w, ref_gx, ref_grads) = run(model), run(native)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, ref_gx)
    if need_weights:
        torch.testing.assert_close(w, ref_w)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


def test_multihead_attention_out_proj_runs_its_backward_rule():
    """Under rule="fa" the output projection carries δ back through its feedback matrix: the forward and the
    out_proj's weight gradient are backprop's, the gradient below it is not."""
    torch.manual_seed(0)
    exact, _ = bnn.convert(nn.MultiheadAttention(8, 2))
    fa, _ = bnn.convert(copy.deepcopy(exact), rule="fa")
    assert fa.out_proj.feedback.shape == fa.out_proj.weight.shape
    runs = []
    for model in (exact, fa):
        x = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out, _ = model(x, x, x, need_weights=False)
        out.sum().backward()
        runs.append((out.detach(), model.out_proj.weight.grad, x.grad))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1])
    assert not torch.allclose(runs[0][2], runs[1][2])


def test_converted_vit_has_no_native_node():
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model, summary = bnn.convert(tvm.vit_b_16(image_size=32, num_classes=10), rule="fa")
    assert not summary.left, summary
    assert len(summary.swapped["NonDynamicallyQuantizableLinear"]) == 12
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    with label_modules(model):
        loss = bnn.CrossEntropyLoss()(model(x), y)
    report = bp_torch.audit(loss)
    assert report.all_derived, str(report)
    ours = {n.name for n in report.nodes if n.kind == "derived"}
    assert {"LayerNormFunctionBackward", "GeluFunctionBackward", "ScaledDotProductAttentionFunctionBackward"} <= ours
    with backward_kernels() as kernels:
        loss.backward()
    # the class token, x[:, 0], is torch's view (a select), whose backward is aten's select_backward (it moves δ only)
    assert set(kernels.seen) <= {"aten.select_backward.default"}, kernels.seen
