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

from .checks import targets
from .equations import backpropagate
from .functional import sigmoid_linear
from .network import Network, feedforward_to_cost
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


@dataclass(frozen=True)
class ParameterStatistics:
    r"""Statistics of one parameter :math:`\theta`'s per-example gradients :math:`g_x = \partial C_x/\partial\theta`,
    where :math:`C_x = \tfrac12\lVert y(x) - a^L(x)\rVert^2` is example x's own cost (the book's per-example nabla).

    BackPACK computes the same quantities for the gradients of the cost that was differentiated: for a cost
    that is a sum over examples (``reduction="sum"``) its ``sum_grad_squared`` and ``variance`` are these, and
    for a mean (``reduction="mean"``) each of its per-example gradients is :math:`g_x/N`, so its
    ``sum_grad_squared`` and ``variance`` are these divided by :math:`N^2`.

    Attributes:
        mean: :math:`\bar g = \frac1N \sum_x g_x`, the gradient of the mean cost :math:`C`.
        sum_grad_squared: :math:`\sum_x g_x \odot g_x`, elementwise.
        variance: :math:`\frac1N \sum_x (g_x - \bar g)^2`, elementwise; divided by N like BackPACK's ``Variance``
            (multiply by :math:`N/(N-1)` for the unbiased estimate).

    Shape:
        Every attribute has the shape of the parameter.
    """

    mean: Tensor
    sum_grad_squared: Tensor
    variance: Tensor


@dataclass(frozen=True)
class LayerGradientStatistics:
    r"""The per-example gradient statistics of one sigmoid layer, and its gradient noise scale.

    Attributes:
        weight: :class:`ParameterStatistics` of :math:`W^l`.
        bias: :class:`ParameterStatistics` of :math:`b^l`, or ``None`` for a layer without bias.
        true_grad_sq_norm, trace_covariance, noise_scale: as in :class:`GradientStatistics`, for this
            layer's parameters only.
    """

    weight: ParameterStatistics
    bias: ParameterStatistics | None
    true_grad_sq_norm: Tensor
    trace_covariance: Tensor
    noise_scale: Tensor


@dataclass(frozen=True)
class GradientStatistics:
    r"""What :func:`gradient_statistics` returns: per-example gradient statistics of a mini-batch of N examples.

    The noise scale is the "simple" one of McCandlish et al. (2018, "An Empirical Model of Large-Batch
    Training"), :math:`B_\text{simple} = \operatorname{tr}\Sigma / \lvert G\rvert^2`: the mini-batch size at which
    the gradient's noise is as large as its signal, beyond which larger batches give diminishing returns.
    :math:`\lvert G\rvert^2` and :math:`S = \operatorname{tr}\Sigma` are the paper's unbiased estimators
    (appendix A) from the batch sizes :math:`B_\text{small} = 1` (each :math:`g_x`) and :math:`B_\text{big} = N`
    (their mean :math:`\bar g`):

    .. math::
        \lvert G\rvert^2 \approx \frac{N\lVert\bar g\rVert^2 - \frac1N\sum_x\lVert g_x\rVert^2}{N - 1}, \qquad
        S \approx \frac{\frac1N\sum_x\lVert g_x\rVert^2 - \lVert\bar g\rVert^2}{1 - 1/N}

    One batch gives a noisy estimate, and :math:`\lvert G\rvert^2`'s may even be negative when the noise
    dominates; the paper averages :math:`\lvert G\rvert^2` and :math:`S` over many batches before dividing.

    Attributes:
        per_example_sq_norm: :math:`\lVert\partial C_x/\partial W^l\rVert^2 + \lVert\partial C_x/\partial b^l\rVert^2`
            per example and layer, input side first: BackPACK's BatchL2Grad of the weight plus that of the bias
            for a sum cost, and :math:`N^2` times it for a mean cost.
        layers: one :class:`LayerGradientStatistics` per sigmoid layer, input side first.
        true_grad_sq_norm: the estimate of :math:`\lvert G\rvert^2`, all parameters together.
        trace_covariance: the estimate of :math:`S = \operatorname{tr}\Sigma` of one example's gradient.
        noise_scale: :math:`B_\text{simple} = S/\lvert G\rvert^2`.

    Shape:
        - per_example_sq_norm: :math:`(N, L)` for L layers.
        - true_grad_sq_norm, trace_covariance, noise_scale: scalars.
    """

    per_example_sq_norm: Tensor
    layers: list[LayerGradientStatistics]
    true_grad_sq_norm: Tensor
    trace_covariance: Tensor
    noise_scale: Tensor


