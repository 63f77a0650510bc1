r"""The costs, each as one object that keeps its value and its BP1 together, as ``network2.py``'s cost classes do.

A cost object says what backpropagation needs of the cost, so that nothing else in the package branches on which cost
it is:

- :meth:`Cost.activation` (and :meth:`Cost.activation_prime`, :meth:`Cost.output`): the output layer's activation
  :math:`a^L` of :math:`z^L`, the sigmoid for the quadratic cost and the cross-entropy, the softmax for the
  log-likelihood;
- :meth:`Cost.fn` and :meth:`Cost.mean`: its value, :math:`C_x` for each example and :math:`C` for the mini-batch,
  from :math:`a^L - y`, or from :math:`z^L` where that is what keeps it finite (``network2.py``'s ``fn``);
- :meth:`Cost.delta`: BP1, the output error :math:`\delta^L` from :math:`a^L - y` (``network2.py``'s ``delta``);
- :meth:`Cost.y_gradient`: :math:`\partial C_x/\partial y`, for ``Network.cost``'s backward;
- :meth:`Cost.layered_cost`: the same cost through the per-layer autograd Functions of :mod:`torch_manualbp.functional`.

``Network(sizes, cost="cross_entropy")`` looks the name up in :data:`COSTS`; a :class:`Cost` object may be passed
instead. The objects are stateless constants, hashed by identity (a copy is the object itself), so ``torch.compile``
specialises on them as on a string. A new cost is a new subclass here (and its entry in :data:`COSTS`).

Examples::

    >>> cost = COSTS["cross_entropy"]
    >>> z = torch.randn(4, 10); a = cost.activation(z); y = torch.eye(10)[:4]
    >>> cost.fn(z, a - y, y).shape, cost.delta(a - y, a).shape
    (torch.Size([4]), torch.Size([4, 10]))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .equations import (
    a_minus_y,
    cross_entropy_costs,
    log_likelihood_costs,
    quadratic_costs,
    quadratic_mean,
    sigmoid_delta,
    sigmoid_prime,
    softmax,
    weighted_input,
)
from .functional import quadratic_cost, sigmoid_cross_entropy, softmax_log_likelihood

__all__ = ["Cost", "Quadratic", "CrossEntropy", "LogLikelihood", "COSTS", "get_cost"]


class Cost:
    r"""A cost function :math:`C = \frac1n \sum_x C_x` and what backpropagation needs of it; subclass to add one.

    The output layer is the cost's: :meth:`activation` computes :math:`a^L` from :math:`z^L` (the sigmoid unless a
    subclass says otherwise, as a softmax cost would), and :meth:`activation_prime` is the diagonal of
    :math:`\partial a^L/\partial z^L` that ``record_errors()`` shows as the output layer's :math:`\sigma'(z^L)`.
    """

    #: the name ``Network(sizes, cost=...)`` and ``Network.cost_name`` use
    name = ""

    #: :math:`a^L = \sigma(z^L)`, the output layer's activation of ``z``, :math:`(N, H_L)`; ``torch.sigmoid`` itself,
    #: not a method around it, since every step calls it
    activation = staticmethod(torch.sigmoid)

    def activation_prime(self, a: Tensor) -> Tensor:
        r""":math:`\sigma'(z^L) = a^L(1 - a^L)`, from the output activation."""
        return sigmoid_prime(a)

    def fn(self, z: Tensor, output_minus_y: Tensor, y: Tensor) -> Tensor:
        r"""The cost :math:`C_x` of each example, :math:`(N)`, from the output layer's :math:`z^L`, :math:`a^L - y`
        (which BP1 needs too, so every caller has it) and the desired output ``y``, floats shaped like :math:`a^L`."""
        raise NotImplementedError

    def mean(self, z: Tensor, output_minus_y: Tensor, y: Tensor) -> Tensor:
        r"""The mini-batch's cost :math:`C = \frac1n \sum_x C_x`, a scalar, from what :meth:`fn` takes."""
        return self.fn(z, output_minus_y, y).mean()

    def delta(self, output_minus_y: Tensor, a: Tensor) -> Tensor:
        r"""(BP1) The output error :math:`\delta^L` from :math:`a^L - y` (each row scaled by its example's share of
        the cost, 1/n for the mean) and :math:`a^L`."""
        raise NotImplementedError

    def y_gradient(self, z: Tensor, a: Tensor, y: Tensor) -> Tensor:
        r""":math:`\partial C_x/\partial y`, shaped like ``y``: what ``Network.cost`` hands back for the targets."""
        raise NotImplementedError

    def output(self, a_prev: Tensor, layer: nn.Module) -> Tensor:
        r"""The output layer's :math:`a^L` through its autograd Function (``Network.forward``), from its input."""
        return layer(a_prev)

    def layered_cost(self, a_prev: Tensor, layer: nn.Module, y: Tensor) -> Tensor:
        r"""The mean cost of the output layer ``layer`` on its input :math:`a^{L-1}` through the per-layer
        Functions of :mod:`torch_manualbp.functional` (``Network.layered_cost``); ``y`` floats or labels."""
        raise NotImplementedError

    def __copy__(self) -> Cost:  # a stateless constant: copying a Network keeps its cost object
        return self

    def __deepcopy__(self, memo) -> Cost:
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Quadratic(Cost):
    r"""Chapter 2's quadratic cost, :math:`C_x = \tfrac12 \lVert y(x) - a^L(x) \rVert^2`, whose BP1 is
    :math:`\delta^L = (a^L - y) \odot \sigma'(z^L)`: a saturated output (:math:`\sigma'(z^L) \approx 0`) learns
    slowly."""

    name = "quadratic"

    def fn(self, z: Tensor, output_minus_y: Tensor, y: Tensor) -> Tensor:
        return quadratic_costs(output_minus_y)  # C_x = ½‖y(x) − aᴸ(x)‖², from aᴸ − y

    def mean(self, z: Tensor, output_minus_y: Tensor, y: Tensor) -> Tensor:
        return quadratic_mean(output_minus_y)  # C = 1/(2n) Σ_x ‖y(x) − aᴸ(x)‖², one op fewer than fn's mean

    def delta(self, output_minus_y: Tensor, a: Tensor) -> Tensor:
        return sigmoid_delta(output_minus_y, a)  # (BP1) δᴸ = (aᴸ − y) ⊙ σ'(zᴸ)

    def y_gradient(self, z: Tensor, a: Tensor, y: Tensor) -> Tensor:
        return -a_minus_y(a, y)  # ∂C_x/∂y = −(aᴸ − y)

    def layered_cost(self, a_prev: Tensor, layer: nn.Module, y: Tensor) -> Tensor:
        return quadratic_cost(layer(a_prev), y)


