"""The rules that make the backward the real thing, read from the source: no autograd inside a backward, and
every gradient line names its equation."""

import ast
import importlib
import inspect
import pkgutil
import re

import pytest
from torch.autograd import Function

import bp_torch._conv
import bp_torch._function
import bp_torch._torch_layouts
import bp_torch.autograd

MODULES = [
    importlib.import_module(f"bp_torch.autograd.{m.name}") for m in pkgutil.iter_modules(bp_torch.autograd.__path__)
]
SOURCES = {m.__name__: inspect.getsource(m) for m in (*MODULES, bp_torch._conv, bp_torch._function)}  # the backward's
FUNCTIONS = [
    obj
    for module in MODULES
    for obj in vars(module).values()
    if isinstance(obj, type) and issubclass(obj, Function) and obj.__module__ == module.__name__
]
# what would let PyTorch compute a gradient for us
FORBIDDEN = [
    r"torch\.autograd\.grad",
    r"\.backward\(",
    r"torch\.nn\.grad",
    r"torch\.func",
    r"\bfunctorch\b",
    r"aten\.\w*backward",
    r"(?<!save_for)_backward\(",
    r"torch\.ops\.",
]


def _code_only(source: str) -> str:
    """The source without comments and docstrings, so a comment may mention what the code must not call."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            body[0] = ast.Pass()
    return ast.unparse(tree)


@pytest.mark.parametrize("module", SOURCES)
@pytest.mark.parametrize("pattern", FORBIDDEN)
def test_no_autograd_inside_the_derived_backward(pattern, module):
    assert not re.search(pattern, _code_only(SOURCES[module])), f"{module} uses {pattern}"


def test_torchs_layouts_are_read_off_meta_tensors_only():
    """bp_torch._torch_layouts runs torch's autograd to learn where torch puts a gradient, never what it is: every
    tensor it makes is a meta tensor (shapes and strides, no data)."""
    module = _code_only(inspect.getsource(bp_torch._torch_layouts))
    assert len(re.findall(r"torch\.autograd\.grad", module)) == 1  # in torch_grad_strides alone
    code = _code_only(inspect.getsource(bp_torch._torch_layouts.torch_grad_strides))
    made = re.findall(r"torch\.(?:empty\w*|zeros\w*|ones\w*|randn\w*|tensor)\((.*)\)", code)
    assert made and all('device="meta"' in call or "device='meta'" in call for call in made), made
    assert not re.search(r"\.to\(|\.copy_\(|\.cpu\(|\.cuda\(", code)  # no data in or out


def test_the_scan_would_catch_a_violation():
    assert re.search(FORBIDDEN[0], _code_only("def backward(ctx, g):\n    return torch.autograd.grad(y, x, g)\n"))


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_every_function_has_forward_setup_context_and_a_backward_citing_equations(function):
    assert "setup_context" in vars(function), "forward + setup_context style is what torch.func needs"
    backward = inspect.getsource(function.backward)
    # "eq. 51" cites a note, "eq. M2" our own labels (docs/derivation.md)
    assert re.search(r"eq\. [A-Z]?\d+", backward), f"{function.__name__}.backward cites no equation"


def test_all_four_operations_are_functions():
    names = {f.__name__ for f in FUNCTIONS}
    assert {"Conv2dFunction", "AvgPool2dFunction", "SigmoidFunction", "LinearFunction"} <= names
    assert {"MaxPool2dFunction", "AdaptiveAvgPool2dFunction", "BatchNormFunction"} <= names  # beyond the notes


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_every_function_has_a_hand_written_jvp_citing_its_equation(function):
    """Forward mode (torch.func.jvp, jacfwd, hessian, forward_ad) runs the jvp derived in docs/derivation.md."""
    assert "jvp" in vars(function), f"{function.__name__} has no jvp"
    assert re.search(r"eq\. [A-Z]\d+", inspect.getsource(function.jvp)), f"{function.__name__}.jvp cites no equation"
    assert function._direct.jvp is function.jvp  # the direct Function runs the same one
