"""bp_torch: backpropagation derived by hand, shipped as real PyTorch.

The library depends on torch alone. Layers, each importing only from those above it in this list:
``_arguments``, ``_formulas``, ``_function``, ``_conv`` -> ``autograd`` (the Functions) -> ``functional`` -> ``nn``
-> ``models``; beside them ``dense`` (a convolution as its matrix W̃), ``check`` and ``audit`` (which nodes of a
backward graph are hand-derived). The training application,
``bp_torch.train``, sits on top and needs the ``train`` extra; nothing in the library imports it.
"""

from bp_torch import autograd, functional, nn
from bp_torch._formulas import formulas, get_formulas, set_formulas
from bp_torch.audit import audit  # bp_torch.audit(loss); the module's other names: from bp_torch.audit import ...
from bp_torch.routing import routed

__all__ = ["autograd", "functional", "nn", "formulas", "get_formulas", "set_formulas", "audit", "routed"]
__version__ = "0.1.0"
