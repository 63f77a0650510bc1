r"""Chapter 2's equations, each written once; every path in the package computes them here.

PyTorch's row layout: a mini-batch of n examples is n rows, so the book's column vectors :math:`a^l` become
rows and :math:`w^l a^{l-1}` becomes :math:`a^{l-1} W^{l\top}`, with ``weight`` of shape ``(out, in)`` like
``nn.Linear``, exactly the book's :math:`w^l_{jk}`.

.. math::
    z^l = a^{l-1} W^{l\top} + b^l, \qquad a^l = \sigma(z^l)

    \text{(BP1)}\ \delta^L = \nabla_a C \odot \sigma'(z^L) \qquad
    \text{(BP2)}\ \delta^l = (\delta^{l+1} W^{l+1}) \odot \sigma'(z^l)

    \text{(BP3)}\ \partial C / \partial b^l = \textstyle\sum_x \delta^{x,l} \qquad
    \text{(BP4)}\ \partial C / \partial W^l = \delta^{l\top} a^{l-1}

BP1 depends on the cost, and each cost states its own in :mod:`torch_manualbp.costs` (``Cost.delta``), beside its
value; the functions here that run BP1 take the cost object and ask it. The per-example values of chapter 2's and
chapter 3's costs are written here (:func:`quadratic_costs`, :func:`cross_entropy_costs`), with the other equations.

Who uses what:

- the per-layer ``SigmoidLinearFunction.backward`` (autograd, one node per layer): :func:`sigmoid_delta`,
  :func:`error_below`, :func:`bias_gradient`, :func:`weight_gradient`;
- ``Network.backprop`` and ``Network.cost`` (the whole network at once): :func:`feedforward`, :func:`backpropagate`;
- ``SigmoidCrossEntropyFunction.backward`` (the output layer and the cross-entropy as one node): BP1 as
  :math:`\delta^L = a^L - y`, then :func:`error_below`, :func:`bias_gradient` and :func:`weight_gradient` as the
  per-layer Function;
- ``Network.sgd_step``, the book's ``update_mini_batch`` without autograd: :func:`feedforward`, :func:`errors`,
  then :func:`descend`, which is BP3 and BP4 fused into the update itself;
- every path's cost value: :func:`quadratic_costs` or :func:`cross_entropy_costs` per example, reduced by
  :func:`reduce_costs`, or the mean quadratic cost at once, :func:`quadratic_mean`; every backward's
  :math:`a^L - y` scaled by :func:`example_share`.

:math:`\sigma'(z) = a(1 - a)` is taken from the activation :math:`a = \sigma(z)`, so a sigmoid network keeps no hidden
layer's :math:`z`; for another hidden activation (tanh, ReLU, linear: :mod:`torch_manualbp.activations`)
:func:`feedforward` hands each layer's :math:`f'(z^l)` to BP2 (``primes``) instead. The output layer's :math:`z^L` is
kept where a cost's value needs it (the cross-entropy's does), by
``network.feedforward_to_cost`` in the whole-network paths, or recomputed (:func:`weighted_input`) by the one-node
``SigmoidCrossEntropyFunction``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "a_minus_y",
    "quadratic_costs",
    "quadratic_mean",
    "cross_entropy_costs",
    "log_likelihood_costs",
    "softmax",
    "reduce_costs",
    "example_share",
    "feedforward",
    "weighted_input",
    "sigmoid_prime",
    "sigmoid_delta",
    "error_below",
    "bias_gradient",
    "weight_gradient",
    "errors",
    "backpropagate",
    "descend",
    "regularize",
]


def a_minus_y(a: Tensor, y: Tensor) -> Tensor:
    """a − y, in at least float32 so that a bf16/fp16 network still gets an accurate cost."""
    if a.dtype == y.dtype and a.dtype in (torch.float32, torch.float64):  # the usual case: no casts to look up
        return a - y
    dtype = torch.promote_types(torch.promote_types(a.dtype, y.dtype), torch.float32)
    return a.to(dtype) - y.to(dtype)


def quadratic_costs(output_minus_y: Tensor) -> Tensor:
    r"""Chapter 2's :math:`C_x = \tfrac12 \lVert y(x) - a(x) \rVert^2`, one per example (row), from :math:`a - y`
    (:func:`a_minus_y`), which every caller has computed already for BP1."""
    return 0.5 * (output_minus_y * output_minus_y).sum(-1)


def quadratic_mean(output_minus_y: Tensor) -> Tensor:
    r"""The book's :math:`C = \frac{1}{2n} \sum_x \lVert y(x) - a(x) \rVert^2` over the n rows of :math:`a - y`:
    the mean of :func:`quadratic_costs`, in three operations instead of four (at mini-batches of 10 each one counts).
    Every path computes the mean quadratic cost here, so they agree bit for bit."""
    n = output_minus_y.numel() // output_minus_y.shape[-1]  # examples: every row of (*, K)
    return output_minus_y.square().sum() * (0.5 / n)


def cross_entropy_costs(z: Tensor, y: Tensor) -> Tensor:
    r"""Chapter 3's :math:`C_x = \sum_j [\operatorname{softplus}(z_j) - y_j z_j]` per example: the cross-entropy of
    :math:`a = \sigma(z)`, finite for any finite :math:`z` (``logaddexp(z, 0)`` is softplus without overflow)."""
    return (torch.logaddexp(z, z.new_zeros(())) - y * z).sum(-1)


def log_likelihood_costs(z: Tensor, y: Tensor) -> Tensor:
    r"""Chapter 3's log-likelihood of a softmax output :math:`a = \operatorname{softmax}(z)`, per example:
    :math:`C_x = \ln \sum_k e^{z_k} - \sum_j y_j z_j`, which is :math:`-\ln a_{y(x)}` for a one-hot ``y`` (and
    :math:`-\sum_j y_j \ln a_j` for any ``y`` whose entries sum to 1). Through ``logsumexp`` it is finite for any
    finite :math:`z`, where :math:`\ln a_j` of a saturated softmax would be :math:`\ln 0`; its gradient in :math:`z`
    is :math:`a - y` for every ``y``."""
    return torch.logsumexp(z, -1) - (y * z).sum(-1)


def softmax(z: Tensor) -> Tensor:
    r"""The softmax output layer's activation, :math:`a_j = e^{z_j} / \sum_k e^{z_k}` over the last dimension."""
    return torch.softmax(z, -1)


