r"""torch_manualbp: backpropagation written by hand, from chapter 2 of Nielsen's
"Neural Networks and Deep Learning", as PyTorch autograd Functions and modules.

- :mod:`torch_manualbp.functional`: the Functions whose ``backward`` is BP1-BP4.
- :mod:`torch_manualbp.nn`: ``SigmoidLinear`` and the cost modules (``QuadraticCost``, ``CrossEntropyCost``,
  ``LogLikelihoodCost``).
- :mod:`torch_manualbp.costs`: the costs as objects, each with its value and its BP1, as ``network2.py`` has them.
- :class:`Network`: the book's ``Network([784, 30, 10])``, with ``backprop`` in matrix form.
- :class:`MiniBatchSGD`: the training engine, the book's mini-batch SGD on a ``Network`` or a ``Population`` without
  autograd, one block of mini-batches per call (:mod:`torch_manualbp.sgd`).
- :class:`StepRule`: what a step does besides η (cost, regularisation, dropout), checked once
  (:mod:`torch_manualbp.step`, with ``update_mini_batch``, the step itself).
- :class:`Population`: K networks of the same sizes trained on the same mini-batches at once
  (:mod:`torch_manualbp.population`).
- :mod:`torch_manualbp.observe`: ``record_errors()``, to watch the errors δˡ of a normal ``backward()``.

Lightning training lives in :mod:`torch_manualbp.lightning`, which this core never imports.

To run (one epoch of chapter 1, then three learning rates at once)::

    from torch_manualbp import MiniBatchSGD, Network, Population

    costs = MiniBatchSGD(Network([784, 30, 10]), mini_batch_size=10).run(x_train, y_train, eta=3.0)  # (5000,)
    pop = Population([Network([784, 30, 10]) for _ in range(3)])
    member_costs = MiniBatchSGD(pop, mini_batch_size=10).run(x_train, y_train, eta=[0.025, 0.25, 2.5])  # (5000, 3)
"""

from . import costs, functional, nn, observe
from .network import Backprop, Gradients, Network
from .population import Population
from .sgd import MiniBatchSGD
from .step import StepRule

__all__ = [
    "costs",
    "functional",
    "nn",
    "observe",
    "Network",
    "Gradients",
    "Backprop",
    "MiniBatchSGD",
    "Population",
    "StepRule",
]
__version__ = "0.1.0"
