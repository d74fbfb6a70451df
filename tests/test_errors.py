"""Bad arguments raise the exception type torch raises, with a message naming the argument and the value."""

import pytest
import torch
import torch.nn.functional as F

from bp_torch import functional as BF

x4 = torch.randn(2, 4, 8, 8)
w = torch.randn(6, 4, 3, 3)

# (name, call with module `f`, words our message must contain)
CASES = [
    ("conv input rank", lambda f: f.conv2d(torch.randn(8, 8), w), ["input", "[8, 8]"]),
    ("conv weight rank", lambda f: f.conv2d(x4, torch.randn(6, 4, 3)), ["weight", "[6, 4, 3]"]),
    ("conv channels", lambda f: f.conv2d(x4, torch.randn(6, 3, 3, 3)), ["channels", "[2, 4, 8, 8]"]),
    ("conv groups divide in", lambda f: f.conv2d(x4, torch.randn(6, 3, 3, 3), groups=3), ["groups=3"]),
    ("conv groups divide out", lambda f: f.conv2d(x4, torch.randn(5, 2, 3, 3), groups=2), ["out_channels=5"]),
    ("conv zero groups", lambda f: f.conv2d(x4, w, groups=0), ["groups=0"]),
    ("conv kernel too large", lambda f: f.conv2d(x4, torch.randn(6, 4, 9, 9)), ["kernel", "padded input"]),
    ("conv zero stride", lambda f: f.conv2d(x4, w, stride=0), ["stride=0"]),
    ("conv negative stride", lambda f: f.conv2d(x4, w, stride=(1, -1)), ["stride=(1, -1)"]),
    ("conv zero dilation", lambda f: f.conv2d(x4, w, dilation=0), ["dilation=0"]),
    ("conv negative padding", lambda f: f.conv2d(x4, w, padding=-1), ["padding=-1"]),
    ("conv same strided", lambda f: f.conv2d(x4, w, padding="same", stride=2), ["padding='same'", "stride"]),
    ("conv bad padding string", lambda f: f.conv2d(x4, w, padding="full"), ["'full'"]),
    ("conv dtype", lambda f: f.conv2d(x4, w.double()), ["dtype", "float64"]),
    ("conv bias shape", lambda f: f.conv2d(x4, w, torch.randn(5)), ["bias", "[5]"]),
    ("conv bias dtype", lambda f: f.conv2d(x4, w, torch.randn(6).double()), ["bias", "float64"]),
    ("pool zero kernel", lambda f: f.avg_pool2d(x4, 0), ["kernel_size=0"]),
    ("pool zero stride", lambda f: f.avg_pool2d(x4, 2, stride=0), ["stride=0"]),
    ("pool padding over half", lambda f: f.avg_pool2d(x4, 2, padding=2), ["padding=2", "kernel_size=2"]),
    ("pool negative padding", lambda f: f.avg_pool2d(x4, 3, padding=-1), ["padding=-1"]),
    ("pool kernel too large", lambda f: f.avg_pool2d(x4, 10), ["kernel_size 10", "too small"]),
    ("pool zero divisor", lambda f: f.avg_pool2d(x4, 2, divisor_override=0), ["divisor_override=0"]),
    ("linear shapes", lambda f: f.linear(torch.randn(3, 4), torch.randn(5, 3)), ["in_features", "[3, 4]"]),
    ("linear dtype", lambda f: f.linear(torch.randn(3, 4), torch.randn(5, 4).double()), ["dtype", "float64"]),
    ("linear bias", lambda f: f.linear(torch.randn(3, 4), torch.randn(5, 4), torch.randn(4)), ["bias", "[4]"]),
    ("linear weight rank", lambda f: f.linear(torch.randn(3, 4), torch.randn(1, 5, 4)), ["weight", "[1, 5, 4]"]),
]  # fmt: skip


@pytest.mark.parametrize("call, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_exception_type_as_torch_and_a_message_that_names_the_argument(call, words):
    with pytest.raises(Exception) as native:
        call(F)
    with pytest.raises(native.type) as ours:
        call(BF)
    for word in words:
        assert word in str(ours.value), f"{word!r} not in {str(ours.value)!r}"


def test_pool_rank_error():
    # torch raises IndexError ("Dimension out of range", its size(-3)) for fewer than 3 dimensions: the same type,
    # with a message that says what is wrong; RuntimeError for more than 4, as torch
    with pytest.raises(IndexError, match=r"3D \(unbatched\) or 4D \(batched\) input to avg_pool2d.*\[8, 8\]"):
        BF.avg_pool2d(torch.randn(8, 8), 2)
    with pytest.raises(IndexError):
        F.avg_pool2d(torch.randn(8, 8), 2)
    with pytest.raises(RuntimeError, match=r"\[1, 1, 1, 8, 8\]"):
        BF.avg_pool2d(torch.randn(1, 1, 1, 8, 8), 2)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: BF.conv2d([1.0], w), "input"),
        (lambda: BF.conv2d(x4, w, stride="2"), "stride"),
        (lambda: BF.conv2d(x4, w, groups=1.5), "groups"),
        (lambda: BF.linear(x4, None), "weight"),
        (lambda: BF.sigmoid(0.5), "input"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_argument(call, name):
    with pytest.raises(TypeError, match=name):
        call()


def test_device_mismatch_names_both_devices():
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(RuntimeError, match=f"weight to be on the same device as input.*cpu.*{other}"):
        BF.conv2d(x4, w.to(other))
    # linear leaves devices and dtypes to F.linear (functional.linear says why) and names every tensor's
    with pytest.raises(RuntimeError, match=f"bias of size \\[3\\] \\(torch.float32 on {other}\\)"):
        BF.linear(x4, torch.randn(3, 8), torch.randn(3, device=other))
