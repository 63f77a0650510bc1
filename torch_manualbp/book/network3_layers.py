"""network3.py's layers, as the book's ``network3.py`` has them: ``ConvPoolLayer``, ``FullyConnectedLayer`` and
``SoftmaxLayer`` (modules of the package's layers that take network3's arguments, dropout included), network3's
activation functions by its names, its ``size`` and ``dropout_layer``, and the argument checks the layers
make. Import them from :mod:`torch_manualbp.book.network3`, which re-exports them.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor, nn

from torch_manualbp.activations import ACTIVATIONS, get_activation
from torch_manualbp.functional import DropoutFunction, fully_connected, softmax_log_likelihood
from torch_manualbp.nn import ConvPool2d, FullyConnected

# network3's activation functions, by its names: each maps z to f(z), and carries the f'(z) the backwards use
sigmoid, tanh, ReLU, linear = (ACTIVATIONS[name] for name in ("sigmoid", "tanh", "relu", "linear"))


def size(data: tuple[Tensor, Tensor]) -> int:
    """The number of examples in ``data``, a pair ``(x, y)`` as :func:`load_data_shared` returns."""
    return data[0].shape[0]


def dropout_layer(layer: Tensor, p_dropout: float) -> Tensor:
    r"""``layer`` with each entry kept with probability :math:`1 - p` and set to 0 otherwise, a new mask drawn from
    torch's global generator (``torch.bernoulli``) for each call, one entry per example and neuron as
    ``network3.py``'s; the backward is :class:`~torch_manualbp.functional.DropoutFunction`'s, the same mask applied
    to :math:`\partial C/\partial a`. Kept entries are not rescaled: the layers scale their weights by :math:`1 - p`
    at inference instead."""
    mask = torch.bernoulli(torch.full_like(layer, 1 - p_dropout))  # (N, n_in), 1 kept, 0 removed
    return DropoutFunction.apply(layer, mask)


class ConvPoolLayer(ConvPool2d):
    r"""``network3.py``'s convolutional layer with max-pooling, a :class:`~torch_manualbp.nn.ConvPool2d`:
    :math:`a = f(\operatorname{maxpool}(x \star w) + b)`, stride 1, no padding, no dropout.

    Args:
        filter_shape: ``(n_filters, n_in_maps, h, w)``: the feature maps computed, the input feature maps, and the
            local receptive field, square (``h == w``) here.
        image_shape: ``(mini_batch_size, n_in_maps, H, W)``, the input one mini-batch at a time.
        poolsize: the max-pool block ``(p, p)``, square here; rows and columns that do not fill a block are dropped
            (``ignore_border=True``). Default: ``(2, 2)``.
        activation_fn: :data:`sigmoid` (default), :data:`tanh`, :data:`ReLU` or :data:`linear`.
        device, dtype: where and how to allocate the parameters. Default: torch's, the CPU and float32.

    The weights are drawn from :math:`\mathcal{N}(0, 1/n_{out})`, :math:`n_{out} = n_{filters} h w / p^2`, the biases
    from :math:`\mathcal{N}(0, 1)`, as ``network3.py`` draws them (``ConvPool2d.reset_parameters``), from torch's
    global generator.

    Shape:
        - Input: anything of :math:`n_{in\_maps} H W` entries per example, reshaped to
          :math:`(N, n_{in\_maps}, H, W)` as ``network3.py`` reshapes it.
        - Output: :math:`(N, n_{filters}, \lfloor (H - h + 1)/p \rfloor, \lfloor (W - w + 1)/p \rfloor)`.
    """

    def __init__(self, filter_shape, image_shape, poolsize=(2, 2), activation_fn=sigmoid, device=None, dtype=None):
        _check_shape("filter_shape", filter_shape, "(n_filters, n_in_maps, h, w)")
        _check_shape("image_shape", image_shape, "(mini_batch_size, n_in_maps, H, W)")
        n_filters, n_in_maps, h, w = filter_shape
        if n_in_maps != image_shape[1]:
            raise ValueError(
                f"filter_shape[1] (input feature maps) must equal image_shape[1], got {n_in_maps} and {image_shape[1]}"
            )
        if h != w:
            raise ValueError(f"filter_shape must have a square field h == w (the package's layer), got {filter_shape}")
        if h > image_shape[2] or w > image_shape[3]:
            raise ValueError(f"filter_shape's field {h} x {w} must fit in image_shape's {image_shape[2:]} image")
        if not (
            isinstance(poolsize, (tuple, list))
            and len(poolsize) == 2
            and poolsize[0] == poolsize[1]
            and _is_positive_int(poolsize[0])
        ):
            raise ValueError(f"poolsize must be a square (p, p) of positive ints, got {poolsize!r}")
        conv_shape = (image_shape[2] - h + 1, image_shape[3] - w + 1)
        if poolsize[0] > min(conv_shape):
            raise ValueError(f"poolsize {tuple(poolsize)} must fit in the convolution's output {conv_shape}")
        super().__init__(n_in_maps, n_filters, h, poolsize[0], _activation(activation_fn), device=device, dtype=dtype)
        self.filter_shape, self.image_shape, self.poolsize = tuple(filter_shape), tuple(image_shape), tuple(poolsize)
        self.output_shape = (n_filters, conv_shape[0] // poolsize[0], conv_shape[1] // poolsize[0])
        self.n_in, self.n_out = math.prod(image_shape[1:]), math.prod(self.output_shape)

    def forward(self, inpt: Tensor) -> Tensor:
        """``network3.py``'s ``output``: the layer's activations for ``inpt``, at training and inference alike."""
        return super().forward(inpt.reshape(-1, *self.image_shape[1:]))  # (N, n_filters, H_pool, W_pool)

    def output_dropout(self, inpt_dropout: Tensor) -> Tensor:
        """The training pass: the same as :meth:`forward`, there being no dropout in the convolutional layers."""
        return self(inpt_dropout)


class FullyConnectedLayer(FullyConnected):
    r"""``network3.py``'s fully-connected layer, a :class:`~torch_manualbp.nn.FullyConnected` with dropout:
    :math:`a = f(x W^\top + b)`.

    Args:
        n_in: the number of inputs, the neurons (or feature-map entries) of the layer below.
        n_out: the number of neurons in this layer.
        activation_fn: :data:`sigmoid` (default), :data:`tanh`, :data:`ReLU` or :data:`linear`.
        p_dropout: the probability that an entry of the layer's input is removed for a training step (each example
            its own mask, :func:`dropout_layer`); at inference the weights are scaled by :math:`1 - p` instead, so
            that each neuron's weighted input is, on average, what training saw. Default: 0.0, no dropout.
        device, dtype: where and how to allocate the parameters. Default: torch's, the CPU and float32.

    The weights are drawn from :math:`\mathcal{N}(0, 1/n_{out})` (``network3.py`` scales by the layer's own size,
    where ``FullyConnected`` scales by ``n_in``), the biases from :math:`\mathcal{N}(0, 1)`.

    Shape:
        - Input: :math:`(N, *)` with :math:`n_{in}` entries per example, flattened as ``network3.py`` reshapes it.
        - Output: :math:`(N, n_{out})`.
    """

    def __init__(self, n_in, n_out, activation_fn=sigmoid, p_dropout=0.0, device=None, dtype=None):
        _check_count("n_in", n_in)
        _check_count("n_out", n_out)
        _check_p_dropout(p_dropout)
        super().__init__(n_in, n_out, _activation(activation_fn), device=device, dtype=dtype)
        self.n_in, self.n_out, self.p_dropout = n_in, n_out, float(p_dropout)

    def reset_parameters(self) -> None:
        """Draw the weights from N(0, 1/n_out) and the biases from N(0, 1) again, as ``network3.py``."""
        nn.init.normal_(self.weight, 0.0, 1.0 / math.sqrt(self.out_features))
        nn.init.normal_(self.bias, 0.0, 1.0)

    def forward(self, inpt: Tensor) -> Tensor:
        r"""``network3.py``'s ``output``, the inference pass: :math:`f((1 - p) x W^\top + b)`."""
        x = inpt.reshape(-1, self.n_in)  # (N, n_in)
        return fully_connected(x, (1 - self.p_dropout) * self.weight, self.bias, self.activation)

    def output_dropout(self, inpt_dropout: Tensor) -> Tensor:
        r"""``network3.py``'s ``output_dropout``, the training pass: :math:`f(\operatorname{dropout}(x) W^\top + b)`."""
        x = _dropped(inpt_dropout.reshape(-1, self.n_in), self.p_dropout)  # (N, n_in)
        return fully_connected(x, self.weight, self.bias, self.activation)


