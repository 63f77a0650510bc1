r"""The gradient statistics of :mod:`torch_manualbp.observe`: :func:`gradient_statistics`, each layer's mean
gradient over a mini-batch and the spread of the per-example gradients around it, from one feedforward and one
backpropagation (:class:`GradientStatistics`, :class:`LayerGradientStatistics`, :class:`ParameterStatistics`).
Import them from :mod:`torch_manualbp.observe`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import targets
from .equations import backpropagate
from .network import Network, feedforward_to_cost


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
