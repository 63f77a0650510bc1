r"""torch_manualbp: backpropagation written by hand, from chapter 2 of Nielsen's
"Neural Networks and Deep Learning", as PyTorch autograd Functions and modules.

- :mod:`torch_manualbp.functional`: the Functions whose ``backward`` is BP1-BP4.
- :mod:`torch_manualbp.nn`: ``SigmoidLinear`` and the cost modules (``QuadraticCost``, ``CrossEntropyCost``,
  ``LogLikelihoodCost``).
- :mod:`torch_manualbp.costs`: the costs as objects, each with its value and its BP1, as ``network2.py`` has them.
- :class:`Network`: the book's ``Network([784, 30, 10])``, with ``backprop`` in matrix form.
- :mod:`torch_manualbp.observe`: ``record_errors()``, to watch the errors δˡ of a normal ``backward()``.

Lightning training lives in :mod:`torch_manualbp.lightning`, which this core never imports.
"""

from . import costs, functional, nn, observe
from .network import Backprop, Gradients, Network

__all__ = ["costs", "functional", "nn", "observe", "Network", "Gradients", "Backprop"]
__version__ = "0.1.0"