class SoftmaxLayer(FullyConnected):
    r"""``network3.py``'s softmax output layer, a linear :class:`~torch_manualbp.nn.FullyConnected` whose outputs
    :math:`z = x W^\top + b` go through the softmax, :math:`a_j = e^{z_j} / \sum_k e^{z_k}`, with the log-likelihood
    cost :math:`C = -\frac1m \sum_x \ln a_{y(x)}` (:meth:`cost`).

    Args:
        n_in: the number of inputs, the neurons of the layer below.
        n_out: the number of output neurons, one per class.
        p_dropout: as :class:`FullyConnectedLayer`'s: dropout of the layer's input at training, the weights scaled by
            :math:`1 - p` at inference. Default: 0.0.
        device, dtype: where and how to allocate the parameters. Default: torch's, the CPU and float32.

    The weights and biases start at zero, as ``network3.py``'s (the layers below break the symmetry).

    Shape:
        - Input: :math:`(N, *)` with :math:`n_{in}` entries per example.
        - Output: :math:`(N, n_{out})`, the softmax, each row summing to 1.
    """

    def __init__(self, n_in, n_out, p_dropout=0.0, device=None, dtype=None):
        _check_count("n_in", n_in)
        _check_count("n_out", n_out)
        _check_p_dropout(p_dropout)
        super().__init__(n_in, n_out, linear, device=device, dtype=dtype)
        self.n_in, self.n_out, self.p_dropout = n_in, n_out, float(p_dropout)

    def reset_parameters(self) -> None:
        """Set the weights and biases to zero again, as ``network3.py``."""
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, inpt: Tensor) -> Tensor:
        r"""``network3.py``'s ``output``, the inference pass: :math:`\operatorname{softmax}((1 - p) x W^\top + b)`."""
        x = inpt.reshape(-1, self.n_in)  # (N, n_in)
        return fully_connected(x, (1 - self.p_dropout) * self.weight, self.bias, linear).softmax(1)  # (N, n_out)

    def cost(self, inpt_dropout: Tensor, y: Tensor) -> Tensor:
        r"""The log-likelihood of the training pass, :math:`-\frac1m \sum_x \ln a_{y(x)}` of
        :math:`a = \operatorname{softmax}(\operatorname{dropout}(x) W^\top + b)`, through the package's
        :func:`~torch_manualbp.functional.softmax_log_likelihood` (its backward starts at BP1,
        :math:`\delta^L = a^L - y`)."""
        x = _dropped(inpt_dropout.reshape(-1, self.n_in), self.p_dropout)  # (m, n_in)
        return softmax_log_likelihood(x, self.weight, self.bias, y)


