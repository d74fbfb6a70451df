"""Smoke test of benchmarks/vs_biotorch.py where BioTorch is installed (`pip install --no-deps biotorch`): both
parts run on tiny settings, from the same weights, and write their JSON and Markdown. Never timed."""

import json
import runpy
from pathlib import Path

import pytest

pytest.importorskip("biotorch.module.biomodule")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_biotorch.py"


def test_both_libraries_start_from_the_same_weights_and_backprop_agrees():
    script = runpy.run_path(str(SCRIPT))
    import torch
    import torch.nn.functional as F

    base = script["base_model"](0)
    theirs, ours = script["theirs"](base, "backprop"), script["ours"](base, "backprop")
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    grads = [torch.autograd.grad(F.cross_entropy(m(x), y), [p for p in m.parameters() if p.requires_grad])
             for m in (theirs, ours)]  # fmt: skip
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_with_biotorchs_own_b_the_rules_agree(rule):
    """With the same weights and BioTorch's own B (``--same-b``), fa's and dfa's weight gradients are BioTorch's to
    float rounding: where the libraries' test errors differ, the draw of B does, not the rule."""
    script = runpy.run_path(str(SCRIPT))
    import torch
    import torch.nn.functional as F

    base = script["base_model"](0)
    theirs, ours = script["theirs"](base, rule), script["ours"](base, rule)
    script["share_feedback"](theirs, ours, rule)
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8)
    grads = []
    for model, biotorch in ((theirs, True), (ours, False)):
        out = model(x, y, F.cross_entropy) if biotorch and rule == "dfa" else model(x)
        weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        grads.append(torch.autograd.grad(F.cross_entropy(out, y), weights))
    for a, b in zip(*grads):  # float32 sums in other orders: the difference's norm against the gradient's
        assert (a - b).norm() <= 1e-5 * a.norm(), ((a - b).norm() / a.norm()).item()


def test_time_and_accuracy_parts_write_their_tables(tmp_path, mnist_root):
    main = runpy.run_path(str(SCRIPT))["main"]
    common = ["--rules", "fa", "dfa", "--out", str(tmp_path), "--data-dir", str(mnist_root)]
    assert main(["--part", "time", "--reps", "1", "--warmup", "0", *common]) == 0
    timing = json.loads((tmp_path / "biotorch-time.json").read_text())["timing"]
    assert [row["rule"] for row in timing] == ["fa", "dfa"] and all(row["ratio"] > 0 for row in timing)
    args = ["--part", "accuracy", "--epochs", "1", "--train-subset", "128", "--seeds", "0", "--dataset", "mnist"]
    assert main([*args, *common]) == 0
    accuracy = json.loads((tmp_path / "biotorch-accuracy.json").read_text())["accuracy"]
    assert [(r["rule"], r["seed"]) for r in accuracy] == [("fa", 0), ("dfa", 0)]
    assert "| mnist | dfa |" in (tmp_path / "biotorch-accuracy.md").read_text()
