"""docs/limits.md: what TorchScript and the tools keyed on exact types do with bp_torch modules, and the way out."""

import copy

import pytest
import torch
from torch import nn

from bp_torch import nn as bnn
from bp_torch.models import LeNet

_ARGUMENTS = {"Conv2d": (1, 2, 3), "AvgPool2d": (2,), "Linear": (3, 2), "MaxPool2d": (2,), "AdaptiveAvgPool2d": (1,),
              "BatchNorm2d": (3,), "LayerNorm": (4,), "GroupNorm": (1, 3), "MultiheadAttention": (4, 2)}  # fmt: skip
_MODULES = [getattr(bnn, name) for name in bnn.__all__ if isinstance(getattr(bnn, name), type)]
_MODULES = [cls for cls in _MODULES if issubclass(cls, nn.Module)]


@pytest.mark.parametrize(
    "module",
    [cls(*_ARGUMENTS.get(cls.__name__, ())) for cls in _MODULES] + [LeNet()],
    ids=[cls.__name__ for cls in _MODULES] + ["LeNet"],
)
def test_torch_jit_script_fails_at_once_with_one_line_naming_the_way_out(module):
    """Every bp_torch module, not only the first ones: the others failed deep inside TorchScript."""
    with pytest.raises(RuntimeError) as error:
        torch.jit.script(module)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot be scripted" in message and "to_native" in message and "torch.compile" in message


def test_to_native_model_scripts_and_computes_the_same():
    model = LeNet().eval()
    x = torch.randn(2, 1, 28, 28)
    scripted = torch.jit.script(bnn.to_native(copy.deepcopy(model))[0])
    torch.testing.assert_close(scripted(x), model(x))


def _model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def test_quantize_dynamic_leaves_bp_torch_linear_alone_and_quantizes_after_to_native():
    quantize = torch.ao.quantization.quantize_dynamic
    converted = bnn.convert(_model())[0]
    assert type(quantize(copy.deepcopy(converted), {nn.Linear})[4]) is bnn.Linear  # silently left as it was
    native = bnn.to_native(copy.deepcopy(converted))[0]
    assert "quantized" in type(quantize(native, {nn.Linear})[4]).__module__


def test_fuse_modules_finds_no_fuser_for_bp_torch_conv_and_fuses_after_to_native():
    fuse = torch.ao.quantization.fuse_modules
    converted = bnn.convert(_model())[0]
    with pytest.raises(AssertionError, match="did not find fuser method"):
        fuse(copy.deepcopy(converted), [["0", "1", "2"]])
    fused = fuse(bnn.to_native(copy.deepcopy(converted))[0], [["0", "1", "2"]])
    assert "fused" in type(fused[0]).__module__ or "intrinsic" in type(fused[0]).__module__


def test_torchs_nll_loss_backward_refuses_a_non_contiguous_map_ours_gives_its_gradient():
    """torch 2.14.1's nll_loss2d accepts a non-contiguous (N, C, H, W) input in its forward, and its backward then
    raises "grad_input must be contiguous" (README "Limits"); ours gives the gradient torch gives a contiguous copy.
    When torch's backward stops refusing, the first assertion fails: drop the exclusion in tests/op_db.py."""
    import torch.nn.functional as F

    from bp_torch import functional as BF

    x = torch.randn(3, 4, 2, 2).transpose(-1, -2)
    target = torch.randint(0, 4, (3, 2, 2))
    native = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="grad_input must be contiguous"):
        F.nll_loss(native, target, reduction="sum").backward()
    ours = x.clone().requires_grad_()
    BF.nll_loss(ours, target, reduction="sum").backward()
    plain = x.contiguous().requires_grad_()
    F.nll_loss(plain, target, reduction="sum").backward()
    torch.testing.assert_close(ours.grad, plain.grad)
