"""`python -m bp_torch.check` prints its table and exits 0, and exits 1 when a gradient is wrong."""

import subprocess
import sys
from pathlib import Path

import torch

from bp_torch import check

ROOT = Path(__file__).resolve().parents[1]


def _rows(text: str) -> list[tuple[str, str]]:
    """(function, cases) of each row of the check's markdown table in ``text``."""
    return [tuple(line.split("|")[1:3]) for line in text.splitlines() if line.startswith("| ") and "| pass" in line]


def test_check_passes_on_this_device(device):
    result = subprocess.run(
        [sys.executable, "-m", "bp_torch.check", "--device", str(device)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for function in ("conv2d", "avg_pool2d", "sigmoid", "linear"):
        assert f"| {function} |" in result.stdout
    assert "all checks passed" in result.stdout
    # README's table is this command's output: the same functions, case by case (the errors vary by machine)
    assert _rows((ROOT / "README.md").read_text()) == _rows(result.stdout)


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