def _dropped(x: Tensor, p_dropout: float) -> Tensor:
    """``x`` through :func:`dropout_layer`, or ``x`` itself when nothing is dropped (network3 multiplies by a mask of
    ones then: the same numbers)."""
    return dropout_layer(x, p_dropout) if p_dropout > 0 else x


def _activation(activation_fn):
    """The package's activation for ``activation_fn``, or a one-line error naming the argument."""
    try:
        return get_activation(activation_fn)
    except (TypeError, ValueError):
        raise TypeError(
            f"activation_fn must be one of network3's sigmoid, tanh, ReLU, linear, got {activation_fn!r}"
        ) from None


def _is_positive_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _check_shape(name: str, shape, meaning: str) -> None:
    if not (isinstance(shape, (tuple, list)) and len(shape) == 4 and all(_is_positive_int(s) for s in shape)):
        raise ValueError(f"{name} must be a tuple of four positive ints {meaning}, got {shape!r}")


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def _check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")


def _check_p_dropout(p_dropout) -> None:
    _check_number("p_dropout", p_dropout)
    if not 0 <= p_dropout < 1:
        raise ValueError(f"p_dropout must be a probability in [0, 1), got {p_dropout!r}")


def _check_rate(name: str, value, positive: bool) -> None:
    _check_number(name, value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