class CrossEntropy(Cost):
    r"""Chapter 3's cross-entropy, :math:`C_x = -\sum_j [y_j \ln a^L_j + (1 - y_j) \ln(1 - a^L_j)]`, whose BP1 is
    :math:`\delta^L = a^L - y`: its :math:`\partial C/\partial a^L = (a^L - y)/(a^L(1 - a^L))` cancels
    :math:`\sigma'(z^L) = a^L(1 - a^L)`, so a saturated, wrong output still learns. Written out, the cancellation
    also keeps a saturated output finite (as two factors it is :math:`\infty \cdot 0` = NaN once :math:`a^L` rounds
    to 0 or 1), and the value is computed from :math:`z^L` for the same reason."""

    name = "cross_entropy"

    def fn(self, z: Tensor, output_minus_y: Tensor, y: Tensor) -> Tensor:
        return cross_entropy_costs(z, y)  # C_x = Σ_j [softplus(zᴸ_j) − y_j zᴸ_j], from zᴸ: finite when aᴸ saturates

    def delta(self, output_minus_y: Tensor, a: Tensor) -> Tensor:
        return output_minus_y  # (BP1) δᴸ = aᴸ − y, σ'(zᴸ) cancelled

    def y_gradient(self, z: Tensor, a: Tensor, y: Tensor) -> Tensor:
        return -z  # ∂C_x/∂y_j = −zᴸ_j

    def layered_cost(self, a_prev: Tensor, layer: nn.Module, y: Tensor) -> Tensor:
        # the output layer and the cost as one node, whose backward starts at δᴸ = aᴸ − y
        return sigmoid_cross_entropy(a_prev, layer.weight, layer.bias, y)


