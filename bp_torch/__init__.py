"""bp_torch: backpropagation derived by hand, shipped as real PyTorch.

Layers, each importing only from those above it in this list:
``autograd`` (the Functions) -> ``functional`` -> ``nn`` -> ``models`` -> ``training``.
"""

from bp_torch import autograd, functional, nn

__all__ = ["autograd", "functional", "nn"]
__version__ = "0.1.0"
