r"""The book's ``network3.py``, chapter 6's convolutional networks, with its names and signatures, over the package's
hand-written layers: torch on the CPU (or wherever the layers are put), float32 as Theano's ``floatX`` was.

The book's Theano code no longer installs. Here the layers are the package's modules, :class:`ConvPoolLayer` a
:class:`~torch_manualbp.nn.ConvPool2d`, :class:`FullyConnectedLayer` and :class:`SoftmaxLayer` each a
:class:`~torch_manualbp.nn.FullyConnected`, drawn as ``network3.py`` draws them, and their gradients come from the
package's backwards (``ConvPoolFunction``, ``FullyConnectedFunction``, ``DropoutFunction`` and
``SoftmaxLogLikelihoodFunction``: BP1-BP4 written out). Autograd only chains those Functions. Where Theano
differentiated ``cost`` symbolically, :meth:`Network.SGD` asks autograd for the log-likelihood's gradients and adds
the L2 term's, :math:`\lambda w / \text{num\_training\_batches}`, by hand.

Chapter 6's session runs as printed::

    >>> from torch_manualbp.book import network3
    >>> from torch_manualbp.book.network3 import Network, ConvPoolLayer, FullyConnectedLayer, SoftmaxLayer
    >>> training_data, validation_data, test_data = network3.load_data_shared()
    >>> mini_batch_size = 10
    >>> net = Network([FullyConnectedLayer(n_in=784, n_out=100), SoftmaxLayer(n_in=100, n_out=10)], mini_batch_size)
    >>> net.SGD(training_data, 60, mini_batch_size, 0.1, validation_data, test_data)
    Training mini-batch number 0
    Training mini-batch number 1000
    ...

As in ``network3.py``: the mini-batches are taken in the data's order, never shuffled; validation and test accuracies
are over whole mini-batches only (the last ``size(data) % mini_batch_size`` images are left out, none for MNIST's
10,000 and a mini-batch of 10); the dropout of a layer removes entries of its *input*, a fresh mask for every example
and every step, and at inference the layer's weights are scaled by :math:`1 - p` instead. The one change: the data is
read from the repository's IDX files, not from ``mnist.pkl.gz``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from torch_manualbp.mnist import MNIST_INPUTS
from torch_manualbp.sequential import sgd_step

from .mnist_loader import TRAINING, read_mnist
from .network3_layers import (
    ConvPoolLayer,
    FullyConnectedLayer,
    ReLU,
    SoftmaxLayer,
    _check_count,
    _check_rate,
    dropout_layer,
    linear,
    sigmoid,
    size,
    tanh,
)

__all__ = [
    "ConvPoolLayer",
    "FullyConnectedLayer",
    "Network",
    "ReLU",
    "SoftmaxLayer",
    "dropout_layer",
    "linear",
    "load_data_shared",
    "sigmoid",
    "size",
    "tanh",
]


#: Rows a validation or test forward takes at once, a whole number of mini-batches: the accuracy is the same as one
#: mini-batch at a time (every mini-batch has the same size), in a tenth of the calls.
EVAL_ROWS = 1000


def load_data_shared(filename: str | os.PathLike | None = None) -> list[tuple[Tensor, Tensor]]:
    r"""``[training_data, validation_data, test_data]``, each a pair ``(x, y)`` of tensors, as ``network3.py``'s
    shared variables: the first 50,000 MNIST training images, the last 10,000, and the 10,000 test images.

    Args:
        filename: the folder of the four MNIST IDX files (the book's is the path of ``mnist.pkl.gz``); ``None``: the
            repository's ``data/mnist``.

    Shape:
        - x: :math:`(n, 784)` float32, pixel / 255; y: :math:`(n)` int64 labels.

    Raises:
        FileNotFoundError: a file is missing (one line naming it and the folder searched).
        ValueError: a file is truncated or corrupted.
    """
    mnist = read_mnist(filename, "load_data_shared(filename=...)")

    def shared(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return images.reshape(-1, MNIST_INPUTS).float() / 255, labels  # float32 as Theano's floatX, (n, 784)

    images, labels = mnist["train_images"], mnist["train_labels"]
    return [
        shared(images[:TRAINING], labels[:TRAINING]),
        shared(images[TRAINING:], labels[TRAINING:]),
        shared(mnist["test_images"], mnist["test_labels"]),
    ]


class Network(nn.Module):
    r"""``network3.py``'s network: its ``layers`` in order, trained by :meth:`SGD` one mini-batch of
    ``mini_batch_size`` at a time.

    Args:
        layers: :class:`ConvPoolLayer` and :class:`FullyConnectedLayer` objects, input side first, then one
            :class:`SoftmaxLayer`; each layer's ``n_in`` must be the entries per example of the layer below's output
            (784 for the first, MNIST's pixels), and a :class:`ConvPoolLayer`'s ``image_shape[0]`` must be
            ``mini_batch_size``.
        mini_batch_size: the examples per SGD step.

    Attributes set by :meth:`SGD`, what it printed: ``validation_accuracies`` (one per epoch, fractions),
    ``best_validation_accuracy``, ``best_iteration`` and ``test_accuracy`` (the test accuracy at the best epoch).
    """

    def __init__(self, layers, mini_batch_size) -> None:
        super().__init__()
        _check_count("mini_batch_size", mini_batch_size)
        _check_layers(layers, mini_batch_size)
        self.layers = nn.ModuleList(layers)
        self.mini_batch_size = int(mini_batch_size)
        self.params = [param for layer in self.layers for param in (layer.weight, layer.bias)]
        # the layers as torch_manualbp.sequential.sgd_step takes them: a flatten after the last conv-pool layer
        convs = sum(isinstance(layer, ConvPoolLayer) for layer in layers)
        self._stack = None  # conv-pool layers above a fully connected one: autograd's path only
        if all(isinstance(layer, ConvPoolLayer) for layer in layers[:convs]):
            self._stack = [*layers[:convs], *([nn.Flatten()] if convs else []), *layers[convs:]]
        self._input_shape = tuple(layers[0].image_shape[1:]) if convs else (layers[0].n_in,)

    def SGD(self, training_data, epochs, mini_batch_size, eta, validation_data, test_data, lmbda=0.0) -> None:
        r"""Train by mini-batch stochastic gradient descent, printing ``network3.py``'s lines.

        Each epoch takes the ``size(training_data) // mini_batch_size`` whole mini-batches in order (no shuffle; a
        last partial mini-batch is left out), each step :math:`p \to p - \eta\, \partial C/\partial p` with

        .. math::
            C = -\frac1m \sum_x \ln a^L_{y(x)}
                + \frac{0.5\, \lambda}{\text{num\_training\_batches}} \sum_{\text{layers}} \lVert w \rVert^2

        exactly as ``network3.py`` writes it (the λ term over the number of mini-batches, not over n as in
        network2; the biases are not regularised). After each epoch it prints the validation accuracy over the
        whole mini-batches of ``validation_data`` and, when that is the best so far (ties included), the test
        accuracy over those of ``test_data``.

        Args:
            training_data, validation_data, test_data: pairs ``(x, y)`` as :func:`load_data_shared` returns, at
                least one mini-batch each; ``x`` is moved to the layers' device and dtype.
            epochs: the number of passes over the training data, at least 1.
            mini_batch_size: must be the network's own (``network3.py`` builds its graph for that one).
            eta: the learning rate η.
            lmbda: the L2 regularisation parameter λ. Default: 0.0.
        """
        if mini_batch_size != self.mini_batch_size:
            raise ValueError(f"mini_batch_size must be the network's {self.mini_batch_size}, got {mini_batch_size!r}")
        _check_count("epochs", epochs)
        _check_rate("eta", eta, positive=True)
        _check_rate("lmbda", lmbda, positive=False)
        training_x, training_y = self._placed("training_data", training_data)
        validation_x, validation_y = self._placed("validation_data", validation_data)
        test_x, test_y = self._placed("test_data", test_data)
        m = self.mini_batch_size
        num_training_batches = size(training_data) // m
        num_validation_batches = size(validation_data) // m
        num_test_batches = size(test_data) // m

        self.validation_accuracies = []
        best_validation_accuracy = 0.0
        for epoch in range(epochs):
            for minibatch_index in range(num_training_batches):
                iteration = num_training_batches * epoch + minibatch_index
                if iteration % 1000 == 0:
                    print(f"Training mini-batch number {iteration}")
                rows = slice(minibatch_index * m, (minibatch_index + 1) * m)
                self.train_mb(training_x[rows], training_y[rows], eta, lmbda / num_training_batches)
                if (iteration + 1) % num_training_batches == 0:
                    validation_accuracy = self.accuracy(validation_x, validation_y, num_validation_batches)
                    self.validation_accuracies.append(validation_accuracy)
                    print(f"Epoch {epoch}: validation accuracy {validation_accuracy:.2%}")
                    if validation_accuracy >= best_validation_accuracy:
                        print("This is the best validation accuracy to date.")
                        best_validation_accuracy = validation_accuracy
                        best_iteration = iteration
                        test_accuracy = self.accuracy(test_x, test_y, num_test_batches)
                        print(f"The corresponding test accuracy is {test_accuracy:.2%}")
        print("Finished training network.")
        print(f"Best validation accuracy of {best_validation_accuracy:.2%} obtained at iteration {best_iteration}")
        print(f"Corresponding test accuracy of {test_accuracy:.2%}")
        self.best_validation_accuracy, self.best_iteration = best_validation_accuracy, best_iteration
        self.test_accuracy = test_accuracy

    def train_mb(self, x: Tensor, y: Tensor, eta: float, l2_share: float) -> Tensor:
        r"""One SGD step on the mini-batch ``(x, y)``, ``network3.py``'s ``train_mb``; returns the log-likelihood
        part of its cost, before the step.

        Without dropout the step is :func:`torch_manualbp.sequential.sgd_step`'s: the layers' equations with no
        autograd graph (the same update, faster). With dropout the training pass chains each layer's
        ``output_dropout`` into the softmax's :meth:`SoftmaxLayer.cost` and autograd runs their hand-written
        backwards. The L2 term's gradient is added by hand either way, ``l2_share`` being
        :math:`\lambda / \text{num\_training\_batches}`.
        """
        if self._stack is not None and not any(getattr(layer, "p_dropout", 0.0) for layer in self.layers):
            # no dropout: the same update by the layers' equations with no autograd (torch_manualbp.sequential)
            return sgd_step(self._stack, x.reshape(-1, *self._input_shape), y, eta, lmbda=l2_share, n=1)
        inpt_dropout = x
        for layer in self.layers[:-1]:
            inpt_dropout = layer.output_dropout(inpt_dropout)
        cost = self.layers[-1].cost(inpt_dropout, y)
        grads = torch.autograd.grad(cost, self.params)  # BP1-BP4 of each layer's Function
        with torch.no_grad():
            for layer, nabla_w, nabla_b in zip(self.layers, grads[0::2], grads[1::2]):
                # ∂/∂w of 0.5 λ Σ‖w‖² / num_training_batches = λ w / num_training_batches
                layer.weight.sub_(eta * (nabla_w + l2_share * layer.weight))
                layer.bias.sub_(eta * nabla_b)
        return cost.detach()

    @torch.no_grad()
    def accuracy(self, x: Tensor, y: Tensor, num_batches: int) -> float:
        """The fraction of the first ``num_batches`` whole mini-batches of ``(x, y)`` whose most active output
        (the first, in a tie) is the label: the mean of ``network3.py``'s per-mini-batch accuracies, all of one size."""
        rows = num_batches * self.mini_batch_size
        chunk = max(1, EVAL_ROWS // self.mini_batch_size) * self.mini_batch_size
        correct = 0
        for start in range(0, rows, chunk):
            inpt = x[start : min(start + chunk, rows)]
            for layer in self.layers:
                inpt = layer(inpt)
            correct += int((inpt.argmax(1) == y[start : start + len(inpt)]).sum())  # y_out = argmax of the softmax
        return correct / rows

    def _placed(self, name: str, data) -> tuple[Tensor, Tensor]:
        """``data`` checked as a pair ``(x, y)`` of at least one mini-batch that fits the first layer, with ``x`` on
        the layers' device and in their dtype and ``y`` on their device."""
        weight = self.layers[0].weight
        if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
            raise TypeError(f"{name} must be a pair (x, y) of tensors, as load_data_shared returns")
        x, y = data
        n_in = self.layers[0].n_in
        if x.ndim != 2 or x.shape[1] != n_in or not x.is_floating_point():
            raise ValueError(f"{name} must hold x as floats of shape (n, {n_in}), got {x.dtype} {tuple(x.shape)}")
        if y.shape != x.shape[:1] or y.dtype != torch.int64:
            raise ValueError(f"{name} must hold y as int64 labels of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}")
        if len(x) < self.mini_batch_size:
            raise ValueError(f"{name} must hold at least one mini-batch of {self.mini_batch_size}, got {len(x)}")
        return x.to(weight.device, weight.dtype), y.to(weight.device)


def _check_layers(layers, mini_batch_size: int) -> None:
    """A one-line error naming ``layers`` unless they chain: hidden layers, then one softmax layer, each taking what
    the one below gives, on one device and in one dtype."""
    hidden = (ConvPoolLayer, FullyConnectedLayer)
    if not isinstance(layers, (list, tuple)) or not layers or not isinstance(layers[-1], SoftmaxLayer):
        raise TypeError("layers must be a list of ConvPoolLayer/FullyConnectedLayer objects ending in a SoftmaxLayer")
    for j, layer in enumerate(layers[:-1]):
        if not isinstance(layer, hidden):
            raise TypeError(f"layers[{j}] must be a ConvPoolLayer or FullyConnectedLayer, got {type(layer).__name__}")
    for j, layer in enumerate(layers):
        if isinstance(layer, ConvPoolLayer) and layer.image_shape[0] != mini_batch_size:
            raise ValueError(
                f"layers[{j}].image_shape[0] must be mini_batch_size {mini_batch_size}, got {layer.image_shape[0]}"
            )
        if j and layer.n_in != layers[j - 1].n_out:
            raise ValueError(f"layers[{j}] takes {layer.n_in} inputs but layers[{j - 1}] gives {layers[j - 1].n_out}")
        kind = (layer.weight.device, layer.weight.dtype)
        if kind != (layers[0].weight.device, layers[0].weight.dtype):
            raise ValueError(f"layers[{j}] is on {kind[0]} in {kind[1]}, unlike layers[0]: make them all alike")
