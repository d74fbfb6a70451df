"""The rules that make the backward the real thing, read from the source: no autograd inside a backward, and
every gradient line names its equation."""

import ast
import inspect
import re

import pytest
from torch.autograd import Function

import bp_torch._conv as conv_module
import bp_torch.autograd as autograd_module

SOURCE = inspect.getsource(autograd_module)
SOURCES = {m.__name__: inspect.getsource(m) for m in (autograd_module, conv_module)}  # the backward's code
FUNCTIONS = [
    obj
    for obj in vars(autograd_module).values()
    if isinstance(obj, type) and issubclass(obj, Function) and obj.__module__ == autograd_module.__name__
]
# what would let PyTorch compute a gradient for us
FORBIDDEN = [r"torch\.autograd\.grad", r"\.backward\(", r"torch\.nn\.grad", r"torch\.func", r"\bfunctorch\b",
             r"aten\.\w*backward", r"(?<!save_for)_backward\(", r"torch\.ops\."]  # fmt: skip


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


def test_the_scan_would_catch_a_violation():
    assert re.search(FORBIDDEN[0], _code_only("def backward(ctx, g):\n    return torch.autograd.grad(y, x, g)\n"))


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_every_function_has_forward_setup_context_and_a_backward_citing_equations(function):
    assert "setup_context" in vars(function), "forward + setup_context style is what torch.func needs"
    backward = inspect.getsource(function.backward)
    helpers = re.findall(r"\b(conv2d_\w+_grad|avg_pool2d_\w+)\(", backward)
    cited = backward + "".join(inspect.getsource(getattr(autograd_module, h)) for h in helpers)
    assert re.search(r"eq\. \d+", cited), f"{function.__name__}.backward cites no equation"


def test_all_four_operations_are_functions():
    names = {f.__name__ for f in FUNCTIONS}
    assert {"Conv2dFunction", "AvgPool2dFunction", "SigmoidFunction", "LinearFunction"} <= names
