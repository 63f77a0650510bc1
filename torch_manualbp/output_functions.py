r"""The output-layer Functions of :mod:`torch_manualbp.functional`: the output layer and its cost as one autograd
node, for the two pairs whose BP1 is :math:`\delta^L = a^L - y` (chapter 3): the sigmoid with the cross-entropy
(:class:`SigmoidCrossEntropyFunction`) and the softmax with the log-likelihood
(:class:`SoftmaxLogLikelihoodFunction`), each computed from :math:`z^L` so that it stays finite where the output
saturates, with its checked functional form. Import these names from :mod:`torch_manualbp.functional`, which
re-exports them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import recording
from .checks import targets
from .cost_functions import REDUCTIONS, _log_likelihood_rate
from .equations import (
    bias_gradient,
    cross_entropy_costs,
    error_below,
    example_share,
    log_likelihood_costs,
    reduce_costs,
    sigmoid_prime,
    softmax,
    weight_gradient,
    weighted_input,
)
from .layer_functions import _check_layer, _compilable, _weighted_input_tangent, _without_jvp


def _save_layer_inputs_and_targets(ctx, inputs) -> None:
    """``setup_context`` of an output layer and its cost, ``(x, weight, bias, y, reduction)``: the tensors saved for
    both modes (zᴸ is not: the backward computes it again), the reduction kept."""
    x, weight, bias, y, reduction = inputs
    ctx.save_for_backward(x, weight, bias, y)
    ctx.save_for_forward(x, weight, bias, y)
    ctx.reduction = reduction


class SigmoidCrossEntropyFunction(torch.autograd.Function):
    r"""The output layer and chapter 3's cross-entropy cost as one node, reduced over examples:

    .. math::
        z = x W^\top + b, \qquad
        C_x = -\sum_j \left[y_j \ln \sigma(z_j) + (1 - y_j) \ln(1 - \sigma(z_j))\right]
            = \sum_j \left[\operatorname{softplus}(z_j) - y_j z_j\right]

    Use :func:`sigmoid_cross_entropy`, which checks its arguments and one-hot encodes class labels; this class
    expects ``x`` of shape ``(N, in_features)`` and a float ``y`` of shape ``(N, out_features)``.

    The cost is computed from :math:`z` (``ln σ(z)`` would be ``ln 0`` for a saturated output), and the backward
    starts from BP1 for this cost, :math:`\delta^L = a^L - y`, never forming :math:`\nabla_a C`. Only the inputs
    are saved; the backward recomputes :math:`z` from them (one ``(N, in) × (in, out)`` product, the output
    layer's, which is small), so that it is made of differentiable operations on the inputs alone and double
    backward is exact.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str) -> Tensor:
        z = weighted_input(x, weight, bias)  # zᴸ = x Wᵀ + b, (N, out)
        return reduce_costs(cross_entropy_costs(z, y), reduction)  # "mean": C = (1/n) Σ_x C_x, the book's cost

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_layer_inputs_and_targets(ctx, inputs)

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        # (BP1) δᴸ = aᴸ − y: σ'(zᴸ) cancelled (costs.CrossEntropy.delta, for one node)
        return _output_layer_backward(ctx, grad_cost, torch.sigmoid)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, y_t, _reduction_t) -> Tensor:
        # Forward mode: Ċ_x = Σ_j (σ(z_j) − y_j) ż_j − z_j ẏ_j, reduced like the cost.
        x, weight, bias, y = ctx.saved_tensors
        z = weighted_input(x, weight, bias)
        z_t = _weighted_input_tangent(x, weight, x_t, weight_t, bias_t, z.shape)
        if z_t is None:  # only y has a tangent
            z_t = torch.zeros_like(z)
        rate = (torch.sigmoid(z) - y) * z_t  # (N, out)
        if y_t is not None:
            rate = rate - z * y_t
        return reduce_costs(rate.sum(-1), ctx.reduction)


