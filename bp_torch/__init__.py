"""bp_torch: backpropagation derived by hand, shipped as real PyTorch.

The library depends on torch alone. Layers, each importing only from those above it in this list:
``_arguments``, ``_formulas``, ``_function``, ``_conv`` -> ``autograd`` (the Functions) -> ``functional`` -> ``nn``
-> ``models``; beside them ``dense`` (a convolution as its matrix W̃) and ``check``. The training application,
``bp_torch.train``, sits on top and needs the ``train`` extra; nothing in the library imports it.
"""

from bp_torch import autograd, functional, nn
from bp_torch._formulas import formulas, get_formulas, set_formulas

__all__ = ["autograd", "functional", "nn", "formulas", "get_formulas", "set_formulas"]
__version__ = "0.1.0"
