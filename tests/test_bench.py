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
    assert groups == {"fwd+bwd", "train step", "memory", "epoch"}
    for row in result["rows"]:
        assert {"name", "shape", "manual", "native", "ratio", "unit"} <= set(row)
    names = [row["name"] for row in result["rows"]]
    assert any("conv2d depthwise" in n for n in names) and any("skipped" in n for n in names)
    table = (tmp_path / "bench-cpu.md").read_text()
    assert "| benchmark | shape | manual | native | manual/native |" in table
    assert table.count("\n|") == len(result["rows"]) + 2  # header, separator, one line per row


def test_conv_parts_runs_on_tiny_shapes(capsys):
    main = runpy.run_path(str(BENCH.with_name("conv_parts.py")))["main"]
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "ours dk: per-tap matmuls" in out and "native dk" in out


def test_convert_layers_runs_on_tiny_shapes(capsys):
    main = runpy.run_path(str(BENCH.with_name("convert_layers.py")))["main"]
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm2d x20, MaxPool2d x1, AdaptiveAvgPool2d x1" in out and "manual/native" in out