class SoftmaxLogLikelihoodFunction(torch.autograd.Function):
    r"""A softmax output layer and chapter 3's log-likelihood cost as one node, reduced over examples:

    .. math::
        z = x W^\top + b, \qquad a_j = \frac{e^{z_j}}{\sum_k e^{z_k}}, \qquad
        C_x = -\ln a_{y(x)} = \ln \sum_k e^{z_k} - \sum_j y_j z_j

    Use :func:`softmax_log_likelihood`, which checks its arguments and one-hot encodes class labels; this class
    expects ``x`` of shape ``(N, in_features)`` and a float ``y`` of shape ``(N, out_features)``.

    As :class:`SigmoidCrossEntropyFunction` for the sigmoid: the value comes from :math:`z` through ``logsumexp``
    (finite however saturated), the backward starts at BP1 for this cost, :math:`\delta^L = a^L - y`, and only the
    inputs are saved, :math:`z` being recomputed so that the backward is differentiable on the inputs alone.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str) -> Tensor:
        z = weighted_input(x, weight, bias)  # zᴸ = x Wᵀ + b, (N, out)
        return reduce_costs(log_likelihood_costs(z, y), reduction)  # "mean": C = −(1/n) Σ_x ln aᴸ_{y(x)}

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_layer_inputs_and_targets(ctx, inputs)

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        # (BP1) δᴸ = aᴸ − y, with aᴸ_j = e^{zᴸ_j} / Σ_k e^{zᴸ_k} (costs.LogLikelihood.delta, for one node)
        return _output_layer_backward(ctx, grad_cost, softmax)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, y_t, _reduction_t) -> Tensor:
        x, weight, bias, y = ctx.saved_tensors
        z = weighted_input(x, weight, bias)
        z_t = _weighted_input_tangent(x, weight, x_t, weight_t, bias_t, z.shape)
        return _log_likelihood_rate(z, y, z_t, y_t, ctx.reduction)


def _output_layer_backward(ctx, grad_cost: Tensor, activation) -> tuple[Tensor | None, ...]:
    r"""The backward of an output layer and its cost as one node whose BP1 is :math:`\delta^L = a^L - y`: the sigmoid
    with the cross-entropy, the softmax (``activation``) with the log-likelihood. Returns the gradients of ``x``,
    ``weight``, ``bias``, ``y`` (and ``None`` for the reduction), each only where it is needed."""
    x, weight, bias, y = ctx.saved_tensors
    grad_x = grad_weight = grad_bias = grad_y = None
    z = weighted_input(x, weight, bias)  # zᴸ again, from the inputs (not saved: see the classes' docstrings)
    a = activation(z)  # aᴸ
    share = example_share(grad_cost, a, ctx.reduction)  # each example's weight in the reduced cost: 1/n for the mean
    delta = (a - y) * share  # (BP1) δᴸ = aᴸ − y
    if recording.is_recording():  # record_errors(): for the softmax, the diagonal a(1 − a) of ∂aᴸ/∂zᴸ stands for σ'
        recording.notify(weight, delta, sigmoid_prime(a), x)
    if ctx.needs_input_grad[0]:
        grad_x = error_below(delta, weight)  # δᴸ Wᴸ, handed to the layer below for its BP2, (N, in)
    if ctx.needs_input_grad[1]:
        grad_weight = weight_gradient(delta, x)  # BP4, (out, in)
    if ctx.needs_input_grad[2]:
        grad_bias = bias_gradient(delta)  # BP3, (out,)
    if ctx.needs_input_grad[3]:
        grad_y = -z * share  # ∂C_x/∂y_j = −z_j, for both costs
    return grad_x, grad_weight, grad_bias, grad_y, None


_SigmoidCrossEntropyCompilable = _without_jvp(SigmoidCrossEntropyFunction)
_SoftmaxLogLikelihoodCompilable = _without_jvp(SoftmaxLogLikelihoodFunction)


def sigmoid_cross_entropy(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""The output layer :math:`a^L = \sigma(x W^\top + b)` and chapter 3's cross-entropy cost of it, in one step,
    :math:`C = -\frac{1}{n} \sum_x \sum_j [y_j \ln a^L_j + (1 - y_j) \ln(1 - a^L_j)]`, with the hand-written
    backward of :class:`SigmoidCrossEntropyFunction`: BP1 as :math:`\delta^L = a^L - y`, then BP3, BP4 and
    :math:`\delta^L W^L` for the layer below.

    It takes the output layer's input and parameters, not :math:`a^L`, because the cost is computed from
    :math:`z^L` and stays finite when the output saturates. It equals ``binary_cross_entropy_with_logits(x @ weight.T
    + bias, y, reduction="none").sum(-1).mean()``: summed over the outputs, averaged over the examples.

    Args:
        x: the activations :math:`a^{L-1}` of the layer below the output layer.
        weight, bias: the output layer's :math:`W^L` and :math:`b^L` (``bias`` may be ``None``).
        y: the desired outputs, floats in [0, 1] shaped like the output, or integer class labels, one-hot encoded here.
        reduction: ``"mean"`` for the book's :math:`C`; ``"sum"`` for :math:`\sum_x C_x`; ``"none"`` for the
            :math:`C_x` themselves.

    Shape:
        - x: :math:`(*, H_{in})`; weight: :math:`(K, H_{in})`; bias: :math:`(K)`.
        - y: :math:`(*, K)` floats or :math:`(*)` integer labels in ``0..K-1``.
        - Output: a scalar, or :math:`(*)` for ``reduction="none"``.

    Raises:
        TypeError, ValueError: as :func:`sigmoid_linear` and :func:`quadratic_cost` document.

    Examples::

        >>> hidden = sigmoid_linear(torch.rand(8, 784), w1, b1)  # (8, 30)
        >>> sigmoid_cross_entropy(hidden, w2, b2, torch.randint(0, 10, (8,))).backward()
    """
    function = _compilable(SigmoidCrossEntropyFunction, _SigmoidCrossEntropyCompilable)
    return _output_layer_cost(function, x, weight, bias, y, reduction)