class LogLikelihood(Cost):
    r"""Chapter 3's softmax output layer with the log-likelihood cost, :math:`a^L_j = e^{z^L_j} / \sum_k e^{z^L_k}`
    and :math:`C_x = -\ln a^L_{y(x)}`, whose BP1 is :math:`\delta^L = a^L - y` (one of the chapter's problems:
    :math:`\partial C_x/\partial a^L_j = -y_j/a^L_j` times the softmax's
    :math:`\partial a^L_j/\partial z^L_k = a^L_j(1[j=k] - a^L_k)`, summed over j). The value is computed from
    :math:`z^L` through ``logsumexp``, finite however saturated the softmax.

    The softmax's :math:`\partial a^L/\partial z^L` is not diagonal, so no :math:`\sigma'(z^L)` multiplies
    anything here; what ``record_errors()`` is handed as the output layer's ":math:`\sigma'(z^L)`" is the Jacobian's
    diagonal, :math:`a^L_j(1 - a^L_j)` (:meth:`Cost.activation_prime`, the same expression as the sigmoid's).
    """

    name = "log_likelihood"

    #: :math:`a^L = \operatorname{softmax}(z^L)` over each row
    activation = staticmethod(softmax)

    def fn(self, z: Tensor, output_minus_y: Tensor, y: Tensor) -> Tensor:
        return log_likelihood_costs(z, y)  # C_x = ln Σ_k e^{zᴸ_k} − Σ_j y_j zᴸ_j = −ln aᴸ_{y(x)}, from zᴸ

    def delta(self, output_minus_y: Tensor, a: Tensor) -> Tensor:
        return output_minus_y  # (BP1) δᴸ = aᴸ − y

    def y_gradient(self, z: Tensor, a: Tensor, y: Tensor) -> Tensor:
        return -z  # ∂C_x/∂y_j = −zᴸ_j

    def output(self, a_prev: Tensor, layer: nn.Module) -> Tensor:
        # the softmax of the output layer's zᴸ by torch's own ops: predictions need aᴸ, the training paths never
        # differentiate it (they start from δᴸ = aᴸ − y; see softmax_log_likelihood for the per-layer form)
        return softmax(weighted_input(a_prev, layer.weight, layer.bias))

    def layered_cost(self, a_prev: Tensor, layer: nn.Module, y: Tensor) -> Tensor:
        # the softmax output layer and the cost as one node, whose backward starts at δᴸ = aᴸ − y
        return softmax_log_likelihood(a_prev, layer.weight, layer.bias, y)


#: Every cost by its name: ``Network(sizes, cost=name)``.
COSTS: dict[str, Cost] = {cost.name: cost for cost in (Quadratic(), CrossEntropy(), LogLikelihood())}


def get_cost(cost: str | Cost) -> Cost:
    """The :class:`Cost` named ``cost`` (one of :data:`COSTS`), or ``cost`` itself if it is one.

    Raises:
        TypeError: ``cost`` is neither a name nor a :class:`Cost`.
        ValueError: no cost has that name.
    """
    if isinstance(cost, Cost):
        return cost
    if not isinstance(cost, str):
        raise TypeError(f"cost must be the name of a cost, one of {tuple(COSTS)}, or a Cost, got {type(cost).__name__}")
    try:
        return COSTS[cost]
    except KeyError:
        raise ValueError(f"cost must be one of {tuple(COSTS)}, got {cost!r}") from None
