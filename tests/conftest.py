"""Seed every test and pick the device from BP_TORCH_TEST_DEVICE (cpu by default), so the suite runs on CUDA too."""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("BP_TORCH_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("BP_TORCH_TEST_DEVICE asks for CUDA, but no CUDA device is available")
    return torch.device(name)