@torch.no_grad()
def gradient_statistics(network: torch.nn.Module, x: Tensor, y: Tensor) -> GradientStatistics:
    r"""Per-example gradient statistics of a mini-batch and its gradient noise scale, in one BP1-BP4 pass.

    One :func:`~torch_manualbp.network.feedforward_to_cost` and one :func:`~torch_manualbp.network.backpropagate`
    with the error :math:`a^L - y` give each example's own :math:`\delta^{x,l}` (a row of each layer's error),
    and with the activations :math:`a^{x,l-1}` that is every per-example gradient by BP3/BP4, in outer-product
    form: nothing of size N times a weight matrix is formed, the extra memory is :math:`O(N \sum_l H_l)`. No
    autograd is used, no parameter is changed and no ``.grad`` is written. :math:`C_x` is the network's own cost
    of one example: :math:`\tfrac12\lVert y - a^L\rVert^2` by default, the cross-entropy for
    ``Network(sizes, cost="cross_entropy")`` (then BP1 gives :math:`\delta^{x,L} = a^{x,L} - y`).

    Args:
        network: a :class:`~torch_manualbp.network.Network`.
        x: a mini-batch of at least two inputs, one example per row, in the network's dtype and device.
        y: the desired outputs, floats shaped like the output or integer class labels.

    Shape:
        - x: :math:`(N, \text{sizes}[0])`, :math:`N \ge 2`.
        - y: :math:`(N, \text{sizes}[-1])` or :math:`(N)`.

    Returns:
        :class:`GradientStatistics`.

    Raises:
        TypeError: ``network`` is not a ``Network``, or ``x``/``y`` are not tensors of a fitting dtype.
        ValueError: a shape does not fit, ``x`` has fewer than two examples, or a label is out of range.

    Examples::

        >>> net = Network([784, 30, 10])
        >>> stats = gradient_statistics(net, torch.rand(100, 784), torch.randint(0, 10, (100,)))
        >>> stats.per_example_sq_norm.shape, stats.layers[0].weight.variance.shape
        (torch.Size([100, 2]), torch.Size([30, 784]))
        >>> stats.noise_scale  # B_simple, in examples
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a torch_manualbp.Network, got {type(network).__name__}")
    network.check_batch(x)
    _check_two_examples("x", len(x))
    weights = [layer.weight for layer in network.layers]  # under no_grad: no graph is built
    y = targets(y, (x.shape[0], network.sizes[-1]), x)
    biases, cost = [layer.bias for layer in network.layers], network.cost_function
    primes = None if network._hidden is None else []  # f'(zˡ) of the hidden layers, for BP2
    activations, _ = feedforward_to_cost(x, weights, biases, cost, None, network._hidden, primes)
    output_minus_y = activations[-1] - y  # aᴸ − y: BP1 turns it into each example's δ^{x,L}
    sum_w, sum_b, deltas = backpropagate(weights, activations, output_minus_y, cost, primes)
    return _statistics(deltas, activations[:-1], sum_w, sum_b)


def _statistics(
    deltas: list[Tensor], inputs: list[Tensor], sum_w: list[Tensor], sum_b: list[Tensor | None]
) -> GradientStatistics:
    r"""GradientStatistics from each layer's per-example errors :math:`\delta^{x,l}` ``(N, H_l)``, inputs
    :math:`a^{x,l-1}` ``(N, H_{l-1})`` and gradient sums :math:`\sum_x \delta^{x,l} (a^{x,l-1})^\top` and
    :math:`\sum_x \delta^{x,l}` (``None``: the layer has no bias).

    Each pass over a parameter-sized tensor costs about as much as the step's own update, and at the book's
    mini-batches each op's overhead as much again, so the elementwise work on all parameters goes through one
    ``torch._foreach_*`` call each (as ``torch.optim``'s foreach steps do), with 1/N as a 0-d tensor: a product with
    a Python float (a double) takes a slower, casting path on the CPU."""
    n = deltas[0].shape[0]
    inv_n = torch.full((), 1.0 / n, dtype=deltas[0].dtype, device=deltas[0].device)
    delta_sq = torch._foreach_mul(deltas, deltas)  # (δ^{x,l})², (N, H_l)
    a_sq = torch._foreach_mul(inputs, inputs)  # (a^{x,l−1})², (N, H_{l−1})
    # every parameter's Σ_x g_x and Σ_x g_x ⊙ g_x, W¹, b¹, W², b², ...; a layer without bias has empty stand-ins
    # for b, so that every layer has two entries
    sums, sums_sq, sq_norms = [], [], []
    for d_sq, in_sq, s_w, s_b in zip(delta_sq, a_sq, sum_w, sum_b):
        delta_sq_norm = d_sq.sum(1)  # ‖δ^{x,l}‖² = ‖∂C_x/∂bˡ‖², (N,)
        if s_b is None:
            sq_norms.append(delta_sq_norm * in_sq.sum(1))  # ‖δ^{x,l} (a^{x,l−1})ᵀ‖² = ‖δ^{x,l}‖² ‖a^{x,l−1}‖²
            s_b = s_b_sq = d_sq.new_empty(0)
        else:
            sq_norms.append(torch.addcmul(delta_sq_norm, delta_sq_norm, in_sq.sum(1)))  # ‖∂C_x/∂Wˡ‖² + ‖∂C_x/∂bˡ‖²
            s_b_sq = d_sq.sum(0)  # Σ_x (δ^{x,l})²
        sums += [s_w, s_b]
        sums_sq += [d_sq.T @ in_sq, s_b_sq]  # Σ_x (δ^{x,l})² ((a^{x,l−1})²)ᵀ: no per-example gradient formed
    means = torch._foreach_mul(sums, inv_n)  # ḡ = ∂C/∂θ
    variances = torch._foreach_mul(sums_sq, inv_n)
    torch._foreach_addcmul_(variances, means, means, value=-1)  # (1/N) Σ_x g_x² − ḡ²
    torch._foreach_clamp_min_(variances, 0.0)  # which rounding can leave just below 0 where every g_x is the same
    per_example_sq_norm = torch.stack(sq_norms, dim=1)  # (N, L)
    mean_norms = torch.stack(torch._foreach_norm(means)).view(-1, 2)  # (L, 2): ‖ḡ‖ of each W and b
    norms = torch.stack([per_example_sq_norm.mean(0), torch.linalg.vecdot(mean_norms, mean_norms)])  # (2, L)
    norms = torch.cat([norms, norms.sum(1, keepdim=True)], dim=1)  # (2, L + 1): all parameters together last
    true_grad_sq_norm, trace_covariance, noise_scale = _noise_scale(*norms.unbind(), n)
    parameters = [ParameterStatistics(*stats) for stats in zip(means, sums_sq, variances)]
    *per_layer, total = zip(true_grad_sq_norm.unbind(), trace_covariance.unbind(), noise_scale.unbind())
    return GradientStatistics(
        per_example_sq_norm,
        [
            LayerGradientStatistics(weight, None if s_b is None else bias, *estimates)
            for weight, bias, s_b, estimates in zip(parameters[0::2], parameters[1::2], sum_b, per_layer)
        ],
        *total,
    )


def _noise_scale(mean_of_sq_norms: Tensor, sq_norm_of_mean: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""McCandlish et al.'s unbiased :math:`\lvert G\rvert^2` and :math:`S` (appendix A) from
    :math:`\frac1N\sum_x\lVert g_x\rVert^2` and :math:`\lVert\bar g\rVert^2`, and
    :math:`B_\text{simple} = S/\lvert G\rvert^2`. The factors go in as ``alpha``, which no op turns into a
    tensor first (a product with a Python number would)."""
    difference = mean_of_sq_norms - sq_norm_of_mean
    trace_covariance = torch.add(difference, difference, alpha=1 / (n - 1))  # S = tr Σ = N/(N − 1) × difference
    true_grad_sq_norm = torch.sub(sq_norm_of_mean, difference, alpha=1 / (n - 1))  # |G|² = (N‖ḡ‖² − m)/(N − 1)
    return true_grad_sq_norm, trace_covariance, trace_covariance / true_grad_sq_norm


def _check_two_examples(name: str, n: int) -> None:
    if n < 2:
        raise ValueError(f"{name} must hold at least 2 examples: one example's gradient has no variance, got {n}")


def _recorded_layers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers whose backward hands the recordings their errors: a ``Network``'s every layer (its whole-network
    backward and its step notify each, whatever the hidden activation), else the module's ``SigmoidLinear``s."""
    return list(network.layers) if isinstance(network, Network) else sigmoid_layers(network)
