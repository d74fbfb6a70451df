"""docs/limits.md: what TorchScript and the tools keyed on exact types do with bp_torch modules, and the way out."""

import copy

import pytest
import torch
from torch import nn

from bp_torch import nn as bnn
from bp_torch.models import LeNet


@pytest.mark.parametrize(
    "module",
    [bnn.Conv2d(1, 2, 3), bnn.AvgPool2d(2), bnn.Sigmoid(), bnn.Linear(3, 2), LeNet()],
    ids=["Conv2d", "AvgPool2d", "Sigmoid", "Linear", "LeNet"],
)
def test_torch_jit_script_fails_at_once_with_one_line_naming_the_way_out(module):
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
