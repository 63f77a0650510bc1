r"""What :class:`~torch_manualbp.network.Network`'s matrix-form algorithm gives outside the module: the result of
:meth:`~torch_manualbp.network.Network.backprop` (:class:`Gradients`), and :class:`NetworkCostFunction`, the whole
network and its mean cost behind one autograd node, whose backward is BP1-BP4 over all layers at once
(:func:`~torch_manualbp.equations.backpropagate`). Import these names from :mod:`torch_manualbp.network`, which
re-exports them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import recording
from .activations import Activation
from .costs import Cost
from .equations import a_minus_y, backpropagate, error_below, example_share
from .step import feedforward_to_cost, notify_layers


class Gradients(NamedTuple):
    r"""What :meth:`Network.backprop` returns; every list has one entry per layer, input side first.

    Attributes:
        nabla_w: :math:`\partial C/\partial W^l`, each shaped like that layer's ``weight``.
        nabla_b: :math:`\partial C/\partial b^l`, each shaped like that layer's ``bias``.
        delta: the errors :math:`\delta^{x,l} = \partial C_x/\partial z^{x,l}` of each example,
            each of shape :math:`(N, H_l)`. They are per example, as in the book, so they do not
            shrink with the batch; the gradients of the mean cost :math:`C` average them over x.
        cost: the mean cost :math:`C` of the mini-batch (the network's ``cost``), a scalar.
    """

    nabla_w: list[Tensor]
    nabla_b: list[Tensor]
    delta: list[Tensor]
    cost: Tensor


#: The name :class:`Gradients` had before: the result is named for what it holds, not for the algorithm.
Backprop = Gradients


class NetworkCostFunction(torch.autograd.Function):
    r"""A whole ``Network`` and its mean cost as one autograd node (see :meth:`Network.cost`).

    ``forward(x, y, cost, activation, W¹, b¹, …, Wᴸ, bᴸ)`` runs :func:`feedforward_to_cost` and returns the mean
    ``cost`` (a :class:`~torch_manualbp.costs.Cost`; ``activation``: the hidden layers', ``None`` for the sigmoid);
    ``backward`` runs :func:`backpropagate` once.
    It saves the activations it needs, as autograd would, and no other intermediate. Its backward is not
    itself differentiable, and says so; the per-layer Functions' are.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, cost: Cost, activation: Activation | None, *params: Tensor) -> Tensor:
        weights, biases = params[0::2], params[1::2]
        primes = None if activation is None else []  # f'(zˡ) of the hidden layers, for BP2
        activations, z = feedforward_to_cost(x, weights, biases, cost, None, activation, primes)
        mean_cost = cost.mean(z, a_minus_y(activations[-1], y), y)  # C = (1/n) Σ_x C_x
        ctx.save_for_backward(y, z, *weights, *activations, *(primes or []))  # zᴸ: only for ∂C/∂y, which may need it
        ctx.depth, ctx.cost, ctx.primes = len(weights), cost, primes is not None
        return mean_cost

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        if torch.is_grad_enabled():  # backward(create_graph=True): the saved activations are not in any graph
            raise RuntimeError(
                "Network.cost's backward is not differentiable (create_graph=True); "
                "for higher derivatives use network.layered_cost(x, y)"
            )
        y, z, *saved = ctx.saved_tensors
        depth = ctx.depth
        weights, activations = saved[:depth], saved[depth : 2 * depth + 1]
        primes = saved[2 * depth + 1 :] if ctx.primes else None
        output = activations[-1]
        share = example_share(grad_cost, output, "mean")  # 1/n: each example's share of the mean
        output_minus_y = a_minus_y(output, y) * share  # (aᴸ − y)/n, which is ∇_a C for the quadratic cost
        sum_w, sum_b, deltas = backpropagate(weights, activations, output_minus_y, ctx.cost, primes)  # BP1-BP4
        if recording.is_recording():  # inside torch_manualbp.observe.record_errors()
            notify_layers(weights, deltas, activations, ctx.cost, primes)
        grad_x = error_below(deltas[0], weights[0]) if ctx.needs_input_grad[0] else None  # δ¹ W¹, for x
        grad_y = None
        if ctx.needs_input_grad[1]:
            grad_y = ctx.cost.y_gradient(z, output, y) * share  # ∂C/∂y = (1/n) ∂C_x/∂y
        return (grad_x, grad_y, None, None, *[g for pair in zip(sum_w, sum_b) for g in pair])
