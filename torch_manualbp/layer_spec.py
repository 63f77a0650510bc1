r"""Chapter 6's networks stated as a list of layers, one dict each, as a config writes them: :func:`build_layers` turns
the list into an ``nn.Sequential`` of the package's layers and :class:`LayerNetwork` wraps it with the cost, as
``ManualBPClassifier(layers=...)`` and ``manualbp fit`` train it.

The form, in YAML (``model.layers``) or Python alike, input first, MNIST's :math:`1 \times 28 \times 28` images
going in::

    layers:
      - conv_pool: [20, 5, 2]      # 20 feature maps, 5 x 5 local receptive fields, 2 x 2 max-pooling
        activation: relu           # sigmoid (default, network3's), tanh, relu or linear
      - fully_connected: 100       # 100 neurons
        activation: relu
      - softmax: 10                # the output layer: the log-likelihood cost's softmax, one neuron per digit

which is ``network3.py``'s ``[ConvPoolLayer(image_shape=(m, 1, 28, 28), filter_shape=(20, 1, 5, 5),
poolsize=(2, 2), activation_fn=ReLU), FullyConnectedLayer(n_in=20*12*12, n_out=100, activation_fn=ReLU),
SoftmaxLayer(n_in=100, n_out=10)]``: each layer's input size follows from the one below, so the list says only
what ``network3.py``'s ``filter_shape[0]``, ``filter_shape[2:]``, ``poolsize`` and ``n_out`` say. The parameters are
drawn as ``network3.py`` draws them: a conv-pool layer's weights :math:`\mathcal{N}(0, 1/n_{out})`,
:math:`n_{out} = \text{maps} \cdot k^2 / p^2`, a fully connected layer's :math:`\mathcal{N}(0, 1/\text{n\_out})`,
biases :math:`\mathcal{N}(0, 1)`, and the softmax layer's weights and biases zero.

A fully connected or softmax layer may set ``dropout: p``, ``network3.py``'s ``p_dropout`` of that layer (chapter 6's
rung 7 has ``dropout: 0.5`` on its two ``fully_connected: 1000`` layers and its softmax): in training each entry of
the layer's *input* is removed (set to 0) with probability :math:`p`, a fresh mask for every example and every
mini-batch, the kept entries not rescaled; in evaluation the whole input goes in and the layer's weights are scaled
by :math:`1 - p` instead (:class:`LayerNetwork`'s ``forward`` and ``output_and_cost``). A conv-pool layer has none,
as ``network3.py``'s ``ConvPoolLayer`` has none.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .activations import ACTIVATIONS
from .checks import targets
from .costs import get_cost
from .equations import a_minus_y
from .functional import DropoutFunction
from .nn import ConvPool2d, FullyConnected

__all__ = ["LAYER_KINDS", "INPUT_SHAPE", "check_layers", "build_layers", "LayerNetwork"]

#: Each kind of layer and what its value is.
LAYER_KINDS = {
    "conv_pool": "[feature_maps, kernel_size, pool_size]",
    "fully_connected": "the number of neurons",
    "softmax": "the number of output neurons, 10",
}
#: The images every network of layers takes: MNIST's, one channel of 28 x 28 pixels (rows of 784 are reshaped).
INPUT_SHAPE = (1, 28, 28)
_CLASSES = 10


def check_layers(layers) -> list[tuple[str, tuple[int, ...], str, float]]:
    """The layers of ``layers`` (a list of dicts, see the module docstring) as ``(kind, numbers, activation,
    dropout)``, each fitting the one below it; a one-line ``ValueError`` (``TypeError`` for a value of the wrong type)
    starting with ``layers[i]`` for the first that is not what is expected."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError(f"layers must be a non-empty list of layers such as {{'fully_connected': 100}}, got {layers!r}")
    shape = INPUT_SHAPE  # (C, H, W) of the images, then (n,) once a fully connected layer has flattened them
    checked = []
    for i, layer in enumerate(layers):
        where = f"layers[{i}]"
        if not isinstance(layer, dict):
            raise TypeError(f"{where} must be a dict such as {{'fully_connected': 100}}, got {layer!r}")
        kinds = [key for key in layer if key in LAYER_KINDS]
        others = [key for key in layer if key not in LAYER_KINDS and key not in ("activation", "dropout")]
        if others or len(kinds) != 1:
            known = ", ".join(LAYER_KINDS)
            raise ValueError(
                f"{where} must name one kind of layer ({known}) and may set activation and dropout, got {layer!r}"
            )
        kind = kinds[0]
        activation = layer.get("activation", "linear" if kind == "softmax" else "sigmoid")
        if kind == "softmax" and "activation" in layer:
            raise ValueError(f"{where}: the softmax layer's activation is the softmax; leave out activation")
        if activation not in ACTIVATIONS:
            raise ValueError(f"{where}: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        value = layer[kind]
        numbers = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        arity = 3 if kind == "conv_pool" else 1
        if len(numbers) != arity or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in numbers):
            raise ValueError(f"{where}: {kind} takes {LAYER_KINDS[kind]}, positive ints, got {value!r}")
        last = i == len(layers) - 1
        if kind == "softmax" and not last:
            raise ValueError(f"{where}: the softmax layer is the output layer, the last; got {len(layers)} layers")
        if last and kind != "softmax":
            raise ValueError(
                f"{where}: the last layer must be the output layer, {{'softmax': {_CLASSES}}}; got {layer!r}"
            )
        if kind == "softmax" and numbers[0] != _CLASSES:
            raise ValueError(f"{where}: softmax must have {_CLASSES} neurons (one per digit), got {numbers[0]}")
        if kind == "conv_pool":
            if len(shape) != 3:
                raise ValueError(
                    f"{where}: a conv_pool layer takes feature maps, and the layer below is fully connected"
                )
            maps, kernel, pool = numbers
            side = shape[1] - kernel + 1  # the convolution's output, stride 1, no padding
            if side < 1:
                raise ValueError(
                    f"{where}: a {kernel} x {kernel} field does not fit the {shape[1]} x {shape[2]} maps below"
                )
            if side % pool:
                raise ValueError(
                    f"{where}: a {pool} x {pool} pool must divide the convolution's {side} x {side} output"
                    f" ({shape[1]} - {kernel} + 1); got pool_size {pool}"
                )
            shape = (maps, side // pool, side // pool)
        else:
            shape = (numbers[0],)
        checked.append((kind, numbers, activation, _check_layer_dropout(where, kind, layer)))
    return checked


def _check_layer_dropout(where: str, kind: str, layer: dict) -> float:
    """The layer's ``dropout`` (network3's ``p_dropout``, 0 if not given) as a float, or one line naming
    ``layers[i].dropout``."""
    if "dropout" not in layer:
        return 0.0
    p = layer["dropout"]
    if kind == "conv_pool":
        raise ValueError(
            f"{where}.dropout={p!r}: network3.py's conv-pool layers have no dropout; give it to a fully_connected or"
            " softmax layer (its input's entries are dropped)"
        )
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{where}.dropout must be a number, the fraction of the layer's inputs dropped, got {p!r}")
    if not 0 <= p < 1:
        raise ValueError(f"{where}.dropout must be a fraction in [0, 1) of the layer's inputs to drop, got {p!r}")
    return float(p)


def build_layers(layers, device=None, dtype=None) -> nn.Sequential:
    r"""The ``nn.Sequential`` the dicts of ``layers`` describe (checked by :func:`check_layers`): ``ConvPool2d``\ s,
    an ``nn.Flatten`` before the first fully connected layer that follows one, ``FullyConnected``\ s, and a linear
    ``FullyConnected`` of 10 at the top, whose output :math:`z^L` the softmax turns into :math:`a^L`; the parameters
    drawn from torch's global generator as ``network3.py`` draws them (see the module docstring)."""
    modules, shape = [], INPUT_SHAPE
    for kind, numbers, activation, _ in check_layers(layers):
        if kind == "conv_pool":
            maps, kernel, pool = numbers
            modules.append(ConvPool2d(shape[0], maps, kernel, pool, activation, device=device, dtype=dtype))
            side = (shape[1] - kernel + 1) // pool
            shape = (maps, side, side)
            continue
        if len(shape) == 3:
            modules.append(nn.Flatten())
            shape = (math.prod(shape),)
        layer = FullyConnected(shape[0], numbers[0], activation, device=device, dtype=dtype)
        with torch.no_grad():
            if kind == "softmax":  # network3's SoftmaxLayer starts at zero
                layer.weight.zero_()
                layer.bias.zero_()
            else:  # network3's FullyConnectedLayer: N(0, 1/n_out), where FullyConnected draws N(0, 1/n_in)
                layer.weight.normal_(0.0, 1.0 / math.sqrt(numbers[0]))
        modules.append(layer)
        shape = (numbers[0],)
    return nn.Sequential(*modules)


class LayerNetwork(nn.Module):
    r"""A network of chapter 6's layers with the log-likelihood cost: what ``ManualBPClassifier(layers=...)`` trains.

    ``layers`` (an ``nn.Sequential`` from :func:`build_layers`) holds the parameters; the softmax output layer is the
    cost's (:class:`~torch_manualbp.costs.LogLikelihood`), as ``Network(sizes, cost="log_likelihood")``'s is. Rows
    of 784 pixels are reshaped to :math:`(N, 1, 28, 28)` images before the first layer.

    A layer's ``dropout`` :math:`p` (``dropouts``) drops entries of its input in training, by the masks a step is
    given (:meth:`cost`, :func:`~torch_manualbp.sequential.sgd_step`); ``forward`` and :meth:`output_and_cost`, the
    evaluation, take the whole input with the layer's weights scaled by :math:`1 - p`, ``network3.py``'s rule.

    Args:
        layers: the layer dicts (see the module docstring).
        device, dtype: where and how to allocate the parameters.

    Attributes:
        dropouts: each module of ``layers``' dropout :math:`p` of its input, 0 where none (``nn.Flatten`` and the
            conv-pool layers included).

    Shape:
        - Input: :math:`(N, 784)` or :math:`(N, 1, 28, 28)`.
        - Output: :math:`(N, 10)`, the softmax's :math:`a^L`.

    Examples::

        >>> net = LayerNetwork([{"conv_pool": [20, 5, 2]}, {"fully_connected": 100}, {"softmax": 10}])
        >>> net(torch.rand(3, 784)).shape
        torch.Size([3, 10])
        >>> LayerNetwork([{"fully_connected": 100}, {"softmax": 10, "dropout": 0.5}]).dropouts  # Flatten first
        (0.0, 0.0, 0.5)
    """

    def __init__(self, layers, device=None, dtype=None) -> None:
        super().__init__()
        self.layers = build_layers(layers, device=device, dtype=dtype)
        self.cost_function = get_cost("log_likelihood")
        given = iter([dropout for *_, dropout in check_layers(layers)])  # one per layer dict, input first
        self.dropouts = tuple(0.0 if isinstance(m, nn.Flatten) else next(given) for m in self.layers)

    @property
    def cost_name(self) -> str:
        return self.cost_function.name

    @property
    def has_dropout(self) -> bool:
        """Whether any layer drops entries of its input in training."""
        return any(self.dropouts)

    def images(self, x: Tensor) -> Tensor:
        """``x`` as the first layer takes it: :math:`(N, 1, 28, 28)` images for a conv-pool layer, rows of 784 for a
        fully connected one; raises in one line for anything else."""
        self.check_batch(x)
        first_conv = isinstance(self.layers[0], ConvPool2d)
        return x.reshape(len(x), *INPUT_SHAPE) if first_conv else x.reshape(len(x), -1)

    def check_batch(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) not in ((math.prod(INPUT_SHAPE),), INPUT_SHAPE):
            raise ValueError(f"x must have shape (N, 784) or (N, 1, 28, 28): MNIST images; got {tuple(x.shape)}")

    def _evaluation_input(self, a: Tensor, i: int) -> Tensor:
        r"""Layer ``i``'s input in evaluation: ``a`` itself, or :math:`(1 - p) a` for a dropout layer, whose
        :math:`((1 - p) a) W^\top` is :math:`a ((1 - p) W)^\top`, network3's whole input into the scaled weights."""
        p = self.dropouts[i]
        return a * (1 - p) if p else a  # (dropout, evaluation) the weights scaled by 1 − p

    def forward(self, x: Tensor) -> Tensor:
        """The output activations :math:`a^L` of the whole network, each dropout layer's weights scaled by
        :math:`1 - p` (evaluation's, as ``network3.py``'s ``output``)."""
        *body, top = self.layers
        a = self.images(x)
        for i, layer in enumerate(body):
            a = layer(self._evaluation_input(a, i))
        return self.cost_function.output(self._evaluation_input(a, len(body)), top)  # aᴸ = softmax(zᴸ)

    def cost(self, x: Tensor, y: Tensor, masks=None) -> Tensor:
        r"""The mean log-likelihood :math:`C_0` of a mini-batch through the layers' Functions, the softmax output layer
        and the cost one node (whose backward starts at BP1, :math:`\delta^L = a^L - y`): autograd's path.
        ``y``: one-hot floats or labels.

        ``masks``: for a network with dropout, the training step's masks, one per module of ``layers`` (``None``
        where the layer has no dropout), each shaped like that layer's input, :math:`(N, n_{in})`, 1 kept and 0
        dropped, applied by :class:`~torch_manualbp.functional.DropoutFunction` (whose backward masks
        :math:`\partial C/\partial a` the same way); required then, as a cost without them would not be the one
        trained (:class:`~torch_manualbp.sequential_engine.SequentialSGD` draws them)."""
        masks = self._check_masks(masks)
        *body, top = self.layers
        a = self.images(x)
        for i, layer in enumerate(body):
            a = layer(a if masks[i] is None else DropoutFunction.apply(a, masks[i]))
        a = a if masks[-1] is None else DropoutFunction.apply(a, masks[-1])
        return self.cost_function.layered_cost(a, top, y)

    #: the same through the per-layer Functions, which follow autocast (``Network.layered_cost``'s role)
    layered_cost = cost

    def _check_masks(self, masks) -> list:
        """``masks`` as one entry per module (``None`` for a network without dropout: none); one line naming
        ``masks`` otherwise."""
        if masks is None:
            if self.has_dropout:
                dropped = ", ".join(f"self.layers[{i}] p={p:g}" for i, p in enumerate(self.dropouts) if p)
                raise ValueError(
                    f"masks: this network drops its layers' inputs in training ({dropped}); give the step's dropout"
                    " masks (SequentialSGD draws them), or evaluate it by forward or output_and_cost; it trains on"
                    " the fused path only"
                )
            return [None] * len(self.layers)
        masks = list(masks)
        if len(masks) != len(self.layers):
            raise ValueError(f"masks must hold one entry per module of layers, {len(self.layers)}; got {len(masks)}")
        for i, (mask, p) in enumerate(zip(masks, self.dropouts)):
            if (mask is None) != (not p):
                raise ValueError(f"masks[{i}] must be {'a mask' if p else 'None'}: layers[{i}]'s dropout is {p:g}")
        return masks

    @torch.no_grad()
    def output_and_cost(self, x: Tensor, y: Tensor, dropout: float = 0.0) -> tuple[Tensor, Tensor]:
        """:math:`a^L` and the mean cost :math:`C_0` from one feedforward of the whole network, without autograd
        (evaluation's: each dropout layer's weights scaled by :math:`1 - p`); ``dropout`` must be 0 (``Network``'s
        setting: these layers carry their own)."""
        if dropout:
            raise ValueError(f"dropout must be 0 for a network of layers (each layer sets its own), got {dropout}")
        a = self.images(x)
        for i, layer in enumerate(self.layers):
            a = layer(self._evaluation_input(a, i))
        z = a  # zᴸ, the top layer being linear
        a = self.cost_function.activation(z)
        y = targets(y, tuple(a.shape), a)
        return a, self.cost_function.mean(z, a_minus_y(a, y), y)

    def weights_and_biases(self) -> tuple[list[Tensor], list[Tensor]]:
        """The layers' weights (which L2 decays) and biases, input side first."""
        layers = [layer for layer in self.layers if not isinstance(layer, nn.Flatten)]
        return [layer.weight for layer in layers], [layer.bias for layer in layers]
