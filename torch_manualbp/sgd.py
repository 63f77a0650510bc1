r"""The training engine: the book's mini-batch stochastic gradient descent on a ``Network``, without autograd.

:class:`MiniBatchSGD` steps through a block of examples one mini-batch at a time, in order, each step the book's
``update_mini_batch`` (:func:`~torch_manualbp.network.update_mini_batch`: feedforward, BP1-BP4 and the update in
place), and returns the cost of every step. It is what ``ManualBPClassifier`` trains with on its fast path, and what a
script uses to train without Lightning. It keeps what a divergence report needs to undo steps: the parameters before
each block (one copy per block, not per step) and the block itself, so :meth:`MiniBatchSGD.rewind` can restore the
parameters before any step of it.

Backends, the same updates each (``backend=``):

- ``"eager"``: one Python call of ``update_mini_batch`` per mini-batch.
- ``"compiled"``: ``steps_per_call`` mini-batches unrolled into one ``torch.compile``-d call (full graph, static
  shapes; :class:`~torch_manualbp.compiled.CompiledSteps`); a block's remainder, and any step inside
  :func:`torch_manualbp.observe.record_errors`, runs eagerly.
- ``"native"``: the whole block in one call of ``torch.ops.manualbp.sgd_block`` (``torch_manualbp/csrc/sgd_block.cpp``),
  a C++ loop over the mini-batches of the same steps. On the CPU (float32 or float64, a torch built with MKL, as its
  x86 wheels are) the loop makes no ATen call, whose fixed cost (dispatch, allocation) is more than the arithmetic at
  mini-batches of 10: buffers for every layer's z, a and δ allocated once per call, the matrix products direct calls
  of the BLAS torch itself uses (MKL's ``sgemm_``/``dgemm_``; the float32 forward product by a kernel of its own
  where the CPU has AVX2, faster than ``sgemm_`` at these sizes), the elementwise equations plain loops. Elsewhere
  (CUDA, parameters that are not contiguous: :func:`cpu_loop_refusal`) the block runs the eager step, said once
  through ``on_compile``. L1 and dropout in the op too (the block's masks drawn in
  Python, as the eager steps draw them, and passed in). The same updates to float32 rounding (the loops round
  ``exp`` unlike ATen's vectorised kernel, and sum the products in another order), to 1e-10 of the book's in
  float64. Built by ``torch.utils.cpp_extension`` the first time (about 15-30 s) and cached in torch's extensions
  folder (``TORCH_EXTENSIONS_DIR``), one build for each checkout and version of the source
  (:func:`native_build_name`). For the quadratic and the cross-entropy cost (another cost, and any step inside
  ``record_errors``, runs eagerly); where it cannot be built (no compiler: ``CXX`` names the one to use) the engine
  says so once and runs eagerly.
- ``"auto"``: ``"native"`` where it applies, otherwise ``"eager"``; a build failure or another cost is said once.

Chapter 3's L1 (``regularization="l1"``) and dropout (``dropout=0.5``) run on every backend. The dropout masks of a
block are drawn before its first step, one set per step from the engine's generator; :meth:`MiniBatchSGD.rewind` replays
them as they were, and :meth:`MiniBatchSGD.generator_state` / :meth:`MiniBatchSGD.set_generator_state` carry the
generator through a checkpoint, so a run resumed mid-epoch draws the masks an uninterrupted one would.

A :class:`~torch_manualbp.Population` trains through the same engine: ``run`` then returns each step's costs per
member, :math:`(\text{steps}, K)`, and ``eta`` and ``lmbda`` may be one number per member. A population of one is a
network: the engine steps its one member through views of the population's storage, on the same backends, at a lone
network's speed. K > 1 members step together by :meth:`Population.sgd_steps <torch_manualbp.Population.sgd_steps>`
(the first layers stacked, the later ones batched), with L2 or no regularisation and no dropout (anything else is a
``ValueError`` when the engine is made).

To run (one epoch of chapter 1 without Lightning)::

    net = Network([784, 30, 10], init="normal")
    sgd = MiniBatchSGD(net, mini_batch_size=10)
    costs = sgd.run(x_train, y_train, eta=3.0)  # (5000,) the cost of each mini-batch before its update
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from . import recording
from .checks import check_learning_rate, l2_weight_decay, targets
from .compiled import CompiledSteps
from .costs import COSTS
from .native import NATIVE_COSTS, NATIVE_SOURCE, build_native, cpu_loop_refusal, native_build_name
from .network import Network
from .population import Population
from .sgd_state import _Block, _RewindAndDropoutState
from .step import StepRule

__all__ = [
    "BACKENDS",
    "MiniBatchSGD",
    "NATIVE_COSTS",
    "NATIVE_SOURCE",
    "build_native",
    "cpu_loop_refusal",
    "check_mini_batch_size",
    "differences_from_plain_sgd",
    "mini_batches",
    "native_build_name",
]

BACKENDS = ("auto", "native", "eager", "compiled")


def check_mini_batch_size(mini_batch_size) -> None:
    """Raise a ``ValueError`` unless ``mini_batch_size`` is a positive number of examples or ``None``."""
    if mini_batch_size is not None and (isinstance(mini_batch_size, bool) or mini_batch_size < 1):
        raise ValueError(f"mini_batch_size must be a positive number of examples or None, got {mini_batch_size!r}")


def differences_from_plain_sgd(optimizer: torch.optim.Optimizer) -> list[str]:
    """What makes ``optimizer`` other than the engine's update, plain SGD (the book's); [] if nothing: then training
    with :class:`MiniBatchSGD` at the optimizer's learning rate makes its updates."""
    if type(optimizer) is not torch.optim.SGD:
        return [f"the optimizer is {type(optimizer).__name__} (the fused step is plain SGD)"]
    plain = {"momentum": 0, "dampening": 0, "nesterov": False, "weight_decay": 0, "maximize": False}
    found = {k: g[k] for g in optimizer.param_groups for k, value in plain.items() if g.get(k, value) != value}
    return [f"{k}={v} (the fused step is plain SGD)" for k, v in found.items()]


