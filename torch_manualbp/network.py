r"""Nielsen's ``Network([784, 30, 10])`` as an ``nn.Module``, with chapter 2's algorithm beside it, and chapter 3's
``Network(sizes, cost="cross_entropy")`` with the book's L2 regularisation.

``Network.forward`` runs the layers, so ``quadratic_cost(net(x), y).backward()`` takes the gradients
through the hand-written Functions one node at a time (``Network.layered_cost`` does that for either cost).
``Network.backprop`` is the same algorithm for the whole network at once, in matrix form over a mini-batch and
with no autograd: :func:`feedforward`, then :func:`backpropagate`: BP1 for the output error, BP2 down the
layers, BP3 and BP4 for the gradients.
``Network.cost`` puts that same matrix form behind one autograd node (:class:`NetworkCostFunction`).
``Network.sgd_step`` is the book's ``update_mini_batch``: feedforward, BP1-BP4 and the update itself, with no
autograd at all (:func:`~torch_manualbp.step.update_mini_batch`, by a :class:`~torch_manualbp.step.StepRule`); it is
the fast path for training. All of them compute the equations
of :mod:`torch_manualbp.equations`, where each is written once, and they agree; the tests check it. The cost is an
object of :mod:`torch_manualbp.costs`, which each path asks for its value and its BP1: nothing here branches on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .activations import Activation, get_activation
from .checks import check_dropout, check_float_tensor, check_learning_rate, check_same_kind, targets
from .costs import Cost, get_cost
from .equations import a_minus_y, backpropagate, feedforward
from .functional import dropout as dropout_layer
from .network_backprop import Backprop, Gradients, NetworkCostFunction
from .nn import FullyConnected, SigmoidLinear
from .step import (  # the step's functions are the network's too, as they were before step.py held them
    StepRule,
    dropout_evaluation_weights,
    dropout_masks,
    feedforward_to_cost,
    hidden_activation,
    update_mini_batch,
)
from .step import notify_layers as notify_layers  # importable from here, as before

__all__ = [
    "Network",
    "Gradients",
    "Backprop",
    "NetworkCostFunction",
    "feedforward",
    "backpropagate",
    "feedforward_to_cost",
    "update_mini_batch",
    "dropout_masks",
    "dropout_evaluation_weights",
]


class Network(nn.Module):
    r"""A feedforward network of sigmoid neurons, ``Network([784, 30, 10])`` as in the book.

    Args:
        sizes: the number of neurons in each layer, input layer first. ``[784, 30, 10]`` is 784 input
            pixels, one hidden layer of 30 neurons and 10 output neurons, one per digit.
        cost: the cost every method trains on, as ``network2.py``'s ``Network(sizes, cost=...)``: a name, or a
            :class:`~torch_manualbp.costs.Cost` object (its own subclass, say) for a cost not listed here:

            - ``"quadratic"`` (default): chapter 2's :math:`C = \frac{1}{2n}\sum_x \lVert y(x) - a^L(x) \rVert^2`,
              whose BP1 is :math:`\delta^L = (a^L - y) \odot \sigma'(z^L)`.
            - ``"cross_entropy"``: chapter 3's
              :math:`C = -\frac{1}{n}\sum_x \sum_j [y_j \ln a^L_j + (1 - y_j) \ln(1 - a^L_j)]`, whose BP1 is
              :math:`\delta^L = a^L - y`: no :math:`\sigma'(z^L)`, so a saturated, wrong output still learns. Its
              value is computed from :math:`z^L`, finite however saturated the outputs.
            - ``"log_likelihood"``: chapter 3's softmax output layer,
              :math:`a^L_j = e^{z^L_j} / \sum_k e^{z^L_k}`, with :math:`C = -\frac1n \sum_x \ln a^L_{y(x)}`, whose BP1
              is :math:`\delta^L = a^L - y`; its value too comes from :math:`z^L` (``logsumexp``).
        init: the initialisation of every layer, ``"scaled"`` (default) or ``"normal"``; see
            :class:`~torch_manualbp.nn.SigmoidLinear`. The rule for this default: the core (``Network``,
            ``SigmoidLinear``) draws ``"scaled"``, chapter 3's initialisation, the better start for a new network;
            the Lightning classifier's defaults reproduce the book's chapter-1 run, so it draws ``"normal"``.
        activation: the hidden layers' activation, ``"sigmoid"`` (default, the book's), ``"tanh"``, ``"relu"``,
            ``"linear"`` or an :class:`~torch_manualbp.activations.Activation`; BP2 multiplies by its
            :math:`f'(z^l)`. The output layer is the cost's (sigmoid, or softmax for the log-likelihood). Hidden
            layers of another activation are :class:`~torch_manualbp.nn.FullyConnected`, drawn as ``init`` says
            (the same numbers a sigmoid network of the same seed draws).
        device, dtype: where and how to allocate the parameters.

    Shape:
        - Input: :math:`(*, \text{sizes}[0])`.
        - Output: :math:`(*, \text{sizes}[-1])`, the output activations :math:`a^L`.

    Attributes:
        cost_function: the :class:`~torch_manualbp.costs.Cost` object (``cost`` itself is the method :meth:`cost`).
        activation: the hidden layers' :class:`~torch_manualbp.activations.Activation`.
        cost_name: its name, ``"quadratic"``, ``"cross_entropy"`` or ``"log_likelihood"``.

    Examples::

        >>> net = Network([784, 30, 10])
        >>> x, labels = torch.rand(10, 784), torch.randint(0, 10, (10,))
        >>> result = net.backprop(x, labels)  # BP1-BP4 in matrix form, no autograd
        >>> [g.shape for g in result.nabla_w]
        [torch.Size([30, 784]), torch.Size([10, 30])]
        >>> net = Network([784, 100, 10], cost="cross_entropy", init="normal")  # chapter 3
        >>> cost = net.sgd_step(x, labels, eta=0.5, lmbda=5.0, n=50_000)
    """

    def __init__(
        self,
        sizes: Sequence[int],
        cost: str | Cost = "quadratic",
        init: str = "scaled",
        device=None,
        dtype=None,
        activation: str | Activation = "sigmoid",
    ) -> None:
        super().__init__()
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
            raise ValueError(f"sizes must be a list of at least two layer sizes, e.g. [784, 30, 10], got {sizes!r}")
        self.cost_function = get_cost(cost)
        self.activation = get_activation(activation)
        self._hidden = hidden_activation(self.activation)  # None for the sigmoid: BP2 reads σ' from a
        self.sizes = list(sizes)
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        self.layers = nn.ModuleList(
            SigmoidLinear(n_in, n_out, init=init, device=device, dtype=dtype)
            if self._hidden is None or l == len(pairs) - 1
            else _hidden_layer(n_in, n_out, self._hidden, init, device, dtype)
            for l, (n_in, n_out) in enumerate(pairs)
        )
        self._ones: Tensor | None = None  # see ones()
        self._rule: tuple | None = None  # the last sgd_step's settings and their StepRule; see _step_rule

    @property
    def cost_name(self) -> str:
        """The cost's name (``"quadratic"``, ``"cross_entropy"``, ``"log_likelihood"``): what a checkpoint or a log
        records."""
        return self.cost_function.name

    def forward(self, x: Tensor) -> Tensor:
        *hidden, output = self.layers
        for layer in hidden:
            x = layer(x)
        return self.cost_function.output(x, output)  # aᴸ, by the cost's output layer

    @torch.no_grad()
    def backprop(self, x: Tensor, y: Tensor) -> Gradients:
        r"""The gradient of the mean cost on a mini-batch, by BP1-BP4 in matrix form.

        This is ``network.py``'s ``backprop`` for all examples at once: each example is a row, so
        the book's column vectors :math:`a^l` become rows and :math:`w^l a^{l-1}` becomes
        :math:`a^{l-1} W^{l\top}`. No autograd is involved.

        Args:
            x: a mini-batch of inputs, one example per row.
            y: the desired outputs: floats of shape :math:`(N, \text{sizes}[-1])` or integer
                class labels of shape :math:`(N)`.

        Shape:
            - x: :math:`(N, \text{sizes}[0])`.
            - y: :math:`(N, \text{sizes}[-1])` or :math:`(N)`.

        Returns:
            :class:`Gradients`: ``nabla_w``, ``nabla_b``, ``delta`` per layer, and the ``cost``.
        """
        self.check_batch(x)
        y = targets(y, (x.shape[0], self.sizes[-1]), x)
        weights, biases = self.weights_and_biases()
        primes = None if self._hidden is None else []  # f'(zˡ) of the hidden layers, for BP2
        activations, z = feedforward_to_cost(x, weights, biases, self.cost_function, None, self._hidden, primes)
        n = x.shape[0]
        output_minus_y = a_minus_y(activations[-1], y)  # unscaled: the rows of δ are the book's per-example δ^{x,l}
        cost = self.cost_function.mean(z, output_minus_y, y)  # C = (1/n) Σ_x C_x
        sum_w, sum_b, deltas = backpropagate(weights, activations, output_minus_y, self.cost_function, primes)
        nabla_w = [s / n for s in sum_w]  # ∂C/∂Wˡ = (1/n) Σ_x δ^{x,l} (a^{x,l−1})ᵀ
        nabla_b = [s / n for s in sum_b]  # ∂C/∂bˡ = (1/n) Σ_x δ^{x,l}
        return Gradients(nabla_w, nabla_b, deltas, cost)

    @torch.no_grad()
    def output_and_cost(self, x: Tensor, y: Tensor, dropout: float = 0.0) -> tuple[Tensor, Tensor]:
        r"""The output :math:`a^L` and the mean cost :math:`C` of a mini-batch from one feedforward, without
        autograd: what evaluation needs, where ``network(x)`` and then a cost of ``x`` would run the layers twice.

        For a network trained with dropout (``sgd_step(..., dropout=p)``) pass the same ``dropout``: the weights
        outgoing from hidden neurons are then scaled by :math:`1 - p` (halved for the book's :math:`p = 1/2`), as
        :func:`dropout_evaluation_weights` says, without changing the parameters.

        Shape:
            - x: :math:`(N, \text{sizes}[0])`.
            - y: :math:`(N, \text{sizes}[-1])` floats or :math:`(N)` integer labels.
            - Output: :math:`(N, \text{sizes}[-1])` and a scalar.
        """
        self.check_batch(x)
        dropout = check_dropout(dropout)
        y = targets(y, (x.shape[0], self.sizes[-1]), x)
        weights, biases = self.weights_and_biases()
        if dropout:
            weights = dropout_evaluation_weights(weights, dropout)  # outgoing weights × (1 − p)
        activations, z = feedforward_to_cost(x, weights, biases, self.cost_function, None, self._hidden)
        output = activations[-1]
        return output, self.cost_function.mean(z, a_minus_y(output, y), y)  # aᴸ and C = (1/n) Σ_x C_x

    def cost(self, x: Tensor, y: Tensor) -> Tensor:
        r"""The mean cost of a mini-batch as one autograd node: the fast path for training through autograd.

        ``network.cost(x, y)`` equals :meth:`layered_cost`, with the same gradients, but
        its backward is :class:`NetworkCostFunction`'s: BP1-BP4 over all layers at once, in matrix form
        (:func:`backpropagate`, as in :meth:`backprop`), instead of one node per layer. Fewer nodes
        means less per-node overhead, which dominates at the book's mini-batches of 10.

        It gives up what only the per-layer Functions (:meth:`layered_cost`) offer: double backward,
        ``torch.func`` transforms, forward-mode AD and autocast (it computes in the parameters' dtype).

        Shape:
            - x: :math:`(N, \text{sizes}[0])`.
            - y: :math:`(N, \text{sizes}[-1])` floats or :math:`(N)` integer labels.
            - Output: a scalar.
        """
        self.check_batch(x)
        if torch.is_autocast_enabled(x.device.type):
            raise RuntimeError(
                "Network.cost computes in the parameters' dtype; under autocast use network.layered_cost(x, y)"
            )
        y = targets(y, (x.shape[0], self.sizes[-1]), x)
        weights, biases = self.weights_and_biases()
        parameters = [p for pair in zip(weights, biases) for p in pair]
        return NetworkCostFunction.apply(x, y, self.cost_function, self._hidden, *parameters)

    def layered_cost(self, x: Tensor, y: Tensor, masks: Sequence[Tensor] | None = None) -> Tensor:
        r"""The mean cost of a mini-batch through the per-layer Functions, one autograd node per layer.

        For the quadratic cost it is ``quadratic_cost(network(x), y)``; for the cross-entropy the output layer
        and the cost are one node, :func:`~torch_manualbp.functional.sigmoid_cross_entropy`, whose backward
        starts at :math:`\delta^L = a^L - y`, and for the log-likelihood likewise
        :func:`~torch_manualbp.functional.softmax_log_likelihood`. It equals :meth:`cost` and supports what that
        does not: double backward, ``torch.func`` transforms, forward-mode AD and autocast.

        With ``masks`` (one 0/1 vector per hidden layer, as :func:`dropout_masks` draws them) each hidden layer's
        output goes through :func:`~torch_manualbp.functional.dropout`, whose backward applies the same mask: the
        gradient of :meth:`sgd_step`'s dropout step.

        Shape:
            - x: :math:`(*, \text{sizes}[0])`.
            - y: :math:`(*, \text{sizes}[-1])` floats or :math:`(*)` integer labels.
            - Output: a scalar.
        """
        *hidden, output = self.layers
        for i, layer in enumerate(hidden):
            x = layer(x) if masks is None else dropout_layer(layer(x), masks[i])
        return self.cost_function.layered_cost(x, output, y)

    def sgd_step(
        self,
        x: Tensor,
        y: Tensor,
        eta: float,
        lmbda: float = 0.0,
        n: int | None = None,
        regularization: str = "l2",
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""One step of stochastic gradient descent on a mini-batch: the book's ``update_mini_batch``.

        Feedforward, BP1-BP4, then :math:`w \to w - \frac{\eta}{m} \sum_x \partial C_x/\partial w` and the same
        for the biases, for the m examples of the mini-batch, in place and without autograd
        (:func:`update_mini_batch`). It equals ``network.cost(x, y).backward()`` followed by
        ``torch.optim.SGD(lr=eta).step()`` up to rounding, with far fewer operations: no graph, no
        gradient tensors (BP3 and BP4 are added straight into the parameters), no optimizer.

        With ``lmbda`` it is chapter 3's L2-regularised step, ``network2.py``'s: the cost gains
        :math:`\frac{\lambda}{2n}\sum_w w^2` over the n examples of the training set, and the weights (not the
        biases) decay, :math:`w \to (1 - \frac{\eta\lambda}{n}) w - \frac{\eta}{m} \sum_x \partial C_{0,x}/\partial w`.
        That is ``torch.optim.SGD(lr=eta, weight_decay=lmbda / n)`` applied to the weights only. With
        ``regularization="l1"`` it is chapter 3's L1 instead, :math:`C = C_0 + \frac{\lambda}{n}\sum_w |w|`:
        :math:`w \to w - \frac{\eta\lambda}{n}\operatorname{sgn}(w) - \frac{\eta}{m} \sum_x
        \partial C_{0,x}/\partial w`.

        With ``dropout`` it is chapter 3's dropout: a fraction ``dropout`` of each hidden layer's neurons (the book's
        half) is removed for this mini-batch (:func:`dropout_masks`, from ``generator``), forward and backward, so
        the removed neurons' weights and biases get no BP3/BP4 term (a regularisation still applies to every weight,
        being part of the whole network's cost). Evaluate such a network with ``output_and_cost(x, y, dropout)``.

        Inside :func:`torch_manualbp.observe.record_errors` it hands over each layer's :math:`\partial C/\partial z`
        and :math:`\sigma'(z)`, as the autograd Functions do. It leaves no ``.grad``.

        Args:
            x: a mini-batch of inputs, one example per row.
            y: the desired outputs: floats of shape :math:`(N, \text{sizes}[-1])` or integer class labels.
            eta: the learning rate :math:`\eta`, a finite number > 0.
            lmbda: the book's regularisation parameter :math:`\lambda \ge 0` (``lambda`` is a Python keyword,
                hence the book's spelling); 0 (default) is no regularisation.
            n: the size of the whole training set (50,000 for the book's MNIST split), required with ``lmbda``.
            regularization: ``"l2"`` (default) or ``"l1"``: which rule ``lmbda`` regularises the weights by.
            dropout: the fraction of each hidden layer's neurons removed for this mini-batch, in [0, 1); 0
                (default) removes none.
            generator: the ``torch.Generator`` the removed neurons are drawn from (seeded, it makes a run
                reproducible); ``None`` for torch's global one.

        Shape:
            - x: :math:`(N, \text{sizes}[0])`.
            - y: :math:`(N, \text{sizes}[-1])` or :math:`(N)`.
            - Output: a scalar, the mini-batch's mean cost :math:`C_0` before the update, without the L2 term.

        Raises:
            TypeError, ValueError: bad ``x``, ``y``, ``eta``, ``lmbda``, ``n``, ``regularization`` or ``dropout``,
                raised before any parameter changes.

        Examples::

            >>> net = Network([784, 30, 10])
            >>> x, labels = torch.rand(10, 784), torch.randint(0, 10, (10,))
            >>> cost = net.sgd_step(x, labels, eta=3.0)
        """
        weights, biases = self.weights_and_biases()
        self._check_batch(x, weights[0])
        eta = check_learning_rate(eta)
        rule = self._step_rule(lmbda, n, regularization, dropout)
        if torch.is_autocast_enabled("cpu" if x.is_cpu else x.device.type):  # x.device.type alone costs a µs
            raise RuntimeError("Network.sgd_step computes in the parameters' dtype; it does not run under autocast")
        y = targets(y, (x.shape[0], self.sizes[-1]), x)
        ones = self.ones(x.shape[0], x)
        # what @torch.no_grad() does, without the few µs a call its Python wrapper and context manager cost
        grad_was_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            masks = dropout_masks(self.sizes, rule.dropout, x, generator) if rule.dropout else None  # after checks
            return rule.step(weights, biases, x, y, eta, ones, masks)
        finally:
            torch._C._set_grad_enabled(grad_was_enabled)

    def step_rule(self, lmbda: float = 0.0, n: int | None = None, regularization: str = "l2", dropout: float = 0.0):
        """The :class:`~torch_manualbp.step.StepRule` of :meth:`sgd_step` with these settings and this network's
        cost."""
        return StepRule(self.cost_function, lmbda, n, regularization, dropout, self.activation)

    def _step_rule(self, lmbda, n, regularization, dropout) -> StepRule:
        """:meth:`step_rule`, kept while a run repeats the same settings (compared exactly, types included), so
        that a training loop's steps do not each make and check it again."""
        key = (type(lmbda), lmbda, type(n), n, regularization, type(dropout), dropout, self.cost_function)
        key += (self.activation,)
        if self._rule is None or self._rule[0] != key:
            self._rule = (key, self.step_rule(lmbda, n, regularization, dropout))
        return self._rule[1]

    def weights_and_biases(self) -> tuple[list[Tensor], list[Tensor]]:
        r"""The parameters :math:`W^1 \dots W^L` and :math:`b^1 \dots b^L`, input side first."""
        # read from the module dicts: nn.Module.__getattr__ (self.layers, layer.weight) costs about a µs a name,
        # a noticeable share of a step at mini-batches of 10
        layers = self._modules["layers"]._modules.values()
        return [layer._parameters["weight"] for layer in layers], [layer._parameters["bias"] for layer in layers]

    def ones(self, n: int, like: Tensor) -> Tensor:
        """A vector of ``n`` ones in ``like``'s dtype and on its device, for :func:`~torch_manualbp.equations.descend`;
        kept between calls, since at mini-batches of 10 allocating it would be a noticeable share of a step."""
        ones = self._ones
        if ones is None or ones.shape[0] != n or ones.dtype != like.dtype or ones.device != like.device:
            ones = self._ones = torch.ones(n, dtype=like.dtype, device=like.device)
        return ones

    def check_batch(self, x: Tensor) -> None:
        """Raise unless ``x`` is a non-empty ``(N, sizes[0])`` mini-batch of the network's dtype, on its device."""
        self._check_batch(x, self.layers[0].weight)

    def _check_batch(self, x: Tensor, weight: Tensor) -> None:
        """:meth:`check_batch` against the first layer's ``weight``, for a caller that has it at hand."""
        check_float_tensor("x", x)
        if x.ndim != 2 or x.shape[1] != self.sizes[0] or x.shape[0] == 0:
            raise ValueError(
                f"x must be a non-empty mini-batch of shape (N, {self.sizes[0]}), got shape {tuple(x.shape)}"
            )
        check_same_kind("x", x, "the network's weights", weight)

    def extra_repr(self) -> str:
        activation = "" if self._hidden is None else f", activation={self.activation.name!r}"
        return f"sizes={self.sizes}, cost={self.cost_name!r}{activation}"


def _hidden_layer(n_in: int, n_out: int, activation: Activation, init: str, device, dtype) -> FullyConnected:
    """A hidden layer of ``activation``, its parameters drawn by ``init`` as :class:`SigmoidLinear` draws them (the
    weights, then the biases), so that a network of another activation starts from the sigmoid network's numbers."""
    layer = FullyConnected(n_in, n_out, activation=activation, device="meta", dtype=dtype)
    layer = layer.to_empty(device=torch.get_default_device() if device is None else device)
    with torch.no_grad():
        layer.weight.normal_(0.0, 1.0 / math.sqrt(n_in) if init == "scaled" else 1.0)
        layer.bias.normal_(0.0, 1.0)
    return layer
