r"""``nn.Module`` forms of the hand-written Functions, for use in ordinary PyTorch models.

Examples::

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), SigmoidLinear(784, 30), SigmoidLinear(30, 10))
    >>> cost = QuadraticCost()(model(torch.rand(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
    >>> cost.backward()  # BP1-BP4, as written in torch_manualbp.functional
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import functional as F
from .activations import get_activation
from .cost_modules import CrossEntropyCost, LogLikelihoodCost, QuadraticCost

__all__ = [
    "SigmoidLinear",
    "FullyConnected",
    "ConvPool2d",
    "QuadraticCost",
    "CrossEntropyCost",
    "LogLikelihoodCost",
    "INITS",
    "sigmoid_layers",
]

INITS = ("scaled", "normal")


class SigmoidLinear(nn.Module):
    r"""A fully-connected layer of sigmoid neurons: :math:`a = \sigma(x W^\top + b)`.

    The forward pass and the gradients are :class:`~torch_manualbp.functional.SigmoidLinearFunction`:
    its backward computes :math:`\delta = \partial C/\partial a \odot \sigma'(z)` (BP1/BP2) and from it
    :math:`\partial C/\partial b` (BP3) and :math:`\partial C/\partial W` (BP4), with no autograd inside.

    Args:
        in_features: size of each input sample, the number of neurons in the layer below.
        out_features: size of each output sample, the number of neurons in this layer.
        bias: if ``False``, the layer has no bias :math:`b`. Default: ``True``.
        init: how :meth:`reset_parameters` draws the parameters, after the book:

            - ``"scaled"`` (default): weights :math:`\mathcal{N}(0, 1/\text{in\_features})`, biases
              :math:`\mathcal{N}(0, 1)`, the improved initialisation of chapter 3 (``network2.py``).
              It is the default because it keeps the weighted input :math:`z = \sum_k w_k x_k + b` of
              order 1, so :math:`\sigma'(z)` is not near 0 and the neurons do not start saturated,
              which by BP2-BP4 would make them learn slowly; the book shows it learning faster.
            - ``"normal"``: weights and biases :math:`\mathcal{N}(0, 1)`, as ``network.py`` in chapters
              1 and 2; use it to reproduce those chapters' results.
        device, dtype: where and how to allocate the parameters, as for ``nn.Linear``.

    Shape:
        - Input: :math:`(*, H_{in})` where :math:`H_{in} = \text{in\_features}`.
        - Output: :math:`(*, H_{out})` where :math:`H_{out} = \text{out\_features}`.

    Attributes:
        weight: the learnable weights of shape :math:`(H_{out}, H_{in})`; ``weight[j, k]`` is the
            book's :math:`w^l_{jk}`, from neuron k of the layer below to neuron j of this one.
        bias: the learnable biases of shape :math:`(H_{out})`.

    Examples::

        >>> layer = SigmoidLinear(784, 30)
        >>> layer(torch.rand(64, 784)).shape
        torch.Size([64, 30])
    """

    __constants__ = ["in_features", "out_features", "init"]
    in_features: int
    out_features: int
    weight: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: str = "scaled",
        device=None,
        dtype=None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        _check_positive_int("in_features", in_features)
        _check_positive_int("out_features", out_features)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        _check_float_dtype(dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.init = init
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory_kwargs))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights and biases again, by the layer's ``init`` scheme."""
        std = 1.0 / math.sqrt(self.in_features) if self.init == "scaled" else 1.0
        nn.init.normal_(self.weight, 0.0, std)
        if self.bias is not None:
            nn.init.normal_(self.bias, 0.0, 1.0)

    def forward(self, input: Tensor) -> Tensor:
        return F.sigmoid_linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, init={self.init!r}"
        )


