"""Seed every test and pick the device from BP_TORCH_TEST_DEVICE (cpu by default), so the suite runs on CUDA too."""

import os
from pathlib import Path

import pytest
import torch

# The tests run many tiny ops (gradcheck perturbs one element at a time): extra intra-op threads only contend,
# above all with pytest-xdist's workers on a 2-core machine.
torch.set_num_threads(int(os.environ.get("BP_TORCH_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("BP_TORCH_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("BP_TORCH_TEST_DEVICE asks for CUDA, but no CUDA device is available")
    return torch.device(name)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding MNIST/raw in torchvision's layout: $BP_TORCH_DATA, else ../shared/data; or skip."""
    candidates = [os.environ.get("BP_TORCH_DATA"), Path(__file__).resolve().parents[1].parent / "shared" / "data"]
    for root in candidates:
        if root and (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return Path(root)
    pytest.skip("real MNIST not found: set BP_TORCH_DATA to a folder holding MNIST/raw")
