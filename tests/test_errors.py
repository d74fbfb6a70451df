"""Bad arguments raise the exception type torch raises, with a message naming the argument and the value."""

import pytest
import torch
import torch.nn.functional as F

from bp_torch import functional as BF

x4 = torch.randn(2, 4, 8, 8)
w = torch.randn(6, 4, 3, 3)
logits, classes = torch.randn(4, 5), torch.tensor([0, 4, 2, 1])

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
    # beyond the notes: torch's own checks, raised before or in the Function's forward
    ("dropout p", lambda f: f.dropout(x4, 1.5), ["1.5"]),
    ("dropout negative p", lambda f: f.dropout(x4, -0.1), ["-0.1"]),
    ("relu complex", lambda f: f.relu(torch.randn(3, dtype=torch.cfloat)), ["complex"]),
    ("ce reduction", lambda f: f.cross_entropy(logits, classes, reduction="avg"), ["avg"]),
    ("ce smoothing", lambda f: f.cross_entropy(logits, classes, label_smoothing=1.5), ["label_smoothing", "1.5"]),
    ("ce weight size", lambda f: f.cross_entropy(logits, classes, torch.ones(3)), ["weight", "[3]"]),
    ("ce target dtype", lambda f: f.cross_entropy(logits, classes.int()), ["target", "Int"]),
    ("ce batch sizes", lambda f: f.cross_entropy(logits, classes[:3]), ["batch_size", "(4)", "(3)"]),
    ("ce class out of range", lambda f: f.cross_entropy(logits, classes + 5), ["Target", "out of bounds"]),
    ("ce probabilities ignore_index", lambda f: f.cross_entropy(logits, logits.softmax(1), ignore_index=1),
     ["ignore_index"]),
    ("ce weight requires grad", lambda f: f.cross_entropy(logits, classes, torch.ones(5, requires_grad=True)),
     ["weight", "requires_grad"]),
    ("nll weight size", lambda f: f.nll_loss(logits, classes, torch.ones(6)), ["weight", "[6]"]),
    ("nll input rank", lambda f: f.nll_loss(torch.randn(()), classes), ["dimensions"]),
    ("mse weight size", lambda f: f.mse_loss(logits, logits, weight=torch.ones(5)), ["Weights"]),
    ("mse shapes", lambda f: f.mse_loss(logits, torch.randn(3, 5)), ["size"]),
    ("mse reduction", lambda f: f.mse_loss(logits, logits, reduction="avg"), ["avg"]),
    ("mse weighted reduction", lambda f: f.mse_loss(logits, logits, reduction="avg", weight=logits), ["avg"]),
    ("softmax dim", lambda f: f.softmax(logits, dim=2), ["Dimension out of range", "2"]),
    ("max pool zero kernel", lambda f: f.max_pool2d(x4, 0, stride=1), ["kernel_size=0"]),
    ("max pool zero stride", lambda f: f.max_pool2d(x4, 2, stride=0), ["stride=0"]),
    ("max pool negative dilation", lambda f: f.max_pool2d(x4, 2, dilation=(1, -1)), ["dilation=(1, -1)"]),
    ("max pool padding over half", lambda f: f.max_pool2d(x4, 3, padding=2), ["padding=2", "kernel_size=3"]),
    ("max pool negative padding", lambda f: f.max_pool2d(x4, 3, padding=-1), ["padding=-1"]),
    ("max pool too small", lambda f: f.max_pool2d(x4, 3, dilation=4), ["dilation 4", "too small"]),
    ("max pool three kernel sizes", lambda f: f.max_pool2d(x4, (2, 2, 2)), ["kernel_size=(2, 2, 2)"]),
    ("max pool rank", lambda f: f.max_pool2d(torch.randn(8, 8), 2), ["3D", "[8, 8]"]),
    ("max pool empty channels", lambda f: f.max_pool2d(torch.randn(2, 0, 8, 8), 2), ["[2, 0, 8, 8]"]),
    ("max pool ceil_mode int", lambda f: f.max_pool2d(x4, 2, ceil_mode=1), ["ceil_mode", "int"]),
    ("max pool kernel float", lambda f: f.max_pool2d(x4, 2.0), ["kernel_size", "float"]),
    ("adaptive negative size", lambda f: f.adaptive_avg_pool2d(x4, -1), ["output_size", "-1"]),
    ("adaptive three sizes", lambda f: f.adaptive_avg_pool2d(x4, (2, 3, 4)), ["output_size=(2, 3, 4)"]),
    ("adaptive size float", lambda f: f.adaptive_avg_pool2d(x4, 2.5), ["output_size", "float"]),
    ("adaptive rank", lambda f: f.adaptive_avg_pool2d(torch.randn(8, 8), 2), ["3D", "[8, 8]"]),
    ("adaptive empty map", lambda f: f.adaptive_avg_pool2d(torch.randn(2, 3, 0, 8), 2), ["[2, 3, 0, 8]"]),
    ("batch norm one value per channel", lambda f: f.batch_norm(torch.randn(1, 4), None, None, training=True),
     ["more than 1 value per channel", "[1, 4]"]),
    ("batch norm eval without stats", lambda f: f.batch_norm(x4, None, None), ["running_mean", "evaluation"]),
    ("batch norm one stat", lambda f: f.batch_norm(x4, None, torch.ones(4), training=True),
     ["running_mean", "running_var"]),
    ("batch norm stat size", lambda f: f.batch_norm(x4, torch.zeros(3), torch.ones(4)), ["running_mean", "4", "[3]"]),
    ("batch norm weight size", lambda f: f.batch_norm(x4, None, None, torch.ones(5), training=True), ["weight", "[5]"]),
    ("batch norm eps zero", lambda f: f.batch_norm(x4, None, None, training=True, eps=0), ["eps", "0"]),
    ("batch norm eps negative", lambda f: f.batch_norm(x4, torch.zeros(4), torch.ones(4), eps=-1), ["eps", "-1"]),
    ("batch norm momentum None", lambda f: f.batch_norm(x4, None, None, training=True, momentum=None),
     ["momentum", "NoneType"]),
    ("batch norm training int", lambda f: f.batch_norm(x4, None, None, training=1), ["training", "int"]),
    ("batch norm stats list", lambda f: f.batch_norm(x4, [0.0] * 4, torch.ones(4)), ["running_mean", "list"]),
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
        (lambda: BF.relu([1.0]), "input"),
        (lambda: BF.tanh(1.0), "input"),
        (lambda: BF.cross_entropy(logits, [0, 1, 2, 3]), "target"),
        (lambda: BF.mse_loss(1.0, logits), "input"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_argument(call, name):
    with pytest.raises(TypeError, match=name):
        call()


def test_device_mismatch_names_both_devices():
    other = "cuda" if torch.cuda.is_available() else "meta"
    if other == "cuda":  # a meta weight beside a CPU input computes, as torch's (test_corners)
        with pytest.raises(RuntimeError, match=f"weight to be on the same device as input.*cpu.*{other}"):
            BF.conv2d(x4, w.to(other))
    # linear leaves devices and dtypes to F.linear (functional.linear says why) and names every tensor's
    with pytest.raises(RuntimeError, match=f"bias of size \\[3\\] \\(torch.float32 on {other}\\)"):
        BF.linear(x4, torch.randn(3, 8), torch.randn(3, device=other))
