r"""Nielsen's ``Network([784, 30, 10])`` as an ``nn.Module``, with chapter 2's algorithm beside it.

``Network.forward`` runs the layers, so ``quadratic_cost(net(x), y).backward()`` takes the gradients
through the hand-written Functions one node at a time. ``Network.backprop`` is the same algorithm for
the whole network at once, in matrix form over a mini-batch and with no autograd: :func:`feedforward`,
then :func:`backpropagate`: BP1 for the output error, BP2 down the layers, BP3 and BP4 for the gradients.
``Network.cost`` puts that same matrix form behind one autograd node (:class:`NetworkCostFunction`), the
fast path for training. All three agree; the tests check it.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from . import observe
from .functional import (
    QuadraticCostFunction,
    _check_float_tensor,
    _check_same_kind,
    _error,
    _per_example,
    _targets,
    sigmoid_delta,
    sigmoid_prime,
    targets_like,
)
from .nn import SigmoidLinear

__all__ = ["Network", "Backprop", "NetworkCostFunction", "feedforward", "backpropagate"]


class Backprop(NamedTuple):
    r"""What :meth:`Network.backprop` returns; every list has one entry per layer, input side first.

    Attributes:
        nabla_w: :math:`\partial C/\partial W^l`, each shaped like that layer's ``weight``.
        nabla_b: :math:`\partial C/\partial b^l`, each shaped like that layer's ``bias``.
        delta: the errors :math:`\delta^{x,l} = \partial C_x/\partial z^{x,l}` of each example,
            each of shape :math:`(N, H_l)`. They are per example, as in the book, so they do not
            shrink with the batch; the gradients of the mean cost :math:`C` average them over x.
        cost: :math:`C = \frac{1}{2n}\sum_x \lVert y(x) - a^L(x) \rVert^2`, a scalar.
    """

    nabla_w: list[Tensor]
    nabla_b: list[Tensor]
    delta: list[Tensor]
    cost: Tensor


class Network(nn.Module):
    r"""A feedforward network of sigmoid neurons, ``Network([784, 30, 10])`` as in the book.

    Args:
        sizes: the number of neurons in each layer, input layer first. ``[784, 30, 10]`` is 784 input
            pixels, one hidden layer of 30 neurons and 10 output neurons, one per digit.
        init: the initialisation of every layer, ``"scaled"`` (default) or ``"normal"``; see
            :class:`~torch_manualbp.nn.SigmoidLinear`.
        device, dtype: where and how to allocate the parameters.

    Shape:
        - Input: :math:`(*, \text{sizes}[0])`.
        - Output: :math:`(*, \text{sizes}[-1])`, the output activations :math:`a^L`.

    Examples::

        >>> net = Network([784, 30, 10])
        >>> x, labels = torch.rand(10, 784), torch.randint(0, 10, (10,))
        >>> result = net.backprop(x, labels)  # BP1-BP4 in matrix form, no autograd
        >>> [g.shape for g in result.nabla_w]
        [torch.Size([30, 784]), torch.Size([10, 30])]
    """

    def __init__(self, sizes: Sequence[int], init: str = "scaled", device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
            raise ValueError(f"sizes must be a list of at least two layer sizes, e.g. [784, 30, 10], got {sizes!r}")
        self.sizes = list(sizes)
        self.layers = nn.ModuleList(
            SigmoidLinear(n_in, n_out, init=init, device=device, dtype=dtype)
            for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:])
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.no_grad()
    def backprop(self, x: Tensor, y: Tensor) -> Backprop:
        r"""The gradient of the mean quadratic cost on a mini-batch, by BP1-BP4 in matrix form.

        This is ``network.py``'s ``backprop`` for all examples at once: each example is a row, so
        the book's column vectors :math:`a^l` become rows and :math:`w^l a^{l-1}` becomes
        :math:`a^{l-1} W^{l\top}`. No autograd is involved.

        Args:
            x: a mini-batch of inputs, one example per row.
            y: the desired outputs: floats of shape :math:`(N, \text{sizes}[-1])` or integer
                class labels of shape :math:`(N)`.

        Shape:
            - x: :math:`(N, \text{sizes}[0])`.
            - y: :math:`(N, \text{sizes}[-1])` or :math:`(N)`.

        Returns:
            :class:`Backprop`: ``nabla_w``, ``nabla_b``, ``delta`` per layer, and the ``cost``.
        """
        self._check_batch(x)
        weights = [layer.weight for layer in self.layers]
        activations = feedforward(x, weights, [layer.bias for layer in self.layers])
        output = activations[-1]  # aᴸ, (N, sizes[-1])
        y = targets_like(output, y)
        n = x.shape[0]
        cost = QuadraticCostFunction.forward(output, y, "mean")  # C = 1/(2n) Σ_x ‖y(x) − aᴸ(x)‖²
        # ∇_a C_x = aᴸ − y for each example: the rows of δ are the book's per-example δ^{x,l}
        sum_w, sum_b, deltas = backpropagate(weights, activations, output - y)
        nabla_w = [s / n for s in sum_w]  # ∂C/∂Wˡ = (1/n) Σ_x δ^{x,l} (a^{x,l−1})ᵀ
        nabla_b = [s / n for s in sum_b]  # ∂C/∂bˡ = (1/n) Σ_x δ^{x,l}
        return Backprop(nabla_w, nabla_b, deltas, cost)

    def cost(self, x: Tensor, y: Tensor) -> Tensor:
        r"""The mean quadratic cost of a mini-batch as one autograd node: the fast path for training.

        ``network.cost(x, y)`` equals ``quadratic_cost(network(x), y)``, with the same gradients, but
        its backward is :class:`NetworkCostFunction`'s: BP1-BP4 over all layers at once, in matrix form
        (:func:`backpropagate`, as in :meth:`backprop`), instead of one node per layer. Fewer nodes
        means less per-node overhead, which dominates at the book's mini-batches of 10.

        It gives up what only the per-layer Functions offer: double backward, ``torch.func`` transforms,
        forward-mode AD and autocast (it computes in the parameters' dtype).

        Shape:
            - x: :math:`(N, \text{sizes}[0])`.
            - y: :math:`(N, \text{sizes}[-1])` floats or :math:`(N)` integer labels.
            - Output: a scalar.
        """
        self._check_batch(x)
        if torch.is_autocast_enabled(x.device.type):
            raise RuntimeError("Network.cost computes in the parameters' dtype; under autocast use quadratic_cost(network(x), y)")
        y = _targets(y, (x.shape[0], self.sizes[-1]), x)
        params = [p for layer in self.layers for p in (layer.weight, layer.bias)]
        return NetworkCostFunction.apply(x, y, *params)

    def _check_batch(self, x: Tensor) -> None:
        _check_float_tensor("x", x)
        if x.ndim != 2 or x.shape[1] != self.sizes[0] or x.shape[0] == 0:
            raise ValueError(
                f"x must be a non-empty mini-batch of shape (N, {self.sizes[0]}), got shape {tuple(x.shape)}"
            )
        weight = self.layers[0].weight
        _check_same_kind("x", x, "the network's weights", weight)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}"


def feedforward(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> list[Tensor]:
    r"""Every activation of the network, input first: :math:`a^0 = x`, :math:`a^l = \sigma(a^{l-1} W^{l\top} + b^l)`."""
    activations = [x]
    for weight, bias in zip(weights, biases):
        activations.append(torch.sigmoid(torch.addmm(bias, activations[-1], weight.T)))
    return activations


def backpropagate(
    weights: Sequence[Tensor], activations: Sequence[Tensor], error: Tensor
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    r"""BP1-BP4 over all layers, from the gradient of the cost with respect to the output activations.

    Args:
        weights: :math:`W^1 \dots W^L`.
        activations: :math:`a^0 = x, a^1 \dots a^L`, as :func:`feedforward` returns them.
        error: :math:`\partial C/\partial a^L`, one row per example.

    Returns:
        ``(sum_w, sum_b, deltas)``: per layer :math:`\delta^{l\top} a^{l-1}` and :math:`\sum_x \delta^l_x`,
        which are :math:`\partial C/\partial W^l` and :math:`\partial C/\partial b^l` when the rows of ``error``
        are the examples' shares of :math:`C`, and the errors :math:`\delta^l` themselves.
    """
    # Layer i (0-based) maps activations[i] to activations[i + 1]; the book's l is i + 1.
    deltas = [None] * len(weights)
    deltas[-1] = sigmoid_delta(error, activations[-1])  # (BP1) δᴸ = ∇_a C ⊙ σ'(zᴸ)
    for i in reversed(range(len(weights) - 1)):
        deltas[i] = sigmoid_delta(deltas[i + 1] @ weights[i + 1], activations[i + 1])  # (BP2) (δˡ⁺¹ Wˡ⁺¹) ⊙ σ'(zˡ)
    sum_b = [delta.sum(0) for delta in deltas]  # (BP3) Σ_x δ^{x,l}
    sum_w = [delta.T @ a for delta, a in zip(deltas, activations[:-1])]  # (BP4) Σ_x δ^{x,l} (a^{x,l−1})ᵀ
    return sum_w, sum_b, deltas


class NetworkCostFunction(torch.autograd.Function):
    r"""A whole ``Network`` and its mean quadratic cost as one autograd node (see :meth:`Network.cost`).

    ``forward(x, y, W¹, b¹, …, Wᴸ, bᴸ)`` runs :func:`feedforward` and returns
    :math:`C = \frac{1}{2n}\sum_x \lVert y(x) - a^L(x) \rVert^2`; ``backward`` runs :func:`backpropagate` once.
    It saves the activations it needs, as autograd would, and no other intermediate. Its backward is not
    itself differentiable, and says so; the per-layer Functions' are.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, *params: Tensor) -> Tensor:
        weights, biases = params[0::2], params[1::2]
        activations = feedforward(x, weights, biases)
        cost = QuadraticCostFunction.forward(activations[-1], y, "mean")  # C = 1/(2n) Σ_x ‖y(x) − aᴸ(x)‖²
        ctx.save_for_backward(y, *weights, *activations)
        ctx.depth = len(weights)
        return cost

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        if torch.is_grad_enabled():  # backward(create_graph=True): the saved activations are not in any graph
            raise RuntimeError(
                "Network.cost's backward is not differentiable (create_graph=True); "
                "for higher derivatives use quadratic_cost(network(x), y)"
            )
        y, *saved = ctx.saved_tensors
        weights, activations = saved[: ctx.depth], saved[ctx.depth :]
        output = activations[-1]
        error = _error(output, y) * _per_example(grad_cost, output, "mean")  # ∇_a C = (aᴸ − y)/n
        sum_w, sum_b, deltas = backpropagate(weights, activations, error)
        if observe._ACTIVE:  # inside torch_manualbp.observe.record_errors()
            for weight, delta, a_in, a in zip(weights, deltas, activations[:-1], activations[1:]):
                observe._notify(weight, delta, sigmoid_prime(a), a_in)
        grad_x = deltas[0] @ weights[0] if ctx.needs_input_grad[0] else None  # the (δ¹ W¹) of (BP2), for x
        grad_y = -error if ctx.needs_input_grad[1] else None
        return (grad_x, grad_y, *[g for pair in zip(sum_w, sum_b) for g in pair])
