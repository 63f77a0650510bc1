r"""Many networks, one step: :class:`Population` trains K networks of the same sizes on the same mini-batches at once.

At the book's mini-batches of 10 a step of one ``Network([784, 30, 10])`` is a dozen tiny operations whose cost is
dispatching them, not the arithmetic, so K networks that share each mini-batch cost little more than one when their
operations are shared too. A population of seeds, or of learning rates (chapter 3's comparison of η = 0.025, 0.25 and
2.5), or of λ, is then one run instead of K.

The layout is what makes it cheap: the first layer of all members is one stacked :math:`(K H_1, H_0)` weight, so that
its feedforward is one matrix product of the shared mini-batch and its update (BP3, BP4) one ``addmm_`` and one
``addmv_`` (:func:`~torch_manualbp.equations.descend`); the later layers, whose inputs differ between members, are
batched over members, :math:`(K, H_{l+1}, H_l)`, with ``baddbmm``. Each member's :math:`\eta/m` multiplies its own
:math:`a^L - y` once, before BP1; BP1 and BP2 are linear in it, so every :math:`\delta^l` of member k arrives scaled
by its :math:`\eta_k/m` and the updates need no step size of their own.

BP1 and BP2 are :func:`~torch_manualbp.equations.errors`, unchanged: its products broadcast over the members' axis.

Examples::

    >>> nets = [Network([784, 30, 10]) for _ in range(3)]
    >>> pop = Population(nets)
    >>> x, labels = torch.rand(10, 784), torch.randint(0, 10, (10,))
    >>> costs = pop.sgd_step(x, labels, eta=[0.025, 0.25, 2.5])  # one step of each member, costs of shape (3,)
    >>> pop(x).shape
    torch.Size([3, 10, 10])
    >>> best = pop.network(int(costs.argmin()))  # a standalone Network with that member's parameters
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .checks import check_float_tensor, check_learning_rate, check_same_kind, l2_weight_decay, targets
from .equations import descend, errors, weighted_input
from .network import Network

__all__ = ["Population"]


class Population(nn.Module):
    r"""K networks of the same sizes and cost, trained together, each by the book's ``update_mini_batch``.

    The members' parameters are copied into stacked storage; the given networks are left alone.
    :meth:`sgd_step` gives every member the step :meth:`Network.sgd_step` would give it on the same mini-batch
    (feedforward, BP1-BP4 and the update, without autograd), each with its own η and λ if wanted.

    Args:
        networks: the members, K :class:`~torch_manualbp.Network`\ s with equal ``sizes`` and cost, of one dtype
            and on one device.

    Shape:
        - Input: :math:`(N, \text{sizes}[0])`, one mini-batch that every member sees.
        - Output: :math:`(K, N, \text{sizes}[-1])`, each member's output activations :math:`a^L`.

    Attributes:
        sizes, cost_function: those of every member (``cost_name``: the cost's name).
        members: K, the number of members (also ``len(pop)``).
        weight_1, bias_1: the first layer of all members stacked, :math:`(K H_1, H_0)` and :math:`(K H_1)`;
            member k's rows are :math:`k H_1 \dots (k + 1) H_1 - 1`.
        weight_l, bias_l: each later layer l (the book's numbering, up to L) batched over members,
            :math:`(K, H_l, H_{l-1})` and :math:`(K, H_l)`. :meth:`weights_and_biases` lists them all.

    Examples::

        >>> pop = Population([Network([784, 30, 10]) for _ in range(10)])
        >>> costs = pop.sgd_step(torch.rand(10, 784), torch.randint(0, 10, (10,)), eta=3.0)
        >>> len(pop), costs.shape
        (10, torch.Size([10]))
    """

    def __init__(self, networks: Sequence[Network]) -> None:
        super().__init__()
        first = _check_members(networks)
        self.sizes = list(first.sizes)
        self.cost_function = first.cost_function
        k, sizes = len(networks), self.sizes
        like = first.layers[0].weight
        kind = {"dtype": like.dtype, "device": like.device}
        weight_shapes = [(k * sizes[1], sizes[0])] + [(k, n_out, n_in) for n_in, n_out in zip(sizes[1:-1], sizes[2:])]
        bias_shapes = [(k * sizes[1],)] + [(k, n_out) for n_out in sizes[2:]]
        for l, (weight_shape, bias_shape) in enumerate(zip(weight_shapes, bias_shapes), start=1):  # the book's l
            self.register_parameter(f"weight_{l}", nn.Parameter(torch.empty(weight_shape, **kind)))
            self.register_parameter(f"bias_{l}", nn.Parameter(torch.empty(bias_shape, **kind)))
        self._names = [(f"weight_{l}", f"bias_{l}") for l in range(1, len(sizes))]
        self.members = k
        with torch.no_grad():
            for member, network in enumerate(networks):
                (weights, biases), (theirs_w, theirs_b) = self.member_parameters(member), network.weights_and_biases()
                for mine, theirs in zip(weights + biases, theirs_w + theirs_b):
                    mine.copy_(theirs)
        self._ones: Tensor | None = None  # see sgd_step
        self._steps: tuple | None = None  # (η's, λ/n's, m, dtype, device) -> the step's tensors; see _step_tensors

    def __len__(self) -> int:
        return self.members

    @property
    def cost_name(self) -> str:
        """The members' cost's name, as :attr:`Network.cost_name <torch_manualbp.Network.cost_name>`."""
        return self.cost_function.name

    def weights_and_biases(self) -> tuple[list[Tensor], list[Tensor]]:
        r"""The stacked parameters :math:`W^1 \dots W^L` and :math:`b^1 \dots b^L`, input side first (plain lists: a
        step reads them once; an ``nn.ParameterList`` would cost an operation's time at every index)."""
        return [getattr(self, w) for w, _ in self._names], [getattr(self, b) for _, b in self._names]

    def member_parameters(self, k: int) -> tuple[list[Tensor], list[Tensor]]:
        r"""Member k's :math:`W^1 \dots W^L` and :math:`b^1 \dots b^L`, as views into the stacked storage."""
        rows = slice(k * self.sizes[1], (k + 1) * self.sizes[1])  # member k's rows of the stacked first layer
        weights, biases = self.weights_and_biases()
        return [weights[0][rows]] + [w[k] for w in weights[1:]], [biases[0][rows]] + [b[k] for b in biases[1:]]

    def network(self, k: int) -> Network:
        r"""A standalone :class:`~torch_manualbp.Network` with member k's current parameters (a copy).

        Raises:
            TypeError, ValueError: ``k`` is not an int in ``0 .. len(pop) - 1``.
        """
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, the index of a member, got {type(k).__name__}")
        if not 0 <= k < len(self):
            raise ValueError(f"k must be a member's index in 0..{len(self) - 1}, got {k}")
        like = self.weight_1
        # on the meta device first: no random initialisation drawn (the global generator is left alone), no copy wasted
        net = Network(self.sizes, cost=self.cost_function, device="meta", dtype=like.dtype).to_empty(device=like.device)
        with torch.no_grad():
            weights, biases = self.member_parameters(k)
            for layer, weight, bias in zip(net.layers, weights, biases):
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
        return net

    def _weighted_input(self, a_prev: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        r"""Every member's :math:`z^l`, :math:`(K, N, H_l)`, from the shared input and the stacked first layer or from
        the members' :math:`a^{l-1}` and a batched layer."""
        if weight.ndim == 2:  # the first layer: one product of the shared input and all members' rows
            z = weighted_input(a_prev, weight, bias)  # (N, K·H₁)
            return z.view(a_prev.shape[0], -1, self.sizes[1]).transpose(0, 1)  # (K, N, H₁), a view
        return torch.baddbmm(bias.unsqueeze(1), a_prev, weight.mT)  # zˡ = aˡ⁻¹ Wˡᵀ + bˡ, per member

    def _feedforward(self, x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        r""":math:`a^0 = x` (shared), then every member's :math:`a^l = \sigma(z^l)`, :math:`(K, N, H_l)`, the output
        layer's by the cost (:meth:`~torch_manualbp.costs.Cost.activation`), and the members' :math:`z^L`, which the
        cost's value may need."""
        activations = [x]
        for weight, bias in zip(weights[:-1], biases[:-1]):
            activations.append(torch.sigmoid(self._weighted_input(activations[-1], weight, bias)))  # aˡ = σ(zˡ)
        z = self._weighted_input(activations[-1], weights[-1], biases[-1])  # zᴸ, (K, N, sizes[-1])
        activations.append(self.cost_function.activation(z))  # aᴸ
        return activations, z

    def forward(self, x: Tensor) -> Tensor:
        """Every member's output activations aᴸ for the mini-batch ``x``, (K, N, sizes[-1])."""
        self.check_batch(x)
        return self._feedforward(x, *self.weights_and_biases())[0][-1]

    @torch.no_grad()
    def sgd_step(self, x: Tensor, y: Tensor, eta, lmbda=0.0, n: int | None = None) -> Tensor:
        r"""One step of stochastic gradient descent of every member on the same mini-batch.

        Member k takes exactly the step :meth:`Network.sgd_step(x, y, eta[k], lmbda[k], n)
        <torch_manualbp.Network.sgd_step>` would give it (up to rounding): feedforward, BP1-BP4 and
        :math:`w \to (1 - \frac{\eta_k\lambda_k}{n}) w - \frac{\eta_k}{m} \sum_x \partial C_{0,x}/\partial w`,
        the biases without the decay, in place and without autograd. Unlike :meth:`Network.sgd_step` it hands
        nothing to :func:`~torch_manualbp.observe.record_errors`.

        Args:
            x: the mini-batch of inputs, one example per row, shared by every member.
            y: the desired outputs: floats of shape :math:`(N, \text{sizes}[-1])` or integer class labels.
            eta: the learning rate, a finite number > 0, or K of them (a list, tuple or 1-D tensor), one per member.
            lmbda: the book's L2 regularisation parameter :math:`\lambda \ge 0`, or K of them; 0 (default) is none.
            n: the size of the whole training set, required when any λ is not 0.

        Shape:
            - x: :math:`(N, \text{sizes}[0])`.
            - y: :math:`(N, \text{sizes}[-1])` or :math:`(N)`.
            - Output: :math:`(K)`, each member's mean cost :math:`C_0` on the mini-batch before the update, without
              the L2 term.

        Raises:
            TypeError, ValueError: bad ``x``, ``y``, ``eta``, ``lmbda`` or ``n``, raised before any parameter changes.
        """
        self.check_batch(x)
        etas = self._per_member("eta", eta, check_learning_rate)
        weight_decays = self._per_member("lmbda", lmbda, lambda value: l2_weight_decay(value, n))
        if torch.is_autocast_enabled(x.device.type):
            raise RuntimeError("Population.sgd_step computes in the parameters' dtype; it does not run under autocast")
        y = targets(y, (x.shape[0], self.sizes[-1]), x)
        m = x.shape[0]
        step, decays = self._step_tensors(etas, weight_decays, m, x)
        weights, biases = self.weights_and_biases()
        activations, z = self._feedforward(x, weights, biases)
        error = activations[-1] - y  # aᴸ − y, (K, N, sizes[-1])
        costs = self.cost_function.fn(z, error, y).mean(-1)  # each member's C = (1/m) Σ_x C_x, (K,)
        # (ηₖ/m)(aᴸ − y): BP1 and BP2 are linear in it, so each member's δˡ below comes scaled by its step
        scaled_error = error * step
        # BP1, then BP2 with every Wˡ⁺¹ before its update; errors() reads weights[1:] only, batched over members
        deltas = errors(weights, activations, scaled_error, self.cost_function)
        if decays is not None:  # L2: w → (1 − ηₖλₖ/n) w, from the weight before this step's update
            for weight, decay in zip(weights, decays):
                weight.mul_(decay)
        ones = self._ones_like(m, x)
        first = deltas[0].transpose(0, 1).reshape(m, -1)  # δ¹ of all members side by side, (N, K·H₁)
        descend(weights[0], biases[0], first, x, 1.0, ones)  # BP3 and BP4 of the stacked first layer
        for weight, bias, delta, a_prev in zip(weights[1:], biases[1:], deltas[1:], activations[1:-1]):
            weight.baddbmm_(delta.mT, a_prev, alpha=-1.0)  # (BP4) fused, per member: Wˡ −= (ηₖ/m) δˡᵀ aˡ⁻¹
            bias.sub_(delta.sum(1))  # (BP3) per member: bˡ −= (ηₖ/m) Σ_x δ^{x,l}
        return costs

    def _per_member(self, name: str, value, check) -> list[float]:
        """``value`` checked as one number for every member or K numbers, one each: K checked floats."""
        k = len(self)
        if isinstance(value, (list, tuple)) or (isinstance(value, Tensor) and value.ndim == 1):
            values = value.tolist() if isinstance(value, Tensor) else list(value)
            if len(values) != k:
                raise ValueError(f"{name} must be one number or {k} numbers (one per member), got {len(values)}")
        else:
            values = [value] * k
        return [check(v) for v in values]

    def _step_tensors(self, etas: list[float], weight_decays: list[float], m: int, like: Tensor):
        r"""Each member's :math:`\eta_k/m`, :math:`(K, 1, 1)`, and, if any :math:`\lambda_k` is not 0, the
        weights' decay factors :math:`1 - \eta_k\lambda_k/n` shaped for each layer's weight; kept between calls,
        since a training run repeats the same ones."""
        key = (tuple(etas), tuple(weight_decays), m, like.dtype, like.device)
        if self._steps is None or self._steps[0] != key:
            kind = {"dtype": like.dtype, "device": like.device}
            step = torch.tensor([eta / m for eta in etas], **kind).view(-1, 1, 1)
            decays = None
            if any(weight_decays):
                factor = torch.tensor([1 - eta * decay for eta, decay in zip(etas, weight_decays)], **kind)
                decays = [factor.repeat_interleave(self.sizes[1]).unsqueeze(1)]  # (K·H₁, 1), the stacked rows
                decays += [factor.view(-1, 1, 1)] * (len(self.sizes) - 2)
            self._steps = (key, step, decays)
        return self._steps[1], self._steps[2]

    def _ones_like(self, m: int, like: Tensor) -> Tensor:
        """A vector of m ones for :func:`~torch_manualbp.equations.descend`, kept between calls."""
        ones = self._ones
        if ones is None or ones.shape[0] != m or ones.dtype != like.dtype or ones.device != like.device:
            ones = self._ones = torch.ones(m, dtype=like.dtype, device=like.device)
        return ones

    def check_batch(self, x: Tensor) -> None:
        """Raise unless ``x`` is a non-empty ``(N, sizes[0])`` mini-batch of the members' dtype, on their device."""
        check_float_tensor("x", x)
        if x.ndim != 2 or x.shape[1] != self.sizes[0] or x.shape[0] == 0:
            raise ValueError(
                f"x must be a non-empty mini-batch of shape (N, {self.sizes[0]}), got shape {tuple(x.shape)}"
            )
        check_same_kind("x", x, "the population's weights", self.weight_1)

    def get_extra_state(self) -> dict:
        """What a state dict needs beside the tensors: the sizes and the cost, checked on loading."""
        return {"sizes": self.sizes, "cost": self.cost_name}

    def set_extra_state(self, state: dict) -> None:
        if state != self.get_extra_state():
            raise ValueError(f"the state dict is of a population with {state}; this one: {self.get_extra_state()}")

    def extra_repr(self) -> str:
        return f"members={len(self)}, sizes={self.sizes}, cost={self.cost_name!r}"


def _check_members(networks) -> Network:
    """Raise unless ``networks`` is a non-empty sequence of Networks of one sizes, cost, dtype and device; the first."""
    if not isinstance(networks, Sequence) or isinstance(networks, (str, bytes)):
        raise TypeError(f"networks must be a list of Networks, got {type(networks).__name__}")
    if len(networks) == 0:
        raise ValueError("networks must hold at least one Network, got an empty list")
    for i, network in enumerate(networks):
        if not isinstance(network, Network):
            raise TypeError(f"networks[{i}] must be a Network, got {type(network).__name__}")
    first = networks[0]
    weight = first.layers[0].weight
    for i, network in enumerate(networks[1:], start=1):
        if network.sizes != first.sizes:
            raise ValueError(
                f"networks must all have the same sizes: networks[0] has {first.sizes}, "
                f"networks[{i}] has {network.sizes}"
            )
        if network.cost_name != first.cost_name:
            raise ValueError(
                f"networks must all have the same cost: networks[0] has {first.cost_name!r}, "
                f"networks[{i}] has {network.cost_name!r}"
            )
        check_same_kind(f"networks[{i}]'s weights", network.layers[0].weight, "networks[0]'s weights", weight)
    return first
