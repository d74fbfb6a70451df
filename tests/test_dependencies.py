"""The library needs torch alone: it imports with the training application's dependencies absent, and never
imports the application."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bp_torch

LIBRARY = [
    "bp_torch",
    "bp_torch.functional",
    "bp_torch.nn",
    "bp_torch.models",
    "bp_torch.check",
    "bp_torch.dense",
    "bp_torch.audit",
]
APPLICATION_DEPENDENCIES = ["torchvision", "tensorboard", "tqdm", "matplotlib"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_library_imports_and_works_without_the_training_dependencies():
    # None in sys.modules makes `import torchvision` (and every submodule import) raise ImportError
    result = _run(f"""
        import sys
        for name in {APPLICATION_DEPENDENCIES!r}:
            sys.modules[name] = None
            try:
                __import__(name)
                raise SystemExit(f"the block of {{name}} does not hold")
            except ImportError:
                pass
        for name in {LIBRARY!r}:
            __import__(name)
        import torch
        from bp_torch import nn as bnn
        from bp_torch.models import LeNet
        LeNet()(torch.randn(2, 1, 28, 28)).sum().backward()
        bnn.convert(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))
        assert not any(m.startswith("bp_torch.train") for m in sys.modules), "the library imported the application"
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


PACKAGE = Path(bp_torch.__file__).parent
LIBRARY_FILES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "train" not in p.parts)


def _imports(path: Path) -> set[str]:
    """The modules a file imports, anywhere in it (a function's own imports too), and each name imported from one."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
    return imported


@pytest.mark.parametrize("path", LIBRARY_FILES)
def test_no_library_module_imports_the_application(path):
    assert not [m for m in _imports(PACKAGE / path) if m == "bp_torch.train" or m.startswith("bp_torch.train.")]


# the application's modules, each importing only those before it: no import cycle
APPLICATION = ["data", "distributed", "config", "checkpoint", "signals", "monitor", "loop", "resume", "tensorboard",
               "cli", "torchrun", "__main__"]  # fmt: skip


def test_the_application_imports_only_downward():
    assert sorted(APPLICATION) == sorted(p.stem for p in (PACKAGE / "train").glob("*.py") if p.stem != "__init__")
    for i, name in enumerate(APPLICATION):
        imported = {
            m.split(".")[2] for m in _imports(PACKAGE / "train" / f"{name}.py") if m.startswith("bp_torch.train.")
        }
        assert imported <= set(APPLICATION[:i]), f"bp_torch.train.{name} imports {imported - set(APPLICATION[:i])}"
    assert not {m for m in _imports(PACKAGE / "train" / "data.py") if m.startswith("bp_torch")}  # a torch-only reader


def test_python_dash_m_bp_torch_train_is_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "bp_torch.train", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "--preset" in result.stdout
