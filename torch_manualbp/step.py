r"""The step: the book's ``update_mini_batch`` in matrix form, and what it does besides its learning rate, stated once.

:class:`StepRule` holds a step's settings (the cost, whose BP1 it is; chapter 3's regularisation, λ over n
examples, L2 or L1; dropout), checked once where it is made; :meth:`Network.sgd_step
<torch_manualbp.Network.sgd_step>` and the engine (:class:`~torch_manualbp.MiniBatchSGD`) make one from their
arguments and step by it. The learning rate is not in it: a schedule (the book's halving) changes η between blocks
of one run, while the rule holds for the whole run.

:func:`update_mini_batch` is the step itself, on arguments already checked: feedforward, BP1-BP4 (each equation
from :mod:`torch_manualbp.equations`) and the update, in place and without autograd. The native op's C++ loop
(``csrc/sgd_block.cpp``) is its only other form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import recording
from .activations import Activation, Sigmoid, get_activation
from .checks import check_dropout, check_regularization, l2_weight_decay
from .costs import Cost, get_cost
from .equations import descend, errors, feedforward, regularize, sigmoid_prime, weighted_input

__all__ = [
    "StepRule",
    "update_mini_batch",
    "feedforward_to_cost",
    "dropout_masks",
    "dropout_evaluation_weights",
    "hidden_activation",
]


def hidden_activation(activation: str | Activation | None) -> Activation | None:
    r"""The hidden layers' activation as the equations take it: ``None`` for the sigmoid (BP2 then reads
    :math:`\sigma'(z) = a(1 - a)` from the activations, ATen's fused kernel), else the :class:`Activation`."""
    if activation is None:
        return None
    activation = get_activation(activation)
    return None if type(activation) is Sigmoid else activation


