r"""Watch the errors :math:`\delta^l` that an ordinary ``backward()`` computes, without changing it.

Autograd hides the book's "demon", the error :math:`\delta^l_j = \partial C/\partial z^l_j` of each neuron.
Here the backward of :class:`~torch_manualbp.functional.SigmoidLinearFunction` computes it explicitly
(BP1/BP2), so it can hand a detached copy to whoever is listening:

    >>> net = Network([784, 30, 10])
    >>> with record_errors() as record:
    ...     quadratic_cost(net(x), labels).backward()
    >>> [e.delta.shape for e in record.for_network(net)]   # input side first
    [torch.Size([10, 30]), torch.Size([10, 10])]

Each entry holds :math:`\partial C/\partial z^l` for the cost being differentiated, one row per example;
for the mean cost :math:`C = \frac1n \sum_x C_x` that is :math:`\delta^{x,l}/n`, the book's per-example
error divided by the batch size. It also holds :math:`\sigma'(z^l)`, which says which neurons are
saturated, and the layer's input :math:`a^{l-1}`. When no recording is active, the backward pays one
check of an empty list.

Those two rows per example are all that per-example gradients need: by BP4 one example's weight gradient is
:math:`\partial C_x/\partial W^l = \delta^{x,l} (a^{x,l-1})^\top`, an outer product, so its squared norm is
:math:`\lVert\delta^{x,l}\rVert^2 \lVert a^{x,l-1}\rVert^2` and the elementwise sum of squares over the batch is
:math:`(\delta^{l} \odot \delta^{l})^\top (a^{l-1} \odot a^{l-1})`; no example's weight gradient is ever formed.
:func:`gradient_statistics` computes these statistics (BackPACK's BatchL2Grad, SumGradSquared and Variance, and
the gradient noise scale of McCandlish et al. 2018) with one pass of its own, and
:meth:`ErrorRecord.gradient_statistics` from what a recorded ``backward()`` saw.

:func:`nudge_weighted_input` is the chapter's demon, made experimental: inside it, one neuron's weighted input
:math:`z^l_j` becomes :math:`z^l_j + \Delta z` in every forward pass of its layer, so the cost's change
:math:`\Delta C \approx \delta^l_j \Delta z` can be measured (``experiments/demon.py``):

    >>> with nudge_weighted_input(net.layers[0], neuron=3, delta_z=1e-3):
    ...     nudged = quadratic_cost(net(x), labels, reduction="none")  # C_x with z^2_3 + Δz, one per example
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .functional import sigmoid_linear
from .gradient_stats import (
    GradientStatistics,
    LayerGradientStatistics,
    ParameterStatistics,
    _check_two_examples,
    _statistics,
    gradient_statistics,
)
from .network import Network
from .nn import SigmoidLinear, sigmoid_layers
from .recording import LayerErrors, is_recording, listening, notify  # the hook, re-exported: observe.notify() etc.

__all__ = [
    "LayerErrors",
    "ErrorRecord",
    "record_errors",
    "nudge_weighted_input",
    "NudgedForwards",
    "is_recording",
    "notify",
    "ParameterStatistics",
    "LayerGradientStatistics",
    "GradientStatistics",
    "gradient_statistics",
]


@dataclass
class ErrorRecord:
    """The layers' errors from the backward passes run while it was active, in the order computed
    (output layer first, as backpropagation goes)."""

    entries: list[LayerErrors] = field(default_factory=list)

    def for_weight(self, weight: Tensor) -> LayerErrors:
        """The latest entry of the layer whose weight parameter is ``weight``."""
        for entry in reversed(self.entries):
            if entry.weight is weight:
                return entry
        raise KeyError("no backward through a layer with this weight was recorded")

    def for_network(self, network: torch.nn.Module) -> list[LayerErrors]:
        """The latest entry of each ``SigmoidLinear`` in ``network`` (of a ``Network``, each of its layers, whatever
        its activation), input side first."""
        return [self.for_weight(layer.weight) for layer in _recorded_layers(network)]

    def gradient_statistics(self, network: torch.nn.Module, reduction: str = "mean") -> GradientStatistics:
        r"""The statistics of :func:`gradient_statistics`, from the latest recorded backward through ``network``.

        The recorded :math:`\partial C/\partial z^l` belongs to the cost that was differentiated; the statistics
        are those of the examples' own costs :math:`C_x`, so ``reduction`` says how that cost was made of them:
        ``"mean"`` (default; ``quadratic_cost``, ``Network.cost``) for :math:`C = \frac1N\sum_x C_x`, whose
        recorded errors are :math:`\delta^{x,l}/N` and are multiplied by N here, or ``"sum"`` for
        :math:`\sum_x C_x`. Any other factor c on the cost (say, ``(0.5 * cost).backward()``) multiplies the means
        by c and the squared statistics by c², and leaves the noise scale unchanged.

        Args:
            network: the module whose ``SigmoidLinear`` layers the backward went through: a ``Network`` or any
                other module made of them. A layer without bias gets ``bias=None``.
            reduction: ``"mean"`` or ``"sum"``, as above.

        Shape:
            The recorded backward's mini-batch held :math:`N \ge 2` examples; the result is shaped as for
            :func:`gradient_statistics`.

        Examples::

            >>> with record_errors() as record:
            ...     quadratic_cost(net(x), labels).backward()
            >>> record.gradient_statistics(net).noise_scale
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', how the recorded cost was reduced, got {reduction!r}")
        entries = self.for_network(network)
        if not entries:
            raise ValueError(f"network has no SigmoidLinear layers to take statistics of ({type(network).__name__})")
        n = entries[0].delta.shape[0]
        _check_two_examples("the recorded mini-batch", n)
        deltas, inputs, sum_w, sum_b = [], [], [], []
        for layer, entry in zip(_recorded_layers(network), entries):
            # in at least float32: under autocast δ is bf16/fp16 while the input may be float32
            dtype = torch.promote_types(torch.promote_types(entry.delta.dtype, entry.input.dtype), torch.float32)
            delta = entry.delta.to(dtype) * (n if reduction == "mean" else 1)  # (N, H_l), the book's δ^{x,l}
            a_in = entry.input.to(dtype)  # (N, H_{l−1})
            deltas.append(delta)
            inputs.append(a_in)
            sum_w.append(delta.T @ a_in)  # (BP4) Σ_x δ^{x,l} (a^{x,l−1})ᵀ
            sum_b.append(delta.sum(0) if layer.bias is not None else None)  # (BP3) Σ_x δ^{x,l}
        return _statistics(deltas, inputs, sum_w, sum_b)