def reduce_costs(per_example: Tensor, reduction: str) -> Tensor:
    r"""The mean (the book's :math:`C = \frac1n \sum_x C_x`) or sum over examples of a per-example quantity, or the
    quantity itself for "none"."""
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    return per_example


def example_share(grad_cost: Tensor, a: Tensor, reduction: str) -> Tensor:
    """How much each example's C_x counts in the reduced cost (times the gradient arriving at it), broadcastable
    against ``a``: 1/n for the mean over n examples."""
    if reduction == "none":
        return grad_cost.unsqueeze(-1)
    if reduction == "sum":
        return grad_cost
    return grad_cost / (a.numel() // a.shape[-1])  # the mean: 1/n, n = number of examples


def feedforward(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    masks: Sequence[Tensor] | None = None,
    activation=None,
    primes: list[Tensor] | None = None,
) -> list[Tensor]:
    r"""Every activation of the network, input first: :math:`a^0 = x`, :math:`a^l = \sigma(a^{l-1} W^{l\top} + b^l)`,
    or :math:`f(z^l)` for another ``activation``.

    With ``masks`` (chapter 3's dropout, one 0/1 vector per layer computed here) each layer's removed neurons output
    0, :math:`a^l = \sigma(z^l) \odot m^l`. Since :math:`\sigma'(z) = a(1 - a)` is taken from the activation, a
    removed neuron's :math:`\sigma'(z^l)` then reads 0 as well, so BP2 gives it :math:`\delta^l = 0`: the backward
    (:func:`errors`) applies the same mask with no change.

    Args:
        activation: the layers' :class:`~torch_manualbp.activations.Activation`; ``None``: the sigmoid.
        primes: for an ``activation``, a list to which each layer's :math:`f'(z^l) \odot m^l` is appended, which
            BP2 (:func:`errors`) then reads: another activation's :math:`f'` is not always :math:`a`'s to read.

    Shape:
        - x: :math:`(N, H_0)`; ``weights[l]``: :math:`(H_{l+1}, H_l)`; ``biases[l]``, ``masks[l]``: :math:`(H_{l+1})`.
        - Output: :math:`L + 1` tensors, :math:`(N, H_l)`.
    """
    activations = [x]
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        z = weighted_input(activations[-1], weight, bias)  # zˡ = aˡ⁻¹ Wˡᵀ + bˡ
        a = torch.sigmoid(z) if activation is None else activation(z)  # aˡ = σ(zˡ), or f(zˡ)
        if primes is not None:
            prime = activation.derivative(z, a)  # f'(zˡ)
            primes.append(prime if masks is None else prime * masks[i])  # a removed neuron's f' is 0
        activations.append(a if masks is None else a * masks[i])  # dropout: aˡ = f(zˡ) ⊙ mˡ
    return activations


def weighted_input(a_prev: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    r"""A layer's weighted input :math:`z^l = a^{l-1} W^{l\top} + b^l`, :math:`(N, H_l)`.

    :func:`feedforward` keeps only :math:`a^l = \sigma(z^l)`; the output layer's :math:`z^L`, which the
    cross-entropy's value needs (see :func:`cross_entropy_costs`), is computed with this and kept by
    ``network.feedforward_to_cost``.
    """
    return a_prev @ weight.T if bias is None else torch.addmm(bias, a_prev, weight.T)  # zˡ = aˡ⁻¹ Wˡᵀ + bˡ


def sigmoid_prime(a: Tensor) -> Tensor:
    r""":math:`\sigma'(z) = \sigma(z)(1 - \sigma(z))`, computed from the activation :math:`a = \sigma(z)`."""
    return a * (1 - a)


def sigmoid_delta(grad_a: Tensor, a: Tensor) -> Tensor:
    r"""A layer's error :math:`\delta^l = \partial C/\partial a^l \odot \sigma'(z^l)`, with
    :math:`\sigma'(z) = a(1 - a)`.

    This is BP1 when ``grad_a`` is :math:`\nabla_a C` at the output layer and BP2 when it is
    :math:`\delta^{l+1} W^{l+1}` (:func:`error_below` of the layer above). One fused kernel, ATen's
    ``sigmoid_backward``, instead of three (``1 - a``, two products): at the book's mini-batches of 10 the
    number of operations, not the arithmetic, is the cost. It is differentiable (double backward, forward
    mode and vmap all work through it).
    """
    return torch.ops.aten.sigmoid_backward(grad_a, a)


def error_below(delta: Tensor, weight: Tensor) -> Tensor:
    r""":math:`\partial C/\partial a^{l-1} = \delta^l W^l`: the :math:`\delta^{l+1} W^{l+1}` of (BP2), for the
    layer below."""
    return delta @ weight  # (N, in)


def bias_gradient(delta: Tensor) -> Tensor:
    r""":math:`\partial C/\partial b^l = \sum_x \delta^{x,l}`, of shape :math:`(H_l)`."""
    return delta.sum(0)  # (BP3)


def weight_gradient(delta: Tensor, a_prev: Tensor) -> Tensor:
    r""":math:`\partial C/\partial W^l = \sum_x \delta^{x,l} (a^{x,l-1})^\top = \delta^{l\top} a^{l-1}`, shaped
    like ``weight``."""
    return delta.T @ a_prev  # (BP4)


def errors(
    weights: Sequence[Tensor],
    activations: Sequence[Tensor],
    output_minus_y: Tensor,
    cost,
    primes: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    r"""The error :math:`\delta^l` of every layer, input side first, by BP1 and then BP2 down the layers.

    Args:
        weights: :math:`W^1 \dots W^L`.
        activations: :math:`a^0 = x, a^1 \dots a^L`, as :func:`feedforward` returns them.
        output_minus_y: :math:`a^L - y`, one row per example, each scaled by its example's share of the cost being
            differentiated (1/n for the mean over n examples); for the quadratic cost it is :math:`\nabla_a C`.
        cost: the network's :class:`~torch_manualbp.costs.Cost`, whose ``delta`` is BP1.
        primes: the hidden layers' :math:`f'(z^l)`, from :func:`feedforward`'s ``primes``, for an activation other
            than the sigmoid; ``None``: :math:`\sigma'(z^l) = a^l(1 - a^l)`.
    """
    # Layer i (0-based) maps activations[i] to activations[i + 1]; the book's l is i + 1.
    deltas = [output_minus_y] * len(weights)
    deltas[-1] = cost.delta(output_minus_y, activations[-1])  # (BP1), as the cost states it
    for i in reversed(range(len(weights) - 1)):
        below = error_below(deltas[i + 1], weights[i + 1])  # δˡ⁺¹ Wˡ⁺¹
        if primes is None:
            deltas[i] = sigmoid_delta(below, activations[i + 1])  # (BP2) δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ'(zˡ)
        else:
            deltas[i] = below * primes[i]  # (BP2) δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ f'(zˡ)
    return deltas


def backpropagate(
    weights: Sequence[Tensor],
    activations: Sequence[Tensor],
    output_minus_y: Tensor,
    cost,
    primes: Sequence[Tensor] | None = None,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    r"""BP1-BP4 over all layers: the errors :func:`errors`, then each layer's gradients from them.

    ``output_minus_y``, ``cost`` and ``primes`` are as for :func:`errors`.

    Returns:
        ``(sum_w, sum_b, deltas)``: per layer :math:`\delta^{l\top} a^{l-1}` and :math:`\sum_x \delta^{x,l}`,
        which are :math:`\partial C/\partial W^l` and :math:`\partial C/\partial b^l` when the rows of
        ``output_minus_y`` are scaled by the examples' shares of :math:`C`, and the errors :math:`\delta^l` themselves.
    """
    deltas = errors(weights, activations, output_minus_y, cost, primes)
    sum_w = [weight_gradient(delta, a) for delta, a in zip(deltas, activations[:-1])]
    sum_b = [bias_gradient(delta) for delta in deltas]
    return sum_w, sum_b, deltas


def descend(weight: Tensor, bias: Tensor, delta: Tensor, a_prev: Tensor, step: float | Tensor, ones: Tensor) -> None:
    r"""Gradient descent on one layer, in place, with BP3 and BP4 fused into the update.

    :math:`W^l \to W^l - s\, \delta^{l\top} a^{l-1}` and :math:`b^l \to b^l - s \sum_x \delta^{x,l}`, without
    materialising either gradient: ``addmm_`` adds the BP4 product straight into the weights and ``addmv_`` the
    BP3 sum (as :math:`\delta^{l\top}` times a vector of ones) into the biases. The book's ``update_mini_batch``
    takes :math:`s = \eta/m` for a mini-batch of m examples.

    Args:
        weight, bias: the layer's parameters, updated in place.
        delta: :math:`\delta^l`, :math:`(N, H_l)`; a_prev: :math:`a^{l-1}`, :math:`(N, H_{l-1})`.
        step: :math:`s`, a Python number, or a 0-d tensor inside ``torch.compile``, where a number would be
            baked into the compiled code and every new learning rate would compile it again.
        ones: a vector of N ones, in ``delta``'s dtype and on its device.
    """
    if isinstance(step, Tensor):
        weight.sub_(step * weight_gradient(delta, a_prev))
        bias.sub_(step * bias_gradient(delta))
    else:
        weight.addmm_(delta.T, a_prev, alpha=-step)  # (BP4) fused: W −= s δᵀ aˡ⁻¹
        bias.addmv_(delta.T, ones, alpha=-step)  # (BP3) fused: b −= s Σ_x δ_x


def regularize(weight: Tensor, step: float | Tensor, regularization: str) -> None:
    r"""Chapter 3's regularisation step on one layer's weights, in place, before :func:`descend` adds
    :math:`-\eta\, \partial C_0/\partial w`.

    - ``"l2"``: :math:`w \to (1 - \frac{\eta\lambda}{n}) w`, from :math:`C = C_0 + \frac{\lambda}{2n} \sum_w w^2`;
    - ``"l1"``: :math:`w \to w - \frac{\eta\lambda}{n} \operatorname{sgn}(w)`, from
      :math:`C = C_0 + \frac{\lambda}{n} \sum_w |w|`, with :math:`\operatorname{sgn}(0) = 0` as the book takes it.

    Args:
        weight: :math:`W^l`, updated in place (the biases are not regularised).
        step: :math:`\eta\lambda/n`, a number or (compiled) a 0-d tensor.
        regularization: ``"l2"`` or ``"l1"``.
    """
    if regularization == "l1":  # a Python string: torch.compile specialises on it, no branch on a tensor
        weight.sub_(torch.sign(weight) * step)  # L1: w → w − (ηλ/n) sgn(w)
    else:
        weight.mul_(1 - step)  # L2: w → (1 − ηλ/n) w