@dataclass(frozen=True)
class StepRule:
    r"""What one SGD step does besides its learning rate, checked once, when it is made.

    Args:
        cost: the :class:`~torch_manualbp.costs.Cost` or its name (``"quadratic"``, ``"cross_entropy"``,
            ``"log_likelihood"``): which BP1, and which cost a step returns.
        lmbda: the book's regularisation parameter :math:`\lambda \ge 0` over a training set of ``n`` examples;
            0 (default): none.
        n: the training set's size, required when ``lmbda`` is not 0.
        regularization: ``"l2"`` (default), :math:`w \to (1 - \eta\lambda/n) w`, or ``"l1"``,
            :math:`w \to w - (\eta\lambda/n) \operatorname{sgn}(w)`, each before the step's gradient; the biases
            are not regularised.
        dropout: the fraction of each hidden layer's neurons removed for a mini-batch, in [0, 1); 0 (default): none.
        activation: the hidden layers' :class:`~torch_manualbp.activations.Activation` or its name (``"sigmoid"``,
            the default, ``"tanh"``, ``"relu"``, ``"linear"``): which f' BP2 multiplies by.

    Attributes:
        weight_decay: :math:`\lambda/n` (0.0 without regularisation), as the step applies it.
        hidden: the activation as the equations take it (``None`` for the sigmoid; :func:`hidden_activation`).

    Raises:
        TypeError, ValueError: a bad setting, named, as :meth:`Network.sgd_step <torch_manualbp.Network.sgd_step>`
            raises it.

    Examples::

        >>> rule = StepRule("cross_entropy", lmbda=5.0, n=50_000)
        >>> rule.weight_decay
        0.0001
    """

    cost: Cost | str = "quadratic"
    lmbda: float = 0.0
    n: int | None = None
    regularization: str = "l2"
    dropout: float = 0.0
    activation: Activation | str = "sigmoid"
    weight_decay: float = field(init=False, repr=False, compare=False)
    hidden: Activation | None = field(init=False, repr=False, compare=False)  # hidden_activation(activation)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the checked values are written once, here
        set_(self, "cost", get_cost(self.cost))
        set_(self, "activation", get_activation(self.activation))
        set_(self, "hidden", hidden_activation(self.activation))
        set_(self, "weight_decay", l2_weight_decay(self.lmbda, self.n))
        set_(self, "regularization", check_regularization(self.regularization))
        set_(self, "dropout", check_dropout(self.dropout))

    def step(
        self,
        weights: Sequence[Tensor],
        biases: Sequence[Tensor],
        x: Tensor,
        y: Tensor,
        eta: float | Tensor,
        ones: Tensor,
        masks: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """:func:`update_mini_batch` by this rule (``masks``: this step's dropout masks, drawn by
        :func:`dropout_masks`, when the rule has dropout); the mini-batch's cost before the update."""
        rule = (self.cost, self.weight_decay, self.regularization)
        return update_mini_batch(weights, biases, x, y, eta, ones, *rule, masks, self.hidden)


def update_mini_batch(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    x: Tensor,
    y: Tensor,
    eta: float | Tensor,
    ones: Tensor,
    cost: str | Cost = "quadratic",
    weight_decay: float = 0.0,
    regularization: str = "l2",
    masks: Sequence[Tensor] | None = None,
    activation: Activation | None = None,
) -> Tensor:
    r"""The book's ``update_mini_batch`` in matrix form: one SGD step on ``weights`` and ``biases``, in place.

    This is :meth:`Network.sgd_step` without its checks, for callers that have made them, and the body that
    ``torch.compile`` unrolls (``ManualBPClassifier(compile=True)``). Call it under ``torch.no_grad()``.

    Args:
        weights, biases: :math:`W^1 \dots W^L`, :math:`b^1 \dots b^L`, updated in place.
        x: the mini-batch, :math:`(N, H_0)`; y: float targets, :math:`(N, H_L)`.
        eta: the learning rate, a number or (compiled) a 0-d tensor; see :func:`~torch_manualbp.equations.descend`.
        ones: a vector of N ones, in ``x``'s dtype and on its device.
        cost: the :class:`~torch_manualbp.costs.Cost` or its name, ``"quadratic"`` (default) or ``"cross_entropy"``:
            which BP1, and which cost is returned.
        weight_decay: :math:`\lambda/n`, the book's L2 regularisation as ``torch.optim.SGD``'s ``weight_decay``
            (see :func:`~torch_manualbp.checks.l2_weight_decay`): each weight, not bias, is first multiplied by
            :math:`1 - \eta\lambda/n`. A Python number: ``torch.compile`` specialises on it, as on ``cost``.
        regularization: ``"l2"`` (default) or ``"l1"``, which rule ``weight_decay`` = :math:`\lambda/n` is applied by
            (:func:`~torch_manualbp.equations.regularize`); for ``"l1"`` each weight first moves by
            :math:`-\frac{\eta\lambda}{n}\operatorname{sgn}(w)`. A Python string, for ``torch.compile`` too.
        masks: chapter 3's dropout: one 0/1 vector per hidden layer (``len(weights) - 1`` of them, each
            :math:`(H_l)`, in ``x``'s dtype; :func:`dropout_masks` draws them as the book does), the neurons where it
            is 0 removed for this mini-batch, forward and backward; ``None`` (default) for none.
        activation: the hidden layers' activation (:func:`hidden_activation`); ``None``: the sigmoid.

    Returns:
        The mean cost :math:`C_0` of the mini-batch before the update (no L2 term), a 0-d tensor.
    """
    cost = get_cost(cost)
    m = x.shape[0]
    primes = None if activation is None else []  # f'(zˡ) of each hidden layer, for BP2
    activations, z = feedforward_to_cost(x, weights, biases, cost, masks, activation, primes)
    output_minus_y = activations[-1] - y  # aᴸ − y: each row of δ below is the book's per-example δ^{x,l}
    mean_cost = cost.mean(z, output_minus_y, y)  # C = (1/m) Σ_x C_x
    # BP1, then BP2 with every Wˡ⁺¹ before its update
    deltas = errors(weights, activations, output_minus_y, cost, primes)
    if recording.is_recording():  # record_errors(): ∂C/∂zˡ of the mean cost is δ^{x,l}/m, as the Functions hand it
        notify_layers(weights, [delta / m for delta in deltas], activations, cost, primes)
    for weight, bias, delta, a_prev in zip(weights, biases, deltas, activations[:-1]):
        if weight_decay:  # a Python number: no branch on a tensor
            regularize(weight, eta * weight_decay, regularization)  # L2 or L1, from w before this step's update
        descend(weight, bias, delta, a_prev, eta / m, ones)  # BP3 and BP4, added into bˡ and Wˡ
    return mean_cost


def feedforward_to_cost(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    cost: Cost,
    masks: Sequence[Tensor] | None = None,
    activation: Activation | None = None,
    primes: list[Tensor] | None = None,
) -> tuple[list[Tensor], Tensor]:
    r"""Every activation of the network, input first, with the output layer's by the cost
    (:meth:`~torch_manualbp.costs.Cost.activation`), and that layer's weighted input :math:`z^L`, which the cost's
    value may need (the cross-entropy's does) and which is computed anyway; ``masks`` (dropout), ``activation`` (the
    hidden layers') and ``primes`` as for :func:`~torch_manualbp.equations.feedforward`.

    Shape:
        - as :func:`~torch_manualbp.equations.feedforward`; :math:`z^L`: :math:`(N, H_L)`.
    """
    activations = feedforward(x, weights[:-1], biases[:-1], masks, activation, primes)
    z = weighted_input(activations[-1], weights[-1], biases[-1])  # zᴸ = aᴸ⁻¹ Wᴸᵀ + bᴸ
    activations.append(cost.activation(z))  # aᴸ
    return activations, z


def dropout_masks(
    sizes: Sequence[int], dropout: float, like: Tensor, generator: torch.Generator | None = None
) -> list[Tensor]:
    r"""Chapter 3's dropout for one mini-batch: for each hidden layer, a 0/1 vector that removes
    ``round(dropout * H)`` of its H neurons, chosen at random (the book's "randomly deleting half the hidden
    neurons" for ``dropout=0.5``); the input and output layers keep every neuron.

    Args:
        sizes: the network's layer sizes, input first (``Network.sizes``).
        dropout: the fraction removed, in [0, 1).
        like: a tensor whose dtype and device the masks take.
        generator: the random source (a seeded ``torch.Generator`` on ``like``'s device makes the masks
            reproducible); ``None`` for torch's global one.

    Shape:
        - Output: ``len(sizes) - 2`` tensors, :math:`(H_l)` for each hidden layer.

    Examples::

        >>> [m.sum().item() for m in dropout_masks([784, 30, 10], 0.5, torch.empty(0))]
        [15.0]
    """
    masks = []
    for size in sizes[1:-1]:
        removed = torch.randperm(size, generator=generator, device=like.device)[: round(dropout * size)]
        masks.append(torch.ones(size, dtype=like.dtype, device=like.device).index_fill_(0, removed, 0.0))
    return masks


def dropout_evaluation_weights(weights: Sequence[Tensor], dropout: float) -> list[Tensor]:
    r"""The weights to evaluate a network trained with dropout by, as the book does: every weight outgoing from a
    hidden neuron scaled by the fraction kept, :math:`1 - p` (halved for :math:`p = 1/2`), since the full network
    has :math:`1/(1 - p)` times as many hidden neurons active as each mini-batch's had. The first layer's weights,
    from the input neurons, which are never removed, are unchanged.

    Scaling the weights :math:`W^{l+1}` by :math:`1 - p` is the same as multiplying each hidden activation
    :math:`a^l` by :math:`1 - p`, the mean of its mask: the next layer's :math:`z^{l+1}` is then the mean of its
    values over the mini-batches' masks. (The "inverted" form, which trains with masks :math:`m/(1 - p)` and
    evaluates unscaled, is the same network with its outgoing weights stored as :math:`(1 - p) W`.)
    """
    return [weights[0], *[(1 - dropout) * weight for weight in weights[1:]]]


def notify_layers(
    weights: Sequence[Tensor],
    deltas: Sequence[Tensor],
    activations: Sequence[Tensor],
    cost: Cost,
    hidden_primes: Sequence[Tensor] | None = None,
) -> None:
    r"""Hand every layer's :math:`\partial C/\partial z^l` (``deltas``), :math:`\sigma'(z^l)` (or the activation's
    :math:`f'(z^l)`, ``hidden_primes``) and input to the recordings, as each layer's Function does in its own
    backward; the output layer's :math:`\sigma'(z^L)` is the cost's
    (:meth:`~torch_manualbp.costs.Cost.activation_prime`)."""
    hidden = hidden_primes if hidden_primes is not None else [sigmoid_prime(a) for a in activations[1:-1]]
    primes = [*hidden, cost.activation_prime(activations[-1])]
    for weight, delta, a_in, prime in zip(weights, deltas, activations[:-1], primes):
        recording.notify(weight, delta, prime, a_in)
