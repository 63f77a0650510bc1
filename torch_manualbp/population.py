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

:meth:`Population.sgd_steps` takes a block of mini-batches in one call, as the engine (``MiniBatchSGD``) does for
a population where the native op does not serve (and there is no L1 or dropout): the arguments are checked once and
the members' costs computed once, after the block. A step repeated with the same η, λ and n (a training run)
finds them already checked and made into tensors.

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

from .checks import check_dropout, check_float_tensor, check_learning_rate, check_same_kind, l2_weight_decay, targets
from .equations import descend, errors, weighted_input
from .network import Network
from .population_checks import _check_members, _exact, _StepTensors
from .step import dropout_evaluation_weights

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
        self.activation = first.activation  # the hidden layers', every member's
        self._hidden = first._hidden  # None for the sigmoid
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
        self._steps: _StepTensors | None = None  # the last step's checked η, λ and n as tensors; see _checked_steps

    def __len__(self) -> int:
        return self.members

    @property
    def cost_name(self) -> str:
        """The members' cost's name, as :attr:`Network.cost_name <torch_manualbp.Network.cost_name>`."""
        return self.cost_function.name

    def weights_and_biases(self) -> tuple[list[Tensor], list[Tensor]]:
        r"""The stacked parameters :math:`W^1 \dots W^L` and :math:`b^1 \dots b^L`, input side first (plain lists: a
        step reads them once; an ``nn.ParameterList`` would cost an operation's time at every index)."""
        parameters = self._parameters  # nn.Module.__getattr__ for each would be a noticeable share of a step
        return [parameters[w] for w, _ in self._names], [parameters[b] for _, b in self._names]

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
        net = Network(self.sizes, cost=self.cost_function, device="meta", dtype=like.dtype, activation=self.activation)
        net = net.to_empty(device=like.device)
        with torch.no_grad():
            weights, biases = self.member_parameters(k)
            for layer, weight, bias in zip(net.layers, weights, biases):
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
        return net

    def feedforward(
        self, x: Tensor, weights: list[Tensor] | None = None, primes: list[Tensor] | None = None
    ) -> tuple[list[Tensor], Tensor]:
        r"""Every activation of every member, :math:`a^0 = x` (shared), then :math:`a^l = \sigma(z^l)`,
        :math:`(K, N, H_l)`, the output layer's by the cost (:meth:`~torch_manualbp.costs.Cost.activation`), and the
        members' :math:`z^L`, which the cost's value needs; without checks (:meth:`forward` makes them).

        The first layer is one product of the shared input and every member's rows, :math:`(N, K H_1)`, whose
        activations are viewed as :math:`(K, N, H_1)`: member k's block of columns. The later layers are batched over
        members (``baddbmm``). ``weights``: others to use in the members' weights' place, in their layout (the
        dropout-scaled weights of :meth:`output_and_cost`); ``primes``: for an activation other than the sigmoid, a
        list to which each hidden layer's :math:`f'(z^l)`, :math:`(K, N, H_l)`, is appended, for BP2."""
        own, biases = self.weights_and_biases()
        weights = own if weights is None else weights
        activations, z = [x], weighted_input(x, weights[0], biases[0])  # z¹ of all members side by side, (N, K·H₁)
        hidden = self._hidden
        for weight, bias in zip(weights[1:], biases[1:]):
            a = torch.sigmoid(z) if hidden is None else hidden(z)  # aˡ = σ(zˡ), or f(zˡ)
            if primes is not None:
                prime = hidden.derivative(z, a)  # f'(zˡ)
                primes.append(self._by_member(prime) if len(activations) == 1 else prime)
            activations.append(self._by_member(a) if len(activations) == 1 else a)
            z = torch.baddbmm(bias.unsqueeze(1), activations[-1], weight.mT)  # zˡ⁺¹ = aˡ Wˡ⁺¹ᵀ + bˡ⁺¹, per member
        z = self._by_member(z) if len(weights) == 1 else z  # (K, N, sizes[-1])
        activations.append(self.cost_function.activation(z))  # aᴸ
        return activations, z

    def _by_member(self, first: Tensor) -> Tensor:
        """The first layer's (N, K·H₁) as (K, N, H₁), a view: member k's columns are its block."""
        return first.view(first.shape[0], -1, self.sizes[1]).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Every member's output activations aᴸ for the mini-batch ``x``, (K, N, sizes[-1])."""
        self.check_batch(x)
        return self.feedforward(x)[0][-1]

    def output_and_cost(self, x: Tensor, y: Tensor, dropout: float = 0.0) -> tuple[Tensor, Tensor]:
        r"""Every member's output :math:`a^L` and mean cost :math:`C_0` of a mini-batch from one feedforward, as
        :meth:`Network.output_and_cost <torch_manualbp.Network.output_and_cost>` for each member: with ``dropout``,
        the weights outgoing from hidden neurons scaled by :math:`1 - p`, the parameters unchanged.

        Shape:
            - x: :math:`(N, \text{sizes}[0])`; y: :math:`(N, \text{sizes}[-1])` floats or :math:`(N)` labels.
            - Output: :math:`(K, N, \text{sizes}[-1])` and :math:`(K)`.
        """
        self.check_batch(x)
        dropout = check_dropout(dropout)
        y = targets(y, (x.shape[0], self.sizes[-1]), x)
        weights = self.weights_and_biases()[0]
        if dropout:
            weights = dropout_evaluation_weights(weights, dropout)  # outgoing weights × (1 − p), each member's
        activations, z = self.feedforward(x, weights)
        return activations[-1], self.costs(z, activations[-1] - y, y)

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
        steps = self._checked_steps(x, eta, lmbda, n)
        y = targets(y, (x.shape[0], self.sizes[-1]), x)
        return self.costs(*self._update(x, y, *steps.at(x.shape[0])), y)

    @torch.no_grad()
    def sgd_steps(
        self, x: Tensor, y: Tensor, eta, lmbda=0.0, n: int | None = None, mini_batch_size: int = 10
    ) -> Tensor:
        r""":meth:`sgd_step` on each mini-batch of ``x`` in turn, rows ``0 .. m - 1`` first: a block of steps whose
        arguments are checked once (the last mini-batch may be smaller). What a training loop over a Lightning batch
        calls.

        Args:
            x, y, eta, lmbda, n: as for :meth:`sgd_step`, ``x`` and ``y`` holding the rows of every mini-batch.
            mini_batch_size: m, the rows of each mini-batch.

        Shape:
            - Output: :math:`(\lceil N/m \rceil, K)`, each step's costs.

        Raises:
            TypeError, ValueError: as :meth:`sgd_step`, or a bad ``mini_batch_size``, before any parameter changes.
        """
        steps = self._checked_steps(x, eta, lmbda, n)
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(
                f"mini_batch_size must be a positive int, the rows of a mini-batch, got {mini_batch_size!r}"
            )
        y = targets(y, (x.shape[0], self.sizes[-1]), x)
        m = mini_batch_size
        full = x.shape[0] // m  # the mini-batches of m rows; a smaller last one follows
        xs, ys = (t[: full * m].reshape(full, m, t.shape[1]) for t in (x, y))  # (steps, m, ·)
        step = steps.at(m)
        outputs = [self._update(x_i, y_i, *step) for x_i, y_i in zip(xs.unbind(0), ys.unbind(0))]  # views, one op
        # every full mini-batch's costs at once, after the block: (steps, K, m, out) through the cost's fn
        costs = [self.costs(*map(torch.stack, zip(*outputs)), ys.unsqueeze(1))] if full else []
        if x.shape[0] > full * m:
            last = slice(full * m, None)
            costs.append(self.costs(*self._update(x[last], y[last], *steps.at(x.shape[0] - full * m)), y[last])[None])
        return torch.cat(costs)

    def _update(self, x: Tensor, y: Tensor, step: Tensor, decays: list[Tensor] | None, ones: Tensor):
        r"""The step itself, on arguments already checked: every member's feedforward, BP1-BP4 and update.

        ``step`` is each member's :math:`\eta_k/m`, :math:`(K, 1, 1)`; ``decays`` the weights' factors
        :math:`1 - \eta_k\lambda_k/n` or ``None``; ``ones`` m ones (:class:`_StepTensors`). Returns the members'
        :math:`z^L` and :math:`a^L - y`, from which :meth:`costs` computes the costs before the update."""
        primes = None if self._hidden is None else []  # f'(zˡ) of the hidden layers, for BP2
        activations, z = self.feedforward(x, None, primes)
        weights, biases = self.weights_and_biases()
        error = activations[-1] - y  # aᴸ − y, (K, N, sizes[-1])
        # (ηₖ/m)(aᴸ − y): BP1 and BP2 are linear in it, so each member's δˡ below comes scaled by its step
        # BP1, then BP2 with every Wˡ⁺¹ before its update; errors() reads weights[1:] only, batched over members
        deltas = errors(weights, activations, error * step, self.cost_function, primes)
        if decays is not None:  # L2: w → (1 − ηₖλₖ/n) w, from the weight before this step's update
            for weight, decay in zip(weights, decays):
                weight.mul_(decay)
        first = deltas[0].transpose(0, 1).reshape(x.shape[0], -1)  # δ¹ of all members side by side, (N, K·H₁)
        descend(weights[0], biases[0], first, x, 1.0, ones)  # BP3 and BP4 of the stacked first layer
        for weight, bias, delta, a_prev in zip(weights[1:], biases[1:], deltas[1:], activations[1:-1]):
            weight.baddbmm_(delta.mT, a_prev, alpha=-1.0)  # (BP4) fused, per member: Wˡ −= (ηₖ/m) δˡᵀ aˡ⁻¹
            bias.sub_(delta.sum(1))  # (BP3) per member: bˡ −= (ηₖ/m) Σ_x δ^{x,l}
        return z, error

    def costs(self, z: Tensor, output_minus_y: Tensor, y: Tensor) -> Tensor:
        r"""Each member's mean cost :math:`C_0 = \frac1m \sum_x C_x` from its :math:`z^L` and :math:`a^L - y`,
        :math:`(*, K, m, \text{sizes}[-1])`, and ``y`` (floats, broadcastable): :math:`(*, K)`."""
        return self.cost_function.fn(z, output_minus_y, y).mean(-1)

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

    def _checked_steps(self, x: Tensor, eta, lmbda, n) -> _StepTensors:
        """Raise unless ``x``, ``eta``, ``lmbda`` and ``n`` are a valid step's (``y`` is checked by ``targets``);
        the step's tensors, kept between calls: a run that repeats the same η, λ and n has them checked and made
        once, not at every step (a cheap comparison of the arguments, types included, finds them)."""
        self.check_batch(x)
        if torch.is_autocast_enabled("cpu" if x.is_cpu else x.device.type):  # x.device.type alone costs a µs
            raise RuntimeError("Population.sgd_step computes in the parameters' dtype; it does not run under autocast")
        key = (_exact(eta), _exact(lmbda), type(n), n, x.dtype, x.device)
        if self._steps is None or self._steps.key != key:
            etas = self._per_member("eta", eta, check_learning_rate)
            weight_decays = self._per_member("lmbda", lmbda, lambda value: l2_weight_decay(value, n))
            self._steps = _StepTensors(key, etas, weight_decays, self.sizes, x)
        return self._steps

    def check_batch(self, x: Tensor) -> None:
        """Raise unless ``x`` is a non-empty ``(N, sizes[0])`` mini-batch of the members' dtype, on their device."""
        check_float_tensor("x", x)
        if x.ndim != 2 or x.shape[1] != self.sizes[0] or x.shape[0] == 0:
            raise ValueError(
                f"x must be a non-empty mini-batch of shape (N, {self.sizes[0]}), got shape {tuple(x.shape)}"
            )
        check_same_kind("x", x, "the population's weights", self.weight_1)

    def get_extra_state(self) -> dict:
        """What a state dict needs beside the tensors: the sizes and the cost (and an activation other than the
        sigmoid), checked on loading."""
        state = {"sizes": self.sizes, "cost": self.cost_name}
        return state if self._hidden is None else {**state, "activation": self.activation.name}

    def set_extra_state(self, state: dict) -> None:
        if state != self.get_extra_state():
            raise ValueError(f"the state dict is of a population with {state}; this one: {self.get_extra_state()}")

    def extra_repr(self) -> str:
        activation = "" if self._hidden is None else f", activation={self.activation.name!r}"
        return f"members={len(self)}, sizes={self.sizes}, cost={self.cost_name!r}{activation}"
