"""Seed every test and pick the device from BP_TORCH_TEST_DEVICE (cpu by default), so the suite runs on CUDA too."""

import os
from pathlib import Path

import pytest
import torch
from helpers import write_idx

import bp_torch

# The tests run many tiny ops (gradcheck perturbs one element at a time): extra intra-op threads only contend,
# above all with pytest-xdist's workers on a 2-core machine.
torch.set_num_threads(int(os.environ.get("BP_TORCH_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["fast", "literal"])
def both_formulas(request):
    """Run the test once with the fast formulations and once with the literal ones (``bp_torch.formulas``).

    The third mode, autotune, runs one of the formulations that tests/test_conv_formulations.py forces one by one.
    """
    with bp_torch.formulas(request.param):
        yield request.param


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("BP_TORCH_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("BP_TORCH_TEST_DEVICE asks for CUDA, but no CUDA device is available")
    return torch.device(name)


MNIST_FILES = [f"{split}-{kind}" for split in ("train", "t10k") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding MNIST/raw in torchvision's layout: $BP_TORCH_DATA, else ../shared/data; or skip."""
    candidates = [os.environ.get("BP_TORCH_DATA"), Path(__file__).resolve().parents[1].parent / "shared" / "data"]
    for root in candidates:
        raw = Path(root or "-") / "MNIST" / "raw"
        if root and all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in MNIST_FILES):
            return Path(root)
    pytest.skip("real MNIST not found: set BP_TORCH_DATA to a folder holding MNIST/raw")


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> Path:
    """A small MNIST: 512 training and 251 test digits, each class a bright bar at its own row, plus noise.

    251 is prime: no world size and no batch size (but 1 and 251) divides the test set.
    """
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 512), ("t10k", 251)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=g)
        for i, k in enumerate(labels.tolist()):
            images[i, 3 + 2 * k : 5 + 2 * k, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root