def softmax_log_likelihood(
    x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str = "mean"
) -> Tensor:
    r"""A softmax output layer :math:`a^L_j = e^{z^L_j} / \sum_k e^{z^L_k}`, :math:`z^L = x W^\top + b`, and
    chapter 3's log-likelihood cost of it, :math:`C = -\frac1n \sum_x \ln a^L_{y(x)}`, in one step, with the
    hand-written backward of :class:`SoftmaxLogLikelihoodFunction`: BP1 as :math:`\delta^L = a^L - y`, then BP3, BP4
    and :math:`\delta^L W^L` for the layer below.

    It equals ``F.cross_entropy(x @ weight.T + bias, labels)`` (and, for float ``y`` whose rows sum to 1, the
    same with probability targets), and is finite however large :math:`z^L` is.

    Args:
        x: the activations :math:`a^{L-1}` of the layer below the output layer.
        weight, bias: the output layer's :math:`W^L` and :math:`b^L` (``bias`` may be ``None``).
        y: integer class labels, one-hot encoded here, or float targets shaped like the output; with a float ``y``
            the cost is :math:`\ln \sum_k e^{z_k} - \sum_j y_j z_j`, the log-likelihood when each row sums to 1.
        reduction: ``"mean"`` for the book's :math:`C`; ``"sum"`` for :math:`\sum_x C_x`; ``"none"`` for the
            :math:`C_x` themselves.

    Shape, Raises: as :func:`sigmoid_cross_entropy`.

    Examples::

        >>> hidden = sigmoid_linear(torch.rand(8, 784), w1, b1)  # (8, 30)
        >>> softmax_log_likelihood(hidden, w2, b2, torch.randint(0, 10, (8,))).backward()
    """
    function = _compilable(SoftmaxLogLikelihoodFunction, _SoftmaxLogLikelihoodCompilable)
    return _output_layer_cost(function, x, weight, bias, y, reduction)


def _output_layer_cost(function, x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str) -> Tensor:
    """``function`` (an output layer and its cost as one node) applied after checking its arguments; leading batch
    dimensions are flattened into the Function's ``(N, in_features)`` rows."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    out_features, in_features = _check_layer(x, weight, bias)
    examples = x.shape[:-1]
    if reduction == "mean" and x.numel() == 0:
        raise ValueError(f"the mean cost of zero examples is undefined (x has shape {tuple(x.shape)})")
    y = targets(y, (*examples, out_features), x)
    if x.ndim == 2:  # a mini-batch of rows, the Function's own layout
        return function.apply(x, weight, bias, y, reduction)
    cost = function.apply(x.reshape(-1, in_features), weight, bias, y.reshape(-1, out_features), reduction)
    return cost.reshape(examples) if reduction == "none" else cost
