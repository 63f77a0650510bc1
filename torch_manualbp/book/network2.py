r"""The book's ``network2.py`` (chapter 3): the cross-entropy cost, L2 regularisation, the better initialisation,
monitoring and ``save``/``load``, with the book's names and signatures, over the package.

As in :mod:`torch_manualbp.book.network`, the parameters are the book's numpy lists (``np.random.seed`` reproduces
a network), ``SGD`` shuffles by ``random.shuffle`` (``random.seed`` reproduces a run) and prints the book's lines,
and the steps are the package's engine's (:class:`~torch_manualbp.MiniBatchSGD`, with the book's L2 step
:math:`w \to (1 - \eta\lambda/n) w - \frac{\eta}{m}\sum_x \partial C_x/\partial w`). The monitors are computed by the
package in matrix form: ``accuracy`` by its feedforward, ``total_cost`` by its cost plus the book's λ term
:math:`\frac{\lambda}{2\,\mathrm{len(data)}} \sum_w \lVert w \rVert^2`.

To run (chapter 3's session)::

    >>> from torch_manualbp.book import mnist_loader, network2
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
    >>> net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost)
    >>> evaluation_cost, evaluation_accuracy, training_cost, training_accuracy = net.SGD(
    ...     training_data, 30, 10, 0.5, lmbda=5.0, evaluation_data=validation_data, monitor_evaluation_accuracy=True)
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

from torch_manualbp.checks import check_learning_rate, l2_weight_decay

from .bridge import (
    CHUNK_ROWS,
    PackageNetwork,
    check_example,
    check_mini_batch_size,
    check_pairs,
    check_sizes,
    row_chunks,
)
from .mnist_loader import vectorized_result  # the book's network2 has it too

__all__ = ["QuadraticCost", "CrossEntropyCost", "Network", "load", "vectorized_result"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class QuadraticCost:
    r"""Chapter 2's quadratic cost, as the book's class: static ``fn(a, y)`` and ``delta(z, a, y)`` on one example's
    columns. (The package's is :class:`torch_manualbp.costs.Quadratic`, ``fn(z, a - y, y)`` on rows.)"""

    @staticmethod
    def fn(a: np.ndarray, y: np.ndarray) -> float:
        r""":math:`C_x = \frac12 \lVert a - y \rVert^2`."""
        return 0.5 * float(np.sum((a - y) ** 2))

    @staticmethod
    def delta(z: np.ndarray, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        r"""(BP1) :math:`\delta^L = (a^L - y) \odot \sigma'(z^L)`."""
        return (a - y) * _sigmoid(z) * (1 - _sigmoid(z))


class CrossEntropyCost:
    r"""Chapter 3's cross-entropy, as the book's class: static ``fn(a, y)`` and ``delta(z, a, y)`` on one example's
    columns. (The package's is :class:`torch_manualbp.costs.CrossEntropy`, its value computed from :math:`z^L`.)"""

    @staticmethod
    def fn(a: np.ndarray, y: np.ndarray) -> float:
        r""":math:`C_x = -\sum_j [y_j \ln a_j + (1 - y_j) \ln(1 - a_j)]`, a term that is 0 · ∞ taken as 0, as the
        book's ``np.nan_to_num`` does."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a))))

    @staticmethod
    def delta(z: np.ndarray, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        r"""(BP1) :math:`\delta^L = a^L - y`: :math:`\sigma'(z^L)` cancels (``z`` is unused, as in the book)."""
        return a - y


#: the book's cost classes and the package's cost each trains with
_PACKAGE_COSTS = {QuadraticCost: "quadratic", CrossEntropyCost: "cross_entropy"}


class Network:
    r"""The book's chapter-3 network: sigmoid neurons, a cost class, L2 regularisation, monitoring.

    Args:
        sizes: the number of neurons in each layer, input first: ``[784, 30, 10]``.
        cost: :class:`CrossEntropyCost` (the default, as the book's) or :class:`QuadraticCost`: the class itself, as
            ``net.cost`` holds it.

    Attributes:
        num_layers, sizes: as :class:`torch_manualbp.book.network.Network`.
        biases, weights: float64 numpy lists drawn by :meth:`default_weight_initializer`.
        cost: the cost class.

    Raises:
        TypeError, ValueError: ``sizes`` is not a list of at least two ints >= 1, or ``cost`` not one of the two.
    """

    def __init__(self, sizes: list[int], cost=CrossEntropyCost) -> None:
        if cost not in _PACKAGE_COSTS:
            raise TypeError(f"cost must be network2.CrossEntropyCost or network2.QuadraticCost, got {cost!r}")
        self.sizes = check_sizes(sizes)
        self.num_layers = len(self.sizes)
        self.default_weight_initializer()
        self.cost = cost
        self._package = PackageNetwork(self.sizes, _PACKAGE_COSTS[cost])

    def default_weight_initializer(self) -> None:
        r"""Biases from N(0, 1), each weight from N(0, 1/n_in) with n_in the neuron's inputs: ``np.random.randn``,
        biases first, as the book draws them."""
        self.biases = [np.random.randn(y, 1) for y in self.sizes[1:]]
        self.weights = [np.random.randn(y, x) / np.sqrt(x) for x, y in zip(self.sizes[:-1], self.sizes[1:])]

    def large_weight_initializer(self) -> None:
        r"""Weights and biases from N(0, 1), chapter 1's initialisation, for comparison."""
        self.biases = [np.random.randn(y, 1) for y in self.sizes[1:]]
        self.weights = [np.random.randn(y, x) for x, y in zip(self.sizes[:-1], self.sizes[1:])]

    def _loaded(self) -> PackageNetwork:
        """The package's network holding this network's current weights and biases, with its cost."""
        if self.cost not in _PACKAGE_COSTS:  # net.cost may have been reassigned since __init__
            raise TypeError(f"net.cost must be network2.CrossEntropyCost or network2.QuadraticCost, got {self.cost!r}")
        if self._package.network.cost_name != _PACKAGE_COSTS[self.cost]:
            self._package = PackageNetwork(self.sizes, _PACKAGE_COSTS[self.cost])
        return self._package.load(self.weights, self.biases)

    def _store(self) -> None:
        """Read the package's network's trained parameters back into ``weights`` and ``biases``."""
        self.weights, self.biases = self._package.weights_and_biases()

    def feedforward(self, a: np.ndarray) -> np.ndarray:
        r"""The network's output :math:`a^L` for the input column ``a``, :math:`(\text{sizes}[0], 1)`, or for
        several inputs side by side, :math:`(\text{sizes}[0], k)`."""
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[0] != self.sizes[0]:
            found = a.shape if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"a must be a numpy column of shape ({self.sizes[0]}, 1), got {found}")
        return self._loaded().outputs(np.ascontiguousarray(a.T, dtype=np.float64)).T

    def SGD(
        self,
        training_data,
        epochs: int,
        mini_batch_size: int,
        eta: float,
        lmbda: float = 0.0,
        evaluation_data=None,
        monitor_evaluation_cost: bool = False,
        monitor_evaluation_accuracy: bool = False,
        monitor_training_cost: bool = False,
        monitor_training_accuracy: bool = False,
        early_stopping_n: int = 0,
    ) -> tuple[list[float], list[int], list[float], list[int]]:
        r"""Train by mini-batch SGD with L2 regularisation, the book's way, monitoring after each epoch.

        Each epoch: ``random.shuffle`` the training data, one step per mini-batch (the last possibly smaller), then
        print ``Epoch j training complete`` and, for each monitor asked for, its line (``Cost on training data:``,
        ``Accuracy on training data: k / n``, ``Cost on evaluation data:``, ``Accuracy on evaluation data: k / n``)
        and a blank line, as the book prints them.

        Args:
            training_data: pairs ``(x, y)``, ``y`` a one-hot column; a list is shuffled in place, as the book's is.
            epochs, mini_batch_size, eta: as ``network.Network.SGD``.
            lmbda: the L2 regularisation parameter λ over the ``len(training_data)`` examples; 0: none.
            evaluation_data: pairs ``(x, label)`` with an int label (the validation or test data), or ``None``.
            monitor_*: which of the four to compute, print and return.
            early_stopping_n: stop once the evaluation accuracy has not beaten its best for this many epochs in a
                row (it needs ``evaluation_data``); 0: never.

        Returns:
            ``(evaluation_cost, evaluation_accuracy, training_cost, training_accuracy)``, one entry per epoch in
            each list asked for, the others empty. The costs include the λ term (:meth:`total_cost`).

        Raises:
            TypeError, ValueError: a bad argument, named, before any step.
        """
        n_in, n_out = self.sizes[0], self.sizes[-1]
        training_data = check_pairs(training_data, "training_data", n_in, n_out, labels=False)
        if evaluation_data is not None:
            evaluation_data = check_pairs(evaluation_data, "evaluation_data", n_in, n_out, labels=True)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        if not isinstance(early_stopping_n, int) or isinstance(early_stopping_n, bool) or early_stopping_n < 0:
            raise ValueError(f"early_stopping_n must be an int >= 0, got {early_stopping_n!r}")
        monitors_evaluation = monitor_evaluation_cost or monitor_evaluation_accuracy or early_stopping_n
        if monitors_evaluation and evaluation_data is None:
            raise ValueError("evaluation_data must be given to monitor it or to stop early on its accuracy")
        n = len(training_data)
        l2_weight_decay(lmbda, n)  # checks lmbda
        engine = self._loaded().engine(check_mini_batch_size(mini_batch_size), lmbda=lmbda, n=n)
        eta = check_learning_rate(eta)
        evaluation_cost, evaluation_accuracy, training_cost, training_accuracy = [], [], [], []
        best_accuracy, epochs_without_gain = 0, 0
        for j in range(epochs):
            random.shuffle(training_data)
            self._package.train(engine, training_data, eta)
            self._store()
            print(f"Epoch {j} training complete")
            if monitor_training_cost:
                training_cost.append(self.total_cost(training_data, lmbda))
                print(f"Cost on training data: {training_cost[-1]}")
            if monitor_training_accuracy:
                training_accuracy.append(self.accuracy(training_data, convert=True))
                print(f"Accuracy on training data: {training_accuracy[-1]} / {n}")
            if monitor_evaluation_cost:
                evaluation_cost.append(self.total_cost(evaluation_data, lmbda, convert=True))
                print(f"Cost on evaluation data: {evaluation_cost[-1]}")
            if monitor_evaluation_accuracy:
                evaluation_accuracy.append(self.accuracy(evaluation_data))
                print(f"Accuracy on evaluation data: {evaluation_accuracy[-1]} / {len(evaluation_data)}")
            print()
            if early_stopping_n:
                accuracy = evaluation_accuracy[-1] if monitor_evaluation_accuracy else self.accuracy(evaluation_data)
                if accuracy > best_accuracy:
                    best_accuracy, epochs_without_gain = accuracy, 0
                else:
                    epochs_without_gain += 1
                if epochs_without_gain == early_stopping_n:
                    break
        return evaluation_cost, evaluation_accuracy, training_cost, training_accuracy

    def update_mini_batch(self, mini_batch, eta: float, lmbda: float, n: int) -> None:
        r"""One L2-regularised step on ``mini_batch``, pairs ``(x, y)``, over a training set of ``n``:
        :math:`w \to (1 - \eta\lambda/n) w - \frac{\eta}{m} \sum_x \partial C_x/\partial w`,
        :math:`b \to b - \frac{\eta}{m} \sum_x \partial C_x/\partial b`, by the package's ``Network.sgd_step``."""
        mini_batch = check_pairs(mini_batch, "mini_batch", self.sizes[0], self.sizes[-1], labels=False)
        (x, y), *_ = row_chunks(mini_batch, labels=False, rows=len(mini_batch))
        self._loaded().network.sgd_step(torch.from_numpy(x), torch.from_numpy(y), eta, lmbda=lmbda, n=n)
        self._store()

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        r"""``(nabla_b, nabla_w)``, the gradient of the cost :math:`C_x` of the one example ``x`` (a column) with
        desired output ``y`` (a column), BP1 by ``net.cost``'s ``delta``: by the package's ``Network.backprop`` on a
        mini-batch of one."""
        check_example(x, y, self.sizes[0], self.sizes[-1])
        return self._loaded().gradients(
            np.ascontiguousarray(x.T, dtype=np.float64), np.ascontiguousarray(y.T, dtype=np.float64)
        )

    def accuracy(self, data, convert: bool = False) -> int:
        r"""How many pairs of ``data`` get their digit as the most active output neuron. ``convert=False``: ``y`` is
        an int label (validation and test data); ``convert=True``: a one-hot column (training data), as the book's
        flag says."""
        data = check_pairs(data, "data", self.sizes[0], self.sizes[-1], labels=not convert)
        package = self._loaded()
        correct = 0
        for x, y in row_chunks(data, labels=not convert, rows=CHUNK_ROWS):
            correct += package.correct(x, y.argmax(axis=1) if convert else y)
        return correct

    def total_cost(self, data, lmbda: float, convert: bool = False) -> float:
        r"""The cost on ``data`` with the L2 term, as the book's:
        :math:`\frac{1}{N}\sum_x C_x + \frac{\lambda}{2N} \sum_w \lVert w \rVert^2` with N = ``len(data)`` (the data's
        own size, not the training set's). ``convert=False``: ``y`` is a one-hot column (training data);
        ``convert=True``: an int label (validation and test data), the reverse of :meth:`accuracy`'s flag, as in the
        book. :math:`C_x` is the package's: for the cross-entropy computed from :math:`z^L`, so finite where the
        book's ``fn`` of a saturated output overflows."""
        data = check_pairs(data, "data", self.sizes[0], self.sizes[-1], labels=convert)
        l2_weight_decay(lmbda, len(data))  # checks lmbda
        package = self._loaded()
        cost = 0.0
        for x, y in row_chunks(data, labels=convert, rows=CHUNK_ROWS):
            cost += package.cost_sum(x, np.eye(self.sizes[-1])[y] if convert else y)
        cost /= len(data)
        return cost + 0.5 * (lmbda / len(data)) * sum(float(np.sum(w * w)) for w in self.weights)

    def save(self, filename: str | os.PathLike) -> None:
        r"""Write the network to ``filename`` in the book's JSON format: ``{"sizes", "weights", "biases", "cost"}``,
        the arrays as nested lists and the cost as its class name."""
        data = {
            "sizes": self.sizes,
            "weights": [w.tolist() for w in self.weights],
            "biases": [b.tolist() for b in self.biases],
            "cost": self.cost.__name__,
        }
        with open(filename, "w") as f:
            json.dump(data, f)


def load(filename: str | os.PathLike) -> Network:
    r"""The network saved in ``filename`` by :meth:`Network.save` (or by the book's ``network2.py``): its sizes,
    float64 weights and biases, and cost class."""
    with open(filename) as f:
        data = json.load(f)
    costs = {cost.__name__: cost for cost in _PACKAGE_COSTS}
    if data.get("cost") not in costs:
        raise ValueError(f"{filename}: cost must be one of {sorted(costs)}, got {data.get('cost')!r}")
    net = Network(data["sizes"], cost=costs[data["cost"]])
    net.weights = [np.array(w, dtype=np.float64) for w in data["weights"]]
    net.biases = [np.array(b, dtype=np.float64) for b in data["biases"]]
    return net