def mini_batches(rows: int, mini_batch_size: int) -> int:
    """How many mini-batches of ``mini_batch_size`` a block of ``rows`` examples makes, the last possibly smaller."""
    return -(-rows // mini_batch_size)


class MiniBatchSGD(_RewindAndDropoutState):
    r"""The book's SGD over blocks of mini-batches, in place on ``network``'s parameters, without autograd.

    Args:
        network: the :class:`~torch_manualbp.Network` to train, or a :class:`~torch_manualbp.Population` of K
            networks sharing each mini-batch; its cost gives BP1.
        mini_batch_size: the examples per SGD step; ``None``: each block is one mini-batch.
        lmbda, n: the book's regularisation parameter :math:`\lambda` over a training set of ``n`` examples
            (chapter 3: 5.0 and 50,000); 0 (default): off. For a population, one λ or K of them (a list).
        backend: ``"auto"`` (default: the fastest that applies, the native op where it serves, else the eager
            step), ``"eager"``, ``"compiled"`` or ``"native"`` (see the module docstring).
        steps_per_call: mini-batches per compiled call (10, measured: ``python -m benchmarks``); more save
            per-call overhead and cost compile time.
        on_compile: called with a one-line message when a compiled call for new shapes has been built and run,
            saying how long it took, and once when the native step cannot be used and the engine runs eagerly
            instead, saying why (``ManualBPClassifier`` prints them); ``None``: say nothing.
        regularization: how ``lmbda`` acts on the weights (not the biases), as ``update_mini_batch``'s
            ``regularization``: ``"l2"`` (default), :math:`w \to (1 - \eta\lambda/n) w`, or ``"l1"``,
            :math:`w \to w - (\eta\lambda/n) \operatorname{sgn}(w)`, each before the step's gradient.
        dropout: chapter 3's dropout, the fraction of each hidden layer's neurons removed for each mini-batch, in
            [0, 1); a fresh set per mini-batch, drawn by :func:`~torch_manualbp.network.dropout_masks` from
            ``generator``. 0 (default): none.
        generator: the ``torch.Generator`` the dropout masks are drawn from, on the data's device; ``None``: one the
            engine owns, seeded from torch's global generator at construction (only when ``dropout`` is set, so a
            run without dropout draws nothing from it) and made on the data's device at the first block. Its state
            is :meth:`generator_state`, for a checkpoint.

    Examples::

        >>> net = Network([784, 30, 10])
        >>> sgd = MiniBatchSGD(net, mini_batch_size=10)
        >>> costs = sgd.run(torch.rand(100, 784), torch.randint(0, 10, (100,)), eta=3.0)
        >>> costs.shape
        torch.Size([10])
        >>> sgd = MiniBatchSGD(net, 10, lmbda=5.0, n=50_000, regularization="l1", dropout=0.5)
        >>> pop = Population([Network([784, 30, 10]) for _ in range(3)])
        >>> MiniBatchSGD(pop, 10).run(torch.rand(100, 784), torch.randint(0, 10, (100,)), eta=[0.5, 1.0, 3.0]).shape
        torch.Size([10, 3])
    """

    def __init__(
        self,
        network: Network | Population,
        mini_batch_size: int | None = None,
        lmbda: float | Sequence[float] = 0.0,
        n: int | None = None,
        backend: Literal["auto", "native", "eager", "compiled"] = "auto",
        steps_per_call: int = 10,
        on_compile: Callable[[str], None] | None = None,
        regularization: Literal["l2", "l1"] = "l2",
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        check_mini_batch_size(mini_batch_size)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.population: Population | None = None  # K > 1 members
        self.members: int | None = None  # K for a population (its costs get a members' axis), None for a network
        self._member_engines: list[MiniBatchSGD] = []  # K > 1: one engine per member, over views of its storage
        if isinstance(network, Population):
            self.members = len(network)
            lmbdas = network._per_member("lmbda", lmbda, lambda value: (l2_weight_decay(value, n), value)[1])
            if self.members == 1:
                network, lmbda = _member_view(network, 0), lmbdas[0]
            else:
                self.population, self.lmbda, self.n = network, lmbda, n
                self._member_engines = [
                    MiniBatchSGD(
                        _member_view(network, k),
                        mini_batch_size,
                        lmbdas[k],
                        n,
                        backend,
                        steps_per_call,
                        on_compile if k == 0 else None,
                        regularization,
                        dropout,
                        generator,
                    )
                    for k in range(self.members)
                ]
                network = None
        elif not isinstance(network, Network):
            raise TypeError(f"network must be a Network or a Population, got {type(network).__name__}")
        self.network = network  # None for a population of K > 1
        self.mini_batch_size = mini_batch_size
        # the step's settings, checked once; a population of K > 1: what its members' rules share (each member's
        # engine holds its own rule, with its λ; self.lmbda holds them all)
        cost = (network or self.population).cost_function
        activation = (network or self.population).activation
        self.rule = StepRule(cost, 0.0 if network is None else lmbda, n, regularization, dropout, activation)
        self.backend = backend
        self.steps_per_call = steps_per_call
        self.on_compile = on_compile
        self._generator = generator
        self._owns_generator = generator is None
        self._pending_state: Tensor | None = None  # set_generator_state's, until the own generator is made
        # the owned generator's seed, drawn now so that torch.manual_seed before construction fixes the masks
        own_seed = self.dropout and generator is None and network is not None  # K > 1: the members draw theirs
        self._seed = int(torch.randint(2**62, ()).item()) if own_seed else None
        self._blocks: list[_Block] = []  # since forget(), for rewind()
        self._compiled = CompiledSteps(steps_per_call, on_compile)  # the compiled backend's calls
        self._native: bool | None = None  # whether the native step serves this engine; None: not decided yet
        self._refusals_said: set[str] = set()  # why the CPU loop could not take a block, each said once

    @property
    def weight_decay(self) -> float:
        r"""The rule's :math:`\lambda/n`."""
        return self.rule.weight_decay

    @property
    def regularization(self) -> str:
        """The rule's ``"l2"`` or ``"l1"``."""
        return self.rule.regularization

    @property
    def dropout(self) -> float:
        """The rule's fraction of hidden neurons removed for each mini-batch."""
        return self.rule.dropout

    def steps_in(self, rows: int) -> int:
        """The number of SGD steps a block of ``rows`` examples makes."""
        return mini_batches(rows, self.mini_batch_size or rows)

    @torch.no_grad()
    def run(self, x: Tensor, y: Tensor, eta: float, first_step: int = 0) -> Tensor:
        r"""One SGD step per mini-batch of ``x``, in order; the cost :math:`C_0` of each before its update.

        Args:
            x: the block's examples, one per row.
            y: their desired outputs, floats or integer class labels.
            eta: the learning rate :math:`\eta` of every step of the block.
            first_step: the global number of the block's first step, by which :meth:`rewind` names steps.

        Shape:
            - x: :math:`(N, \text{sizes}[0])`; y: :math:`(N, \text{sizes}[-1])` or :math:`(N)`.
            - Output: :math:`(\lceil N / \text{mini\_batch\_size} \rceil)`; for a population of K,
              :math:`(\lceil N / \text{mini\_batch\_size} \rceil, K)`, and ``eta`` one number or K.
        """
        if self.population is not None:
            return self._population_steps(x, y, eta, first_step)
        if self.members == 1:
            eta = _one_members(eta)
            return self._network_steps(x, y, eta, first_step).unsqueeze(1)
        return self._network_steps(x, y, eta, first_step)

    def _network_steps(self, x: Tensor, y: Tensor, eta: float, first_step: int) -> Tensor:
        """:meth:`run` for a network (and a population of one, through the views of its member)."""
        network = self.network
        network.check_batch(x)
        y = targets(y, (len(x), network.sizes[-1]), x)
        masks = self._block_masks(x) if self.dropout else None  # drawn after every check
        weights, biases = network.weights_and_biases()
        self._blocks.append(_Block(first_step, [p.detach().clone() for p in network.parameters()], x, y, eta, masks))
        size = self.mini_batch_size or len(x)
        rows = 0
        costs = []
        if self.backend == "compiled" and not recording.is_recording():
            rows = len(x) // (size * self.steps_per_call) * size * self.steps_per_call
            ones = network.ones(size, x)
            costs = self._compiled(
                weights, biases, x[:rows], y[:rows], eta, size, _first(masks, rows // size), self.rule, ones
            )
        elif self.uses_native() and not recording.is_recording() and self._cpu_loop_serves(weights, biases, x, masks):
            rows = len(x)
            rule = (self.rule.cost.name, self.rule.weight_decay, self.rule.regularization, masks or [])
            x, y = x.contiguous(), y.contiguous()
            costs = [torch.ops.manualbp.sgd_block(weights, biases, x, y, float(eta), size, *rule)]
        rest = None if masks is None else [m[rows // size :] for m in masks]
        return torch.cat(costs + self._eager_steps(weights, biases, x[rows:], y[rows:], eta, size, rest))

    def _cpu_loop_serves(self, weights, biases, x: Tensor, masks) -> bool:
        """Whether the native op's CPU loop can take this block's tensors; where not, the block runs eagerly, and the
        first time for each reason ``on_compile`` hears why."""
        why = cpu_loop_refusal([*weights, *biases, *(masks or [])], x)  # a few attribute reads: cheap per block
        if why is not None and why not in self._refusals_said:
            self._refusals_said.add(why)
            if self.on_compile is not None:
                self.on_compile(
                    f"the native SGD step's CPU loop cannot take this block ({why}): training with the eager one"
                )
        return why is None

    def _population_steps(self, x: Tensor, y: Tensor, eta, first_step: int) -> Tensor:
        """:meth:`run` for a population of K > 1: each member's engine in turn on the block (the native op's loop
        where it serves them, L1 or dropout), else every member at once by :meth:`Population.sgd_steps` (batched
        over members, faster than K eager engines)."""
        population, engines = self.population, self._member_engines
        population.check_batch(x)
        etas = population._per_member("eta", eta, check_learning_rate)  # before any member steps
        if self._stacked():
            y = targets(y, (len(x), population.sizes[-1]), x)
            before = [p.detach().clone() for p in population.parameters()]
            costs = population.sgd_steps(x, y, eta, self.lmbda, self.n, mini_batch_size=self.mini_batch_size or len(x))
            self._blocks.append(_Block(first_step, before, x, y, eta, None))
            return costs
        return torch.stack([engine.run(x, y, eta_k, first_step) for engine, eta_k in zip(engines, etas)], dim=1)

    def _stacked(self) -> bool:
        """Whether a population of K > 1 steps by :meth:`Population.sgd_steps` (eager, batched over members) rather
        than by its members' engines (native, compiled, L1 or dropout)."""
        first = self._member_engines[0]
        eager = first.backend != "compiled" and not first.uses_native()
        return eager and first.regularization == "l2" and not first.dropout

    def uses_native(self) -> bool:
        """Whether :meth:`run` steps through the native op: backend ``"native"`` or ``"auto"``, the network's cost one
        of :data:`NATIVE_COSTS`, the op built (at the first call, which builds it if need be), and the network's
        parameters ones its CPU loop takes (:func:`cpu_loop_refusal`: not on CUDA, say). Where the backend asks for
        it and it cannot serve, says why once through ``on_compile``."""
        if self._member_engines:
            return self._member_engines[0].uses_native()
        if self._native is None:
            self._native = False
            if self.backend in ("native", "auto"):
                cost = self.rule.cost  # the package's own object: a subclass may change its equations
                known = cost.name in NATIVE_COSTS and cost is COSTS[cost.name]
                failure = build_native() if known else f"it has no {cost!r} cost"
                if self.rule.hidden is not None:  # the loop's BP2 is the sigmoid's, a(1 − a)
                    failure = f"its loop has sigmoid neurons only, not {self.rule.activation.name}"
                self._native = failure is None
                if failure is not None and self.on_compile is not None:
                    self.on_compile(f"the native SGD step cannot be used ({failure}): training with the eager one")
        if not self._native:
            return False
        weights, biases = self.network.weights_and_biases()
        return self._cpu_loop_serves(weights, biases, None, None)

    def _eager_steps(self, weights, biases, x: Tensor, y: Tensor, eta: float, size: int, masks) -> list[Tensor]:
        """``update_mini_batch`` on each mini-batch of ``size`` rows of ``x`` in turn (step s with row s of each of
        ``masks``, if any); their costs, each shaped (1,)."""
        costs = []
        for s, start in enumerate(range(0, len(x), size)):
            x_m, y_m = x[start : start + size], y[start : start + size]
            ones = self.network.ones(len(x_m), x_m)
            step_masks = None if masks is None else [m[s] for m in masks]
            costs.append(self.rule.step(weights, biases, x_m, y_m, eta, ones, step_masks).reshape(1))
        return costs


def _member_view(population: Population, k: int) -> Network:
    """A :class:`Network` whose parameters are views of member k's part of the population's storage (its rows of the
    stacked first layer, its slice of each later layer: contiguous, as the native op needs), so that the network's
    steps update the population in place."""
    weights, biases = population.member_parameters(k)
    like = weights[0]
    # on the meta device: no initialisation drawn (the global generator is left alone); every parameter replaced below
    net = Network(
        population.sizes,
        cost=population.cost_function,
        device="meta",
        dtype=like.dtype,
        activation=population.activation,
    )
    for layer, weight, bias in zip(net.layers, weights, biases):
        layer.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)  # shares the storage
        layer.bias = nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
    return net


def _one_members(eta) -> float:
    """A population of one's ``eta``: one number, or a list / tuple / 1-D tensor of one."""
    if isinstance(eta, (list, tuple)) or (isinstance(eta, Tensor) and eta.ndim == 1):
        values = eta.tolist() if isinstance(eta, Tensor) else list(eta)
        if len(values) != 1:
            raise ValueError(f"eta must be one number or 1 number (one per member), got {len(values)}")
        return values[0]
    return eta


def _first(masks: list[Tensor] | None, steps: int) -> list[Tensor] | None:
    """The rows of ``masks`` (if any) for a block's first ``steps`` steps."""
    return None if masks is None else [m[:steps] for m in masks]
