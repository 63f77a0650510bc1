r"""The two references everything hand-written here is checked against and timed against.

1. **Plain autograd** (:func:`autograd_output`, :func:`autograd_quadratic_cost`, :func:`autograd_cost`): the same
   network and costs in ordinary torch ops, :math:`a = \sigma(\text{linear}(a, W, b))` layer by layer, for
   ``torch.autograd`` to differentiate. None of the hand-written code (``equations``, the Functions, ``Network``)
   is used, so agreeing with it is evidence. The tests, ``GradientAudit`` and the benchmarks' autograd contenders
   use it.
2. **The book's algorithm** (:class:`BookNetwork`): Nielsen's ``network.py`` structure in numpy, float64, one
   example at a time, as column vectors: ``feedforward``, ``backprop`` of a single example (BP1-BP4), and
   ``update_mini_batch`` summing the per-example nablas over the mini-batch before one step
   ``w -> w - (eta / m) * sum_x nabla_w_x``. Nothing is vectorised over examples, on purpose: this is the
   reference point the batched PyTorch code is measured against: the tests compare the hand-written backprop with
   it, and the benchmarks time it. Written after the structure the book describes; the weights can be copied from
   a ``torch_manualbp.Network`` so that both start from the same point.

This module imports no other module of the package; of the package, only ``lightning.callbacks`` imports it.

To run (a toy check)::

    python -m torch_manualbp.testing.reference
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["autograd_output", "autograd_quadratic_cost", "autograd_cost", "BookNetwork", "sigmoid", "sigmoid_prime"]


# --- 1. plain autograd ----------------------------------------------------------------------------------------------


def _pairs(params: Iterable[Tensor]) -> list[tuple[Tensor, Tensor]]:
    params = list(params)
    if not params or len(params) % 2:
        raise ValueError(f"params must be W¹, b¹, W², b², ... (an even, non-zero count), got {len(params)} tensors")
    return list(zip(params[0::2], params[1::2]))


def autograd_output(params: Iterable[Tensor], x: Tensor) -> Tensor:
    r"""The network's output :math:`a^L` in plain ops, :math:`a = \sigma(W a + b)` layer after layer.

    Args:
        params: W¹, b¹, W², b², ..., as ``Network.parameters()`` yields them.
        x: the input.

    Shape:
        - x: :math:`(*, \text{in\_features})`.
        - Output: :math:`(*, \text{out\_features of the last layer})`.
    """
    a = x
    for weight, bias in _pairs(params):
        a = torch.sigmoid(F.linear(a, weight, bias))
    return a


def autograd_quadratic_cost(a: Tensor, y: Tensor) -> Tensor:
    r"""The book's quadratic cost :math:`C = \frac1n \sum_x \frac12 \lVert y(x) - a^L(x)\rVert^2` in plain ops.

    Shape:
        - a, y: :math:`(N, C)` (``y`` one-hot or real), or :math:`(C)` for one example. Output: scalar.
    """
    return 0.5 * ((a - y) ** 2).sum(-1).mean()


def autograd_cost(params: Iterable[Tensor], x: Tensor, y: Tensor, cost: str = "quadratic") -> Tensor:
    r"""A whole network's mean cost in plain ops, ``cost`` as ``Network``'s: ``"quadratic"`` or ``"cross_entropy"``.

    The cross-entropy :math:`-\frac1n \sum_x \sum_j [y_j \ln a^L_j + (1 - y_j) \ln(1 - a^L_j)]` is
    ``binary_cross_entropy_with_logits`` of :math:`z^L`, summed over outputs and averaged over examples.

    Shape:
        - x: :math:`(N, \text{in\_features})`; y: :math:`(N, \text{out\_features})`, one-hot or real.
        - Output: scalar.
    """
    if cost == "quadratic":
        return autograd_quadratic_cost(autograd_output(params, x), y)
    if cost != "cross_entropy":
        raise ValueError(f"cost must be 'quadratic' or 'cross_entropy', got {cost!r}")
    *hidden, (weight, bias) = _pairs(params)
    a = autograd_output([p for pair in hidden for p in pair], x) if hidden else x
    z = F.linear(a, weight, bias)
    return F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1).mean()


# --- 2. the book's algorithm in numpy -------------------------------------------------------------------------------


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp(-z) overflows to inf for z < -709 and 1/(1+inf) = 0 is then right; silence the warning only
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z: np.ndarray) -> np.ndarray:
    s = sigmoid(z)
    return s * (1.0 - s)


class BookNetwork:
    """A feedforward sigmoid network trained by per-example backprop, like the book's ``Network``.

    Args:
        sizes: neurons per layer, input first, e.g. ``[784, 30, 10]``.
        seed: seed for the book's N(0, 1) initialisation, used when ``weights``/``biases`` are not given.
        weights: ``(out, in)`` arrays, one per layer (the book's ``w[j, k]``), copied as float64.
        biases: ``(out,)`` or ``(out, 1)`` arrays, one per layer, stored as float64 columns.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        seed: int = 0,
        weights: Sequence[np.ndarray] | None = None,
        biases: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.num_layers = len(sizes)
        self.sizes = list(sizes)
        rng = np.random.default_rng(seed)
        if biases is None:
            biases = [rng.standard_normal((n, 1)) for n in sizes[1:]]
        if weights is None:
            weights = [rng.standard_normal((n_out, n_in)) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        self.biases = [np.asarray(b, dtype=np.float64).reshape(-1, 1).copy() for b in biases]
        self.weights = [np.asarray(w, dtype=np.float64).copy() for w in weights]

    def feedforward(self, a: np.ndarray) -> np.ndarray:
        """The network's output for one input column ``a`` of shape ``(sizes[0], 1)``."""
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(w @ a + b)
        return a

    def train_epoch(self, mini_batches: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], eta: float) -> None:
        """One epoch of the book's SGD over mini-batches already cut from a shuffled training set."""
        for mini_batch in mini_batches:
            self.update_mini_batch(mini_batch, eta)

    def update_mini_batch(self, mini_batch: Sequence[tuple[np.ndarray, np.ndarray]], eta: float) -> None:
        """One gradient step: sum each example's nablas, then ``w -= (eta / m) * sum``."""
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        step = eta / len(mini_batch)
        self.weights = [w - step * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - step * nb for b, nb in zip(self.biases, nabla_b)]

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(nabla_b, nabla_w)``: the gradient of C_x = ½‖y − aᴸ‖² for the single example (x, y).

        ``x`` is a ``(sizes[0], 1)`` column, ``y`` a ``(sizes[-1], 1)`` column (one-hot for a digit).
        """
        nabla_b = [None] * len(self.biases)
        nabla_w = [None] * len(self.weights)
        # feedforward, keeping every z and activation for the backward pass
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = w @ activation + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])  # (BP1)
        nabla_b[-1] = delta  # (BP3)
        nabla_w[-1] = delta @ activations[-2].T  # (BP4)
        # layer -l counted from the output, as the book does: l = 2 is the last hidden layer
        for l in range(2, self.num_layers):
            delta = (self.weights[-l + 1].T @ delta) * sigmoid_prime(zs[-l])  # (BP2)
            nabla_b[-l] = delta
            nabla_w[-l] = delta @ activations[-l - 1].T
        return nabla_b, nabla_w

    def evaluate(self, test_data: Sequence[tuple[np.ndarray, int]]) -> int:
        """How many inputs get their label as the most active output neuron."""
        return sum(int(np.argmax(self.feedforward(x)) == label) for x, label in test_data)

    @staticmethod
    def cost_derivative(output_activations: np.ndarray, y: np.ndarray) -> np.ndarray:
        """∂C_x/∂a for the quadratic cost."""
        return output_activations - y


if __name__ == "__main__":
    # toy check: learn XOR-ish labels of 2-bit inputs; the cost must fall
    rng = np.random.default_rng(0)
    data = [(np.array([[i], [j]], dtype=float), np.array([[float(i ^ j)]])) for i in (0, 1) for j in (0, 1)]
    net = BookNetwork([2, 4, 1], seed=1)

    def cost():
        return sum(0.5 * float(((net.feedforward(x) - y) ** 2).sum()) for x, y in data) / len(data)

    before = cost()
    for _ in range(2000):
        net.update_mini_batch([data[i] for i in rng.permutation(4)], eta=3.0)
    print(f"cost {before:.4f} -> {cost():.4f}")