@contextmanager
def record_errors() -> Iterator[ErrorRecord]:
    """Record every sigmoid layer's :math:`\\partial C/\\partial z` and :math:`\\sigma'(z)` during backward."""
    record = ErrorRecord()
    with listening(record.entries):
        yield record


@dataclass
class NudgedForwards:
    """What :func:`nudge_weighted_input` yields: ``count``, how many forward passes of the layer it has nudged so far
    (0 says the cost was computed without going through the layer's ``forward``)."""

    count: int = 0


@contextmanager
def nudge_weighted_input(layer: SigmoidLinear, neuron: int, delta_z: float) -> Iterator[NudgedForwards]:
    r"""The chapter's demon: inside, neuron ``neuron`` of ``layer`` outputs :math:`\sigma(z_j + \Delta z)` in place
    of :math:`\sigma(z_j)`, for every example of every forward pass, so that the cost changes by about
    :math:`\delta_j \Delta z`, where :math:`\delta_j = \partial C/\partial z_j`.

    It is a forward hook on the layer: the layer's output is replaced by that of its own Function,
    :func:`~torch_manualbp.functional.sigmoid_linear`, with the bias :math:`b_j` read as :math:`b_j + \Delta z`
    (:math:`z_j = \sum_k w_{jk} a_k + b_j`, so that is :math:`z_j + \Delta z`). No parameter is written; the hook is
    removed on leaving, also when the block raises, and gradients still reach the layer's weight and bias.
    ``Network.forward`` calls its layers (all but a log-likelihood network's softmax output layer), so the hook
    applies to ``network(x)`` and to the costs of its output; ``Network.backprop``, ``Network.cost`` and
    ``Network.sgd_step`` compute from the parameters without calling the layers, and are not nudged (the yielded
    ``count`` shows it).

    Args:
        layer: the :class:`~torch_manualbp.nn.SigmoidLinear` of the book's layer l; in a ``Network``,
            ``network.layers[l - 2]`` (the book numbers the input layer 1).
        neuron: the index j of the neuron, ``0 <= neuron < layer.out_features``.
        delta_z: :math:`\Delta z`, a finite number.

    Yields:
        :class:`NudgedForwards`, counting the nudged forward passes.

    Examples::

        >>> net = Network([784, 30, 10], dtype=torch.float64)
        >>> x, labels = torch.rand(5, 784, dtype=torch.float64), torch.randint(0, 10, (5,))
        >>> before = quadratic_cost(net(x), labels, reduction="none")  # C_x, one per example
        >>> with nudge_weighted_input(net.layers[0], neuron=3, delta_z=1e-3):
        ...     after = quadratic_cost(net(x), labels, reduction="none")
        >>> after - before  # ≈ δ²₃ Δz per example: net.backprop(x, labels).delta[0][:, 3] * 1e-3
    """
    if not isinstance(layer, SigmoidLinear):
        raise TypeError(
            f"layer must be a torch_manualbp.nn.SigmoidLinear (network.layers[l - 2]), got {type(layer).__name__}"
        )
    if isinstance(neuron, bool) or not isinstance(neuron, int) or not 0 <= neuron < layer.out_features:
        raise ValueError(
            f"neuron must be an int in 0..{layer.out_features - 1} (the layer's out_features), got {neuron!r}"
        )
    if isinstance(delta_z, bool) or not isinstance(delta_z, (int, float)) or not math.isfinite(delta_z):
        raise ValueError(f"delta_z must be a finite number, got {delta_z!r}")
    nudged = NudgedForwards()

    def demon(module: SigmoidLinear, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        shift = torch.zeros(module.out_features, dtype=output.dtype, device=output.device)
        shift[neuron] = delta_z
        bias = shift if module.bias is None else module.bias + shift  # a new tensor: the parameter is not written
        nudged.count += 1
        return sigmoid_linear(inputs[0], module.weight, bias)  # σ(z + Δz e_j), by the layer's own Function

    handle = layer.register_forward_hook(demon)
    try:
        yield nudged
    finally:
        handle.remove()


def _recorded_layers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers whose backward hands the recordings their errors: a ``Network``'s every layer (its whole-network
    backward and its step notify each, whatever the hidden activation), else the module's ``SigmoidLinear``s."""
    return list(network.layers) if isinstance(network, Network) else sigmoid_layers(network)
