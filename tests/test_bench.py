"""Smoke test of benchmarks/bench.py on tiny settings: it runs and writes its JSON and Markdown. Never timed."""

import json
import runpy
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def test_quick_benchmark_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setenv("BP_TORCH_DATA", str(tmp_path / "no-data"))  # the epoch rows must skip with a note
    main = runpy.run_path(str(BENCH))["main"]
    assert main(["--quick", "--out", str(tmp_path), "--repeats", "1"]) == 0
    result = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert {"cpu", "cores", "torch_threads", "torch", "device"} <= set(result["machine"])
    groups = {row["group"] for row in result["rows"]}
    assert groups == {"fwd+bwd", "train step", "memory", "literal", "layer", "model step", "model memory", "epoch"}
    for row in result["rows"]:
        assert {"name", "shape", "manual", "native", "ratio", "unit"} <= set(row)
    names = [row["name"] for row in result["rows"]]
    assert any("conv2d depthwise" in n for n in names) and any("skipped" in n for n in names)
    assert any(n.startswith("conv2d 64->128 3x3") and "[resnet18]" in n for n in names)  # a model's layer
    assert any("resnet18 training step" in n for n in names) and any("literal formulas" in n for n in names)
    assert result["machine"]["load_average"]["before"] and result["machine"]["load_average"]["after"]
    table = (tmp_path / "bench-cpu.md").read_text()
    assert "| benchmark | shape | manual | native | manual/native |" in table
    assert table.count("\n|") == len(result["rows"]) + 2  # header, separator, one line per row


def test_one_part_alone_writes_its_own_table(tmp_path):
    """--parts reruns one part (the whole-model rows, once more Functions land) into a file of its own."""
    main = runpy.run_path(str(BENCH))["main"]
    assert main(["--quick", "--out", str(tmp_path), "--repeats", "1", "--parts", "models", "--only", "resnet18"]) == 0
    result = json.loads((tmp_path / "bench-cpu-models.json").read_text())
    assert [row["group"] for row in result["rows"]] == ["model step", "model memory"]
    assert not (tmp_path / "bench-cpu.json").exists()


def test_models_part_takes_another_image_side(tmp_path):
    """--size: the models part at another side (inception_v3 needs 75 or more)."""
    main = runpy.run_path(str(BENCH))["main"]
    args = ["--quick", "--out", str(tmp_path), "--repeats", "1", "--parts", "models", "--models", "squeezenet1_1"]
    assert main([*args, "--size", "48"]) == 0
    result = json.loads((tmp_path / "bench-cpu-models.json").read_text())
    assert {row["shape"] for row in result["rows"] if row["group"] == "model step"} == {"2x3x48x48"}


def test_formulations_times_each_formulation_on_tiny_shapes(tmp_path, capsys):
    main = runpy.run_path(str(BENCH.with_name("formulations.py")))["main"]
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "formulations-cpu.md").read_text()
    assert "| conv2d 64->128 3x3" in table and "unfold_gemm" in table and "batch_as_channels" in table
    assert "Cost model's choice over the fastest formulation" in capsys.readouterr().out


def test_convert_layers_runs_on_tiny_shapes(capsys):
    main = runpy.run_path(str(BENCH.with_name("convert_layers.py")))["main"]
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm2d x20, MaxPool2d x1, AdaptiveAvgPool2d x1" in out and "manual/native" in out


def test_formulations_in_step_times_each_formulation_in_a_training_step(tmp_path, capsys):
    main = runpy.run_path(str(BENCH.with_name("formulations_in_step.py")))["main"]
    assert main(["--models", "squeezenet1_1", "--steps", "1", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "formulations-in-step-cpu.md").read_text()
    assert "| squeezenet1_1 | 16->64 3x3 15x15 s1 p1 g1 | 2 |" in table  # a layer called twice a step
    assert "output_channels_as_batch" in table and "input_as_kernel" in table and "unfold_gemm" in table
    assert capsys.readouterr().out.startswith("| squeezenet1_1 |")  # the model's sums


def test_gemm_times_both_products_on_two_shapes(capsys):
    main = runpy.run_path(str(BENCH.with_name("gemm.py")))["main"]
    main(["--quick"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "µs" in line]
    assert len(rows) == 2 and "under the threshold" in rows[1]


def test_fused_kernels_times_a_backward_against_torchs_kernel(capsys):
    main = runpy.run_path(str(BENCH.with_name("fused_kernels.py")))["main"]
    main(["--quick"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| GELU")]
    assert len(rows) == 6 and "gelu_backward" in rows[0] and rows[0].endswith("| 1.00 |")


def test_backward_in_step_times_each_function_against_torchs_kernel(capsys):
    main = runpy.run_path(str(BENCH.with_name("backward_in_step.py")))["main"]
    assert main(["--model", "resnet18", "--size", "32", "--batch", "2", "--steps", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "Function" in line]
    names = {row.split("|")[1].strip() for row in rows}
    assert {"Conv2dFunction", "BatchNormFunction", "ReluFunction", "LinearFunction"} <= names


def test_node_times_times_each_backward_node_both_ways(capsys):
    main = runpy.run_path(str(BENCH.with_name("node_times.py")))["main"]
    assert main(["--model", "resnet18", "--size", "32", "--batch", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "Conv2dFunctionBackward" in out and "ConvolutionBackward0" in out
    assert main(["--model", "resnet18", "--size", "32", "--batch", "2", "--steps", "1", "--layer", "BatchNorm2d"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| bn1 ")]
    assert len(rows) == 1
