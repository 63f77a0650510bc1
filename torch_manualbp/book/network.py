r"""The book's ``network.py`` (chapter 1): ``Network(sizes)`` with the book's attributes and methods, over the package.

The parameters are the book's: ``weights`` and ``biases``, lists of float64 numpy arrays drawn from N(0, 1) by
``np.random.randn`` in the book's order (so ``np.random.seed`` reproduces a network), which you may read and assign.
``SGD`` shuffles the training data with ``random.shuffle`` as the book does (so ``random.seed`` reproduces a run) and
prints the book's lines, but each epoch's steps are the package's: the shuffled examples copied into float64 rows and
run through :class:`~torch_manualbp.MiniBatchSGD` (the native loop where it builds), the same updates as the book's
per-example loop to rounding, in about a second an epoch instead of minutes. ``update_mini_batch`` and ``backprop``
keep the book's meaning (one mini-batch, one example) and go through ``Network.sgd_step`` and ``Network.backprop``.

To run (the book's session)::

    >>> import random, numpy as np; random.seed(0); np.random.seed(0)  # only to reproduce the line below
    >>> from torch_manualbp.book import mnist_loader, network
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
    >>> net = network.Network([784, 30, 10])
    >>> net.SGD(training_data, 30, 10, 3.0, test_data=test_data)
    Epoch 0: 8987 / 10000
    ...
"""

from __future__ import annotations

import random

import numpy as np
import torch

from torch_manualbp.checks import check_learning_rate

from .bridge import (
    CHUNK_ROWS,
    PackageNetwork,
    check_example,
    check_mini_batch_size,
    check_pairs,
    check_sizes,
    row_chunks,
)

__all__ = ["Network"]


class Network:
    r"""The book's chapter-1 network of sigmoid neurons trained on the quadratic cost.

    Args:
        sizes: the number of neurons in each layer, input first: ``[784, 30, 10]``.

    Attributes:
        num_layers: ``len(sizes)``.
        sizes: the list of layer sizes.
        biases: one float64 column :math:`(\text{sizes}[l+1], 1)` per layer after the input, from N(0, 1).
        weights: one float64 :math:`(\text{sizes}[l+1], \text{sizes}[l])` per layer after the input, from N(0, 1).

    Raises:
        TypeError, ValueError: ``sizes`` is not a list of at least two ints >= 1.
    """

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = check_sizes(sizes)
        self.num_layers = len(self.sizes)
        # the book's draws in the book's order (biases, then weights), so that np.random.seed gives its network
        self.biases = [np.random.randn(y, 1) for y in self.sizes[1:]]
        self.weights = [np.random.randn(y, x) for x, y in zip(self.sizes[:-1], self.sizes[1:])]
        self._package = PackageNetwork(self.sizes, "quadratic")

    def _loaded(self) -> PackageNetwork:
        """The package's network holding this network's current weights and biases."""
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

    def SGD(self, training_data, epochs: int, mini_batch_size: int, eta: float, test_data=None) -> None:
        r"""Train by mini-batch stochastic gradient descent, the book's way: each epoch ``random.shuffle`` the
        training data, cut it into mini-batches of ``mini_batch_size`` (the last possibly smaller) and take one step
        of learning rate ``eta`` per mini-batch, then print ``Epoch j: correct / n`` on ``test_data`` if given,
        else ``Epoch j complete``.

        Args:
            training_data: pairs ``(x, y)``, ``x`` a :math:`(\text{sizes}[0], 1)` column, ``y`` the desired output
                :math:`(\text{sizes}[-1], 1)`. A list is shuffled in place, as the book's is.
            epochs, mini_batch_size, eta: the book's three hyper-parameters (chapter 1: 30, 10, 3.0).
            test_data: pairs ``(x, label)`` with an int ``label``, evaluated after each epoch; ``None``: none.

        Raises:
            TypeError, ValueError: a bad argument, named, before any step.
        """
        training_data = check_pairs(training_data, "training_data", self.sizes[0], self.sizes[-1], labels=False)
        if test_data is not None:
            test_data = check_pairs(test_data, "test_data", self.sizes[0], self.sizes[-1], labels=True)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        engine = self._loaded().engine(check_mini_batch_size(mini_batch_size))
        eta = check_learning_rate(eta)
        for j in range(epochs):
            random.shuffle(training_data)
            self._package.train(engine, training_data, eta)
            self._store()
            if test_data:
                print(f"Epoch {j}: {self.evaluate(test_data)} / {len(test_data)}")
            else:
                print(f"Epoch {j} complete")

    def update_mini_batch(self, mini_batch, eta: float) -> None:
        r"""One step of gradient descent on ``mini_batch``, pairs ``(x, y)``:
        :math:`w \to w - \frac{\eta}{m} \sum_x \partial C_x/\partial w`, the same for the biases, by the package's
        ``Network.sgd_step``."""
        mini_batch = check_pairs(mini_batch, "mini_batch", self.sizes[0], self.sizes[-1], labels=False)
        (x, y), *_ = row_chunks(mini_batch, labels=False, rows=len(mini_batch))
        self._loaded().network.sgd_step(torch.from_numpy(x), torch.from_numpy(y), eta)
        self._store()

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        r"""``(nabla_b, nabla_w)``, the gradient of :math:`C_x = \frac12 \lVert y - a^L \rVert^2` for the one
        example ``x`` (a column :math:`(\text{sizes}[0], 1)`) with desired output ``y`` (a column
        :math:`(\text{sizes}[-1], 1)`), layer by layer like ``biases`` and ``weights``: BP1-BP4 by the package's
        ``Network.backprop`` on a mini-batch of one."""
        check_example(x, y, self.sizes[0], self.sizes[-1])
        return self._loaded().gradients(
            np.ascontiguousarray(x.T, dtype=np.float64), np.ascontiguousarray(y.T, dtype=np.float64)
        )

    def evaluate(self, test_data) -> int:
        r"""How many pairs ``(x, label)`` of ``test_data`` get their int ``label`` as the most active output
        neuron."""
        test_data = check_pairs(test_data, "test_data", self.sizes[0], self.sizes[-1], labels=True)
        package = self._loaded()
        return sum(package.correct(x, labels) for x, labels in row_chunks(test_data, labels=True, rows=CHUNK_ROWS))

    def cost_derivative(self, output_activations: np.ndarray, y: np.ndarray) -> np.ndarray:
        r""":math:`\partial C_x / \partial a^L = a^L - y`, the quadratic cost's, as the book names it."""
        return output_activations - y