class FullyConnected(nn.Module):
    r"""A fully-connected layer of any activation: :math:`a = f(x W^\top + b)`, ``network3.py``'s
    ``FullyConnectedLayer`` without its dropout.

    The forward pass and the gradients are :class:`~torch_manualbp.functional.FullyConnectedFunction`: its backward
    computes :math:`\delta = \partial C/\partial a \odot f'(z)` and from it BP3 and BP4, with no autograd inside.

    Args:
        in_features: size of each input sample, the number of neurons in the layer below.
        out_features: size of each output sample, the number of neurons in this layer.
        activation: a name in :data:`torch_manualbp.activations.ACTIVATIONS` or an
            :class:`~torch_manualbp.activations.Activation`. Default: ``"sigmoid"``.
        bias: if ``False``, the layer has no bias :math:`b`. Default: ``True``.
        device, dtype: where and how to allocate the parameters, as for ``nn.Linear``.

    :meth:`reset_parameters` draws weights :math:`\mathcal{N}(0, 1/\text{in\_features})` and biases
    :math:`\mathcal{N}(0, 1)`, chapter 3's initialisation, as :class:`SigmoidLinear`'s default.

    Shape:
        - Input: :math:`(*, H_{in})` where :math:`H_{in} = \text{in\_features}`.
        - Output: :math:`(*, H_{out})` where :math:`H_{out} = \text{out\_features}`.

    Examples::

        >>> layer = FullyConnected(784, 100, activation="relu")
        >>> layer(torch.rand(10, 784)).shape
        torch.Size([10, 100])
    """

    __constants__ = ["in_features", "out_features"]
    in_features: int
    out_features: int
    weight: Tensor

    def __init__(
        self, in_features: int, out_features: int, activation="sigmoid", bias: bool = True, device=None, dtype=None
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        _check_positive_int("in_features", in_features)
        _check_positive_int("out_features", out_features)
        _check_float_dtype(dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = get_activation(activation)
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory_kwargs))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights from N(0, 1/in_features) and the biases from N(0, 1) again."""
        nn.init.normal_(self.weight, 0.0, 1.0 / math.sqrt(self.in_features))
        if self.bias is not None:
            nn.init.normal_(self.bias, 0.0, 1.0)

    def forward(self, input: Tensor) -> Tensor:
        return F.fully_connected(input, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"activation={self.activation.name!r}, bias={self.bias is not None}"
        )


class ConvPool2d(nn.Module):
    r"""A convolutional layer with max-pooling, ``network3.py``'s ``ConvPoolLayer``:
    :math:`a = f(\operatorname{maxpool}_p(x \star w) + b)`, stride 1, no padding, non-overlapping :math:`p \times p`
    pools.

    The forward pass and the gradients are :class:`~torch_manualbp.conv.ConvPoolFunction`: its backward computes
    :math:`\delta = \partial C/\partial a \odot f'(z)`, routes it through the max-pool to each pool's winner, and from
    it BP2 (the full correlation with the flipped filters), BP3 and BP4, with no autograd inside.

    Args:
        in_channels: the number of input feature maps.
        out_channels: the number of feature maps this layer computes, one :math:`k \times k` filter (per input map)
            and one bias each.
        kernel_size: the side :math:`k` of the square local receptive field.
        pool_size: the side :math:`p` of each max-pool block; ``1`` pools nothing. Default: 2.
        activation: a name in :data:`torch_manualbp.activations.ACTIVATIONS` or an
            :class:`~torch_manualbp.activations.Activation`. Default: ``"sigmoid"``.
        bias: if ``False``, the layer has no bias :math:`b`. Default: ``True``.
        device, dtype: where and how to allocate the parameters, as for ``nn.Conv2d``.

    :meth:`reset_parameters` draws as ``network3.py`` does: weights :math:`\mathcal{N}(0, 1/n_{out})` with
    :math:`n_{out} = \text{out\_channels} \cdot k^2 / p^2`, biases :math:`\mathcal{N}(0, 1)`.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)` where :math:`C_{in} = \text{in\_channels}`.
        - Output: :math:`(N, C_{out}, \lfloor (H - k + 1)/p \rfloor, \lfloor (W - k + 1)/p \rfloor)` where
          :math:`C_{out} = \text{out\_channels}`.

    Attributes:
        weight: the learnable shared weights of shape :math:`(C_{out}, C_{in}, k, k)`.
        bias: the learnable shared biases of shape :math:`(C_{out})`.

    Examples::

        >>> layer = ConvPool2d(1, 20, 5, pool_size=2)
        >>> layer(torch.rand(10, 1, 28, 28)).shape
        torch.Size([10, 20, 12, 12])
    """

    __constants__ = ["in_channels", "out_channels", "kernel_size", "pool_size"]
    in_channels: int
    out_channels: int
    kernel_size: int
    pool_size: int
    weight: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        pool_size: int = 2,
        activation="sigmoid",
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        _check_positive_int("in_channels", in_channels, "feature maps")
        _check_positive_int("out_channels", out_channels, "feature maps")
        _check_positive_int("kernel_size", kernel_size, "pixels")
        _check_positive_int("pool_size", pool_size, "pixels")
        _check_float_dtype(dtype)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.pool_size = pool_size
        self.activation = get_activation(activation)
        self.weight = nn.Parameter(torch.empty((out_channels, in_channels, kernel_size, kernel_size), **factory_kwargs))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights from N(0, 1/n_out), n_out = out_channels k² / p², and the biases from N(0, 1) again."""
        n_out = self.out_channels * self.kernel_size**2 / self.pool_size**2  # the fan-out network3.py scales by
        nn.init.normal_(self.weight, 0.0, 1.0 / math.sqrt(n_out))
        if self.bias is not None:
            nn.init.normal_(self.bias, 0.0, 1.0)

    def forward(self, input: Tensor) -> Tensor:
        return F.conv_pool(input, self.weight, self.bias, self.pool_size, self.activation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, pool_size={self.pool_size}, "
            f"activation={self.activation.name!r}, bias={self.bias is not None}"
        )


def sigmoid_layers(module: nn.Module) -> list[SigmoidLinear]:
    """Every ``SigmoidLinear`` inside ``module``, in registration order (input side first in a ``Network``)."""
    return [m for m in module.modules() if isinstance(m, SigmoidLinear)]


def _check_float_dtype(dtype) -> None:
    if dtype is not None and not torch.empty((), dtype=dtype).is_floating_point():
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")


def _check_positive_int(name: str, value, of: str = "neurons") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive number of {of}, got {value}")
