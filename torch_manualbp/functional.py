r"""Backpropagation written by hand: the sigmoid layer, the quadratic cost, and the output layer with chapter 3's
cross-entropy cost, as autograd Functions.

Each ``backward`` below is one of the four equations of chapter 2 of Michael Nielsen's
"Neural Networks and Deep Learning", in PyTorch's row layout: a mini-batch of n examples
is n rows, and ``weight`` is ``(out, in)`` like ``nn.Linear``, which is exactly the book's
:math:`w^l_{jk}` (row j: a neuron of this layer, column k: a neuron of the layer below).

.. math::
    z^l = a^{l-1} W^{l\top} + b^l, \qquad a^l = \sigma(z^l), \qquad
    C = \frac{1}{2n} \sum_x \lVert y(x) - a^L(x) \rVert^2

    \text{(BP1)}\ \delta^L = \nabla_a C \odot \sigma'(z^L) \qquad
    \text{(BP2)}\ \delta^l = (\delta^{l+1} W^{l+1}) \odot \sigma'(z^l)

    \text{(BP3)}\ \partial C / \partial b^l = \textstyle\sum_x \delta^l_x \qquad
    \text{(BP4)}\ \partial C / \partial W^l = \delta^{l\top} a^{l-1}

Autograd splits the work between the two Functions: the cost's backward supplies
:math:`\nabla_a C`, and each layer's backward turns the gradient arriving at its output,
:math:`\partial C/\partial a^l`, into :math:`\delta^l` by the factor :math:`\sigma'(z^l)`, which is
BP1 at the output layer and BP2 below it, where :math:`\partial C/\partial a^l = \delta^{l+1} W^{l+1}`
is what the layer above returned for its input.

The cross-entropy cannot be split that way without a NaN: its :math:`\nabla_a C = (a - y)/(a(1 - a))` is
infinite where the output saturates, and the layer's :math:`\sigma'(z) = 0` there. So
:class:`SigmoidCrossEntropyFunction` is the output layer and the cost in one node, computed from :math:`z^L`
(the softplus form), whose backward starts from BP1 as chapter 3 writes it, :math:`\delta^L = a^L - y`.

Both Functions follow PyTorch's "Extending PyTorch" rules: ``forward`` and ``setup_context``
apart, tensors kept only through ``save_for_backward``/``save_for_forward``, ``needs_input_grad``
honoured, a ``backward`` made of differentiable torch operations (so double backward works), a
``jvp`` for forward-mode AD, and ``generate_vmap_rule`` so ``torch.func.vmap`` and ``grad`` work.
"""

from __future__ import annotations

from .conv import ConvPoolFunction, conv_pool
from .cost_functions import (
    REDUCTIONS as REDUCTIONS,
)
from .cost_functions import (
    CrossEntropyCostFunction,
    LogLikelihoodCostFunction,
    QuadraticCostFunction,
    cross_entropy_cost,
    log_likelihood_cost,
    quadratic_cost,
    targets_like,
)
from .equations import sigmoid_delta, sigmoid_prime
from .layer_functions import (
    DropoutFunction,
    FullyConnectedFunction,
    SigmoidLinearFunction,
    dropout,
    fully_connected,
    sigmoid_linear,
)
from .output_functions import (
    SigmoidCrossEntropyFunction,
    SoftmaxLogLikelihoodFunction,
    sigmoid_cross_entropy,
    softmax_log_likelihood,
)

__all__ = [
    "SigmoidLinearFunction",
    "QuadraticCostFunction",
    "SigmoidCrossEntropyFunction",
    "CrossEntropyCostFunction",
    "SoftmaxLogLikelihoodFunction",
    "LogLikelihoodCostFunction",
    "DropoutFunction",
    "sigmoid_linear",
    "quadratic_cost",
    "sigmoid_cross_entropy",
    "cross_entropy_cost",
    "softmax_log_likelihood",
    "log_likelihood_cost",
    "dropout",
    "targets_like",
    "sigmoid_prime",
    "sigmoid_delta",
    "FullyConnectedFunction",
    "fully_connected",
    "ConvPoolFunction",
    "conv_pool",
]
