r"""Nielsen's ``Network([784, 30, 10])`` as an ``nn.Module``, with chapter 2's algorithm beside it.

``Network.forward`` runs the layers, so ``cost.backward()`` takes the gradients through the
hand-written Functions one node at a time. ``Network.backprop`` is the same algorithm for the whole
network at once, in matrix form over a mini-batch and with no autograd: feedforward, BP1 for the
output error, BP2 down the layers, BP3 and BP4 for the gradients. The two agree to rounding; the
tests check it.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .functional import _check_float_tensor, _check_same_kind, sigmoid_prime, targets_like
from .nn import SigmoidLinear

__all__ = ["Network", "Backprop"]


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
        # Feedforward, keeping every activation: a⁰ = x, then aˡ = σ(zˡ) with zˡ = aˡ⁻¹ Wˡᵀ + bˡ.
        activations = [x]
        for layer in self.layers:
            activations.append(torch.sigmoid(torch.addmm(layer.bias, activations[-1], layer.weight.T)))
        output = activations[-1]  # aᴸ, (N, sizes[-1])
        y = targets_like(output, y)
        n = x.shape[0]
        cost = 0.5 * ((y - output) ** 2).sum(1).mean()  # C = 1/(2n) Σ_x ‖y(x) − aᴸ(x)‖²

        # Layer i (0-based) maps activations[i] to activations[i + 1]; the book's l is i + 1.
        deltas = [None] * len(self.layers)
        deltas[-1] = (output - y) * sigmoid_prime(output)  # (BP1) δᴸ = ∇_a C_x ⊙ σ'(zᴸ)
        for i in reversed(range(len(self.layers) - 1)):
            deltas[i] = (deltas[i + 1] @ self.layers[i + 1].weight) * sigmoid_prime(activations[i + 1])  # (BP2)
        nabla_b = [delta.sum(0) / n for delta in deltas]  # (BP3) ∂C/∂bˡ = (1/n) Σ_x δ^{x,l}
        nabla_w = [delta.T @ a / n for delta, a in zip(deltas, activations[:-1])]  # (BP4) (1/n) Σ_x δ^{x,l} (a^{x,l−1})ᵀ
        return Backprop(nabla_w, nabla_b, deltas, cost)

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

