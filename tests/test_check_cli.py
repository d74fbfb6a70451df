"""`python -m bp_torch.check` prints its table and exits 0, and exits 1 when a gradient is wrong."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from bp_torch import check

ROOT = Path(__file__).resolve().parents[1]

# docs/check_table.py writes the command's output into docs/check.md, and compares the two
_spec = importlib.util.spec_from_file_location("check_table", ROOT / "docs" / "check_table.py")
check_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_table)


def test_check_passes_on_this_device(device):
    result = subprocess.run(
        [sys.executable, "-m", "bp_torch.check", "--device", str(device)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for function in ("conv2d", "avg_pool2d", "sigmoid", "linear"):
        assert f"| {function} |" in result.stdout
    assert "all checks passed" in result.stdout
    # docs/check.md's table is this command's output (python docs/check_table.py): the same functions, case counts
    # and verdicts; the errors vary with the machine and its threads
    assert check_table.differences(check_table.PAGE.read_text(), result.stdout) == []


def test_the_page_table_comparison_catches_an_edit():
    page = check_table.PAGE.read_text()
    output = check_table.generated(page)
    assert check_table.differences(page, output) == []
    assert check_table.differences(page.replace("| conv2d | 10 |", "| conv2d | 9 |"), output)
    assert check_table.differences(page.replace("| pass | pass |", "| pass | FAIL |", 1), output)
    assert check_table.differences(page.replace("0.00e+00", "0", 1), output)


class _WrongSigmoid(torch.autograd.Function):
    """σ with a wrong derivative (σ instead of σ(1−σ)): what the check exists to catch."""

    @staticmethod
    def forward(x):
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        return grad_output * out


def test_check_fails_on_a_wrong_gradient(monkeypatch, capsys):
    wrong = check.Case(
        "sigmoid", _WrongSigmoid.apply, torch.sigmoid, lambda d, t: (torch.randn(3, 4, device=d, dtype=t),)
    )
    monkeypatch.setattr(check, "CASES", [wrong])
    assert check.main(["--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "FAILED: sigmoid" in out
