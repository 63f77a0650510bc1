r"""``ManualBPClassifier``: a small Lightning "system" around the core's ``Network``, or a ``Population`` of them.

The network, its gradients and, on the fast path, the update itself are the core's. Two paths
(:func:`~torch_manualbp.lightning.paths.training_path` chooses, and refuses what cannot work, in one place):

- **fused** (the book's SGD, with its L2 or L1 ``lmbda`` and its ``dropout`` if set): the core's training engine,
  :class:`~torch_manualbp.sgd.MiniBatchSGD`: each mini-batch one ``update_mini_batch`` (feedforward, BP1-BP4 and the
  update in place), with no autograd, no gradient tensors and no optimizer step; by default (``backend="auto"``) a
  whole Lightning batch of such steps runs as one native op (a C++ loop, built once and cached; where it cannot be
  built, or for another cost, the eager steps make the same updates, and that is said once); with ``compile=True``
  several steps run as one ``torch.compile``-d call instead. The learning rate is the optimizer's, which a
  scheduler drives.
- **autograd**: ``Network.cost``, whose backward (``NetworkCostFunction``) runs BP1-BP4 over all layers at once,
  then the optimizer's step. Used where the fused step does not apply (an optimizer other than plain SGD, such as
  ``--optimizer Adam`` or SGD with momentum or weight decay; DDP; autocast; said once at the start of training) and
  for the steps that a callback observes through the backward hooks
  (:class:`~torch_manualbp.lightning.callbacks.LearningSpeedMonitor`,
  :class:`~torch_manualbp.lightning.callbacks.GradientAudit`). It applies the book's L2 (as the optimizer's
  ``weight_decay`` on the weights), not L1 or dropout: a run that would need them there is refused.

A **population** (``seeds``, or ``eta`` / ``lmbda`` given as one value per member) is K networks of these settings
trained together on the same mini-batches by the same engine, each member with its own seed, η and λ; it has the
fused path alone (what would need autograd is refused in one line), and is evaluated per member and as an ensemble.

Optimisation is manual so that one Lightning batch may hold several of the book's mini-batches
(``mini_batch_size``), stepped through in order, one SGD update each, like Keras' ``steps_per_execution``:
Lightning's fixed cost per batch (hooks, logging, loop bookkeeping) is then paid once per block.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
    manualbp fit --config experiments/nielsen_ch1_seeds.yaml   # three seeds as one population
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Iterator
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI, instantiate_class
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..checks import l2_weight_decay
from ..network import Network, dropout_evaluation_weights, feedforward_to_cost
from ..population import Population
from ..sgd import MiniBatchSGD, mini_batches
from ..threads import apply_thread_rule
from .callbacks import TrainingSetMonitor
from .datamodule import NUM_TRAIN
from .evaluation import Evaluation
from .hparams import check_hyperparameters, population_settings
from .noise import GradientNoiseMonitor
from .paths import _describe, check_population_callbacks, check_scheduler, training_path
from .progress import EpochCost, count_updates
from .rules import HalveEtaOnPlateau

__all__ = ["ManualBPClassifier"]

#: Callbacks that work on one network (its optimizer's η, its own evaluation, its gradients): refused beside a
#: population, which has one η per member and no optimizer.
_ONE_NETWORKS_CALLBACKS = (HalveEtaOnPlateau, TrainingSetMonitor, GradientNoiseMonitor)

# Under manual optimisation Lightning warns that a checkpoint taken every N steps holds the weights after that
# batch's updates. That is the state an exact resume needs (with the batch position saved beside it; see
# test_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run), so the warning would only mislead.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
# a population steps its parameters itself (the engine), with no optimizer to configure
warnings.filterwarnings(
    "ignore", message=r"`LightningModule\.configure_optimizers` returned `None`", category=UserWarning
)


class ManualBPClassifier(L.LightningModule):
    r"""Mini-batch SGD on the quadratic or the cross-entropy cost, for a ``Network`` of sigmoid layers, or for a
    population of K of them trained together.

    Plain SGD with learning rate :math:`\eta` on the mean cost is the book's update rule,
    :math:`w \to w - \frac{\eta}{m} \sum_x \partial C_x/\partial w` for a mini-batch of m examples.

    Args:
        sizes: neurons per layer, input first; ``[784, 30, 10]`` is chapter 1's network.
        eta: the learning rate :math:`\eta`; chapter 1 uses 3.0 for mini-batches of 10, chapter 3 0.5. An optimizer
            given instead (``--optimizer``) brings its own ``lr``, which is used, and said at the start. A list: one
            per member of a population.
        init: ``"normal"`` (the book's N(0, 1), chapters 1-2) or ``"scaled"`` (N(0, 1/n_in) weights,
            chapter 3); see :class:`~torch_manualbp.nn.SigmoidLinear`.
        momentum: SGD momentum; 0 (off) is the book's plain SGD.
        weight_decay: L2 penalty coefficient as ``torch.optim.SGD`` applies it, to weights and biases; 0 (off) by
            default. For the book's regularisation use ``lmbda``.
        lr_schedule: ``"constant"`` (the book's) or ``"cosine"``, which anneals :math:`\eta` to 0 over
            the trainer's ``max_epochs``. A scheduler given instead (``--lr_scheduler``) drives :math:`\eta` on every
            path, stepped at its interval: ``"epoch"``, or ``"step"``, which means every SGD update.
        mini_batch_size: the SGD mini-batch, the book's 10 by default, so that each Lightning batch may hold
            several: a batch of 1,000 makes 100 updates, exactly those of batches of 10 in the same order, on the
            fast path (a whole batch per native call). ``None``: each batch is one mini-batch. A batch size that is
            not a multiple of it is said at the start (each batch's last mini-batch is then smaller).
            ``trainer.global_step`` counts updates, and so does the ``step`` column of the logged metrics.
        cost: ``"quadratic"`` (chapters 1-2), ``"cross_entropy"`` or ``"log_likelihood"`` (chapter 3's softmax output
            layer); see :class:`~torch_manualbp.Network`.
        lmbda: the book's L2 regularisation parameter :math:`\lambda` (chapter 3 uses 5.0): the weights, not the
            biases, decay as :math:`w \to (1 - \eta\lambda/n) w - \eta\, \partial C_0/\partial w`, which is
            ``torch.optim.SGD``'s ``weight_decay`` :math:`= \lambda/n` on the weights alone. 0 (default): off. A
            list: one per member of a population.
        training_set_size: the :math:`n` in :math:`\lambda/n`, the number of training examples; 50,000 for the
            book's MNIST split (:class:`~torch_manualbp.lightning.MNISTDataModule`).
        compile: run the fused steps through ``torch.compile`` (``backend="compiled"`` of
            :class:`~torch_manualbp.sgd.MiniBatchSGD`). Compiling takes seconds to a minute, printed once; Inductor
            caches the result on disk. Refused where no step would be fused.
        regularization: ``"l2"`` (default) or ``"l1"``: the rule ``lmbda`` regularises the weights by. L1 is chapter
            3's :math:`w \to w - \frac{\eta\lambda}{n} \operatorname{sgn}(w) - \eta\, \partial C_0/\partial w`, on the
            fused path only.
        activation: the hidden layers' activation, ``"sigmoid"`` (the book's), ``"tanh"``, ``"relu"`` or
            ``"linear"`` (see :class:`~torch_manualbp.Network`); the native op's loop has sigmoid neurons only, so
            another activation trains with the eager step (said once at the start).
        dropout: the fraction :math:`p` of each hidden layer's neurons removed for each mini-batch (the book's 0.5),
            forward and backward, from a generator seeded by the global seed and kept in checkpoints, so that a run
            resumed mid-epoch draws the masks the uninterrupted one draws; on the fused path only. Evaluation,
            ``forward`` and ``predict`` use the whole network with the weights outgoing from hidden neurons scaled by
            :math:`1 - p` (:func:`~torch_manualbp.network.dropout_evaluation_weights`). 0 (default): off.
        seeds: train a population, member k starting from the weights ``torch.manual_seed(seeds[k])`` then
            ``Network(sizes, cost=cost, init=init)`` draws (as ``manualbp fit --seed_everything seeds[k]`` does for
            one network; the global generator is left as it was). One seed for all members, or ``None`` with ``eta``
            or ``lmbda`` a list: every member starts from the one network the global generator draws now.
        member: what ``forward`` and ``predict`` of a population answer with: ``None`` (default) ``forward`` every
            member's output, :math:`(K, N, 10)`, ``predict`` the ensemble's (the members' averaged outputs); k:
            member k's alone.
        optimizer: another optimizer instead of the book's SGD at ``eta``, as ``--optimizer`` gives it (LightningCLI's
            ``{"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}``): its ``lr`` is used, and it trains
            through autograd (said at the start). ``None`` (default): ``torch.optim.SGD`` at ``eta``.
        lr_scheduler: a scheduler of the optimizer's learning rate, as ``--lr_scheduler`` gives it (the same form),
            on the fused path as on autograd's; ``None`` (default): ``lr_schedule``'s.

    A population is K networks, K the length of the longest of ``seeds``, ``eta`` and ``lmbda`` (the others 1 or K
    long). It logs per member ``train/cost/member{k}``, ``{stage}/cost/member{k}``, ``{stage}/accuracy/member{k}``
    and ``{stage}/correct/member{k}``, and ``train/cost``, ``{stage}/cost`` (the members' mean), ``{stage}/accuracy``
    and ``{stage}/correct`` of the ensemble (stage ``val`` or ``test``).

    Settings that cannot work together are refused with a ``ValueError`` naming them before the first update
    (:func:`~torch_manualbp.lightning.paths.training_path`): the classifier's own ``momentum``, ``weight_decay``,
    ``lmbda`` or ``lr_schedule`` beside an optimizer or scheduler given instead of its own, ``compile=True`` on a run
    that goes through autograd, a per-step scheduler with ``compile=True``; L1 (with a nonzero ``lmbda``) or dropout
    on a run, or a step a callback observes, that goes through autograd; for a population anything that would need
    autograd, a schedule, an optimizer.

    Attributes:
        network: the :class:`~torch_manualbp.Network` (a population has ``population``, a
            :class:`~torch_manualbp.Population`, instead).
        sgd: the training engine of the fused path, :class:`~torch_manualbp.sgd.MiniBatchSGD`.
        steps_per_call: mini-batches per compiled call (``sgd.steps_per_call``).
        seeds, etas, lmbdas: a population's members' seeds, η and λ (``None`` for a network).

    Examples::

        >>> model = ManualBPClassifier([784, 30, 10], seeds=[0, 1, 2], eta=3.0)
        >>> model(torch.rand(5, 784)).shape  # every member's output activations
        torch.Size([3, 5, 10])
    """

    def __init__(
        self,
        sizes: list[int] = [784, 30, 10],  # noqa: B006 -- LightningCLI shows and saves it; never mutated
        eta: float | list[float] = 3.0,
        init: Literal["normal", "scaled"] = "normal",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        mini_batch_size: int | None = 10,
        cost: Literal["quadratic", "cross_entropy", "log_likelihood"] = "quadratic",
        lmbda: float | list[float] = 0.0,
        training_set_size: int = NUM_TRAIN,
        compile: bool = False,
        regularization: Literal["l2", "l1"] = "l2",
        dropout: float = 0.0,
        seeds: int | list[int] | None = None,
        member: int | None = None,
        activation: Literal["sigmoid", "tanh", "relu", "linear"] = "sigmoid",
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_hyperparameters(**self.hparams)  # every argument by its rule, before anything is built
        self.automatic_optimization = False  # see the module docstring: several SGD steps per batch
        self.last_mini_batch: tuple[Tensor, Tensor] | None = None  # (x, y), for GradientAudit
        self.seeds = self.etas = self.lmbdas = None
        self.members: int | None = None  # K for a population
        if seeds is not None or isinstance(eta, (list, tuple)) or isinstance(lmbda, (list, tuple)):
            self.seeds, self.etas, self.lmbdas = population_settings(seeds, eta, lmbda)
            self.members = len(self.seeds)
            if member is not None and not (isinstance(member, int) and 0 <= member < self.members):
                raise ValueError(
                    f"member must be a member's index in 0..{self.members - 1} or None (the ensemble), got {member!r}"
                )
            kind = {"cost": cost, "init": init, "activation": activation}
            shared = Network(sizes, **kind) if None in self.seeds else None
            self.population = Population([shared or _member_network(sizes, kind, s) for s in self.seeds])
        elif member is not None:
            raise ValueError(
                "member picks a member of a population; this is one network (no seeds, one eta, one lmbda)"
            )
        else:
            self.network = Network(sizes, cost=cost, init=init, activation=activation)
        self.sgd = self._engine()
        self._step_costs: list[tuple[int, Tensor]] = []  # (first global step, costs), until take_step_costs()
        self._batch_costs: tuple[int, Tensor] | None = None  # a population's batch: first step, (steps, K) costs
        self._epoch_cost = EpochCost()
        self._fused = False  # set by on_train_start: whether plain fused SGD applies to this run
        self._observers: list = []  # callbacks with observes_step(step), whose steps go through autograd
        self._saved_generator_state: Tensor | None = None  # the dropout masks' generator, from a checkpoint
        self.evaluation = Evaluation(sizes[-1], self.members)  # the book's counts, costs and accuracies

    def _engine(self) -> MiniBatchSGD:
        """The fused path's engine over the network, or the population (whose members it steps through views of
        its storage: made again if the population has moved to another device)."""
        hp = self.hparams
        model = self.population if self.members else self.network
        self._engine_storage = model.weights_and_biases()[0][0].data_ptr()
        return MiniBatchSGD(
            model,
            hp.mini_batch_size,
            self.lmbdas or hp.lmbda,
            hp.training_set_size,
            "compiled" if hp.compile else "auto",
            on_compile=_say,
            regularization=hp.regularization,
            dropout=hp.dropout,  # its masks' generator is the engine's, seeded from the global RNG here
        )

    def forward(self, x: Tensor) -> Tensor:
        """The output activations :math:`a^L`, (N, 10), or a population's, (K, N, 10) (member ``member``'s alone,
        (N, 10), if set); with ``dropout``, by the book's rule: the whole network, the weights outgoing from hidden
        neurons scaled by :math:`1 - p`."""
        p = self.hparams.dropout
        if self.members:
            self.population.check_batch(x)
            weights = self.population.weights_and_biases()[0]
            a = self.population.feedforward(x, dropout_evaluation_weights(weights, p) if p else None)[0][-1]
            return a if self.hparams.member is None else a[self.hparams.member]
        if not p:
            return self.network(x)
        weights, biases = self.network.weights_and_biases()
        weights = dropout_evaluation_weights(weights, p)  # outgoing weights × (1 − p)
        hidden = self.network._hidden
        return feedforward_to_cost(x, weights, biases, self.network.cost_function, None, hidden)[0][-1]

    def describe(self, k: int) -> str:
        """``member 1 (seed 1, η 3, λ 0)``: what sets a population's member k apart."""
        return f"member {k} (seed {self.seeds[k]}, η {self.etas[k]:g}, λ {self.lmbdas[k]:g})"

    @property
    def fused(self) -> bool:
        """Whether this run trains on the fused path (decided at the start of training; see the module docstring)."""
        return self._fused

    @property
    def steps_per_call(self) -> int:
        return self.sgd.steps_per_call

    def take_step_costs(self) -> list[tuple[int, Tensor]]:
        """Every training step's cost since the last call, ``(first global step, costs)`` in order, from the fused path
        and from autograd alike (a population's: the sum over members, non-finite as soon as one member's is): the
        record :class:`~torch_manualbp.lightning.safety.DivergenceGuard` reads."""
        taken, self._step_costs = self._step_costs, []
        return taken

    def rewind(self, step: int) -> bool:
        """Undo the fused updates of this batch from global step ``step`` on, for a divergence report (see
        :meth:`~torch_manualbp.sgd.MiniBatchSGD.rewind`); False if ``step`` was not fused in the current batch. A
        population's are not undone: it says which members' cost at ``step`` is not finite (False)."""
        if not self.members:
            return self.sgd.rewind(step)
        first, costs = self._batch_costs or (0, torch.empty(0))
        if first <= step < first + len(costs):  # the guard checks every batch on the CPU: the step is in this one
            bad = (~torch.isfinite(costs[step - first])).nonzero().flatten().tolist()
            named = "; ".join(f"{self.describe(k)}: {costs[step - first, k].item()}" for k in bad)
            rank_zero_info(f"manualbp: the training cost at step {step} is not finite for {named}")
        return False

    def on_fit_start(self) -> None:
        if self.members:  # before the callbacks' own on_train_start, which would reach for one network's optimizer
            check_population_callbacks(self.members, *self._callbacks())

    def _callbacks(self) -> tuple[list[str], list[str]]:
        """The names of the callbacks that observe single steps through autograd, and of those that work on one
        network."""
        callbacks = self.trainer.callbacks
        return (
            [type(callback).__name__ for callback in callbacks if hasattr(callback, "observes_step")],
            [type(callback).__name__ for callback in callbacks if isinstance(callback, _ONE_NETWORKS_CALLBACKS)],
        )

    def on_train_start(self) -> None:
        optimizer = None if self.members else self.optimizers().optimizer
        self._observers = [callback for callback in self.trainer.callbacks if hasattr(callback, "observes_step")]
        observers, network_only = self._callbacks()
        scheduler = self._scheduler()
        reasons = training_path(  # the one place that chooses the path and refuses what cannot work
            self.hparams,
            members=self.members,
            optimizer=optimizer,
            own_optimizer=self._own_optimizer(),
            schedulers=[f"lr_scheduler {type(scheduler.scheduler).__name__}"] if scheduler else None,
            world_size=self.trainer.world_size,
            precision=str(self.trainer.precision),
            observers=observers,
            network_only=network_only,
        )
        if self.hparams.activation != "sigmoid" and observers:  # they read SigmoidLinear layers' δ and σ'(z)
            raise ValueError(
                f"trainer.callbacks: {', '.join(observers)} watch sigmoid layers, and model.activation is"
                f" {self.hparams.activation!r}; leave them out"
            )
        check_scheduler(self.trainer.lr_scheduler_configs, self.hparams.compile)
        self._fused = not reasons
        if self.members and self._engine_storage != self.population.weight_1.data_ptr():  # moved to another device
            state, self.sgd = self.sgd.generator_state(), self._engine()
            self.sgd.set_generator_state(state)
        if self._saved_generator_state is not None:  # a resumed run: its masks go on from where the checkpoint's were
            self.sgd.set_generator_state(self._saved_generator_state)
            self._saved_generator_state = None
        if self.device.type == "cpu":
            size = self._mini_batch_size_at_start()
            rank_zero_info(apply_thread_rule(self.hparams.sizes, size, members=self.members or 1))
        lr = optimizer.defaults["lr"] if optimizer is not None else self.hparams.eta
        lr = f"; η is the optimizer's lr, {lr:g}, not model.eta" if lr != self.hparams.eta else ""
        if self._fused:
            how = f"compiled, {self.steps_per_call} steps per call" if self.hparams.compile else "eager"
            if self.sgd.uses_native():  # builds the native op the first time, or says once why it cannot
                how = "native: a Lightning batch of steps per call of torch.ops.manualbp.sgd_block"
            watched = [type(callback).__name__ for callback in self._observers]
            whom = f" of {self.members} members" if self.members else ""
            rank_zero_info(
                f"manualbp: training with the fused SGD step{whom} (MiniBatchSGD: BP1-BP4 and the update without"
                f" autograd, {how})"
                + (f"; the steps {', '.join(watched)} observe go through autograd" if watched else "")
                + lr
            )
        else:
            name = "torch.optim.SGD" if type(optimizer) is torch.optim.SGD else _describe(optimizer)
            rank_zero_info(
                f"manualbp: training through autograd and {name}, not the fused SGD step, because {'; '.join(reasons)}"
                + lr
            )

    def _mini_batch_size_at_start(self) -> int:
        """The examples per SGD step, for the thread rule: ``mini_batch_size``, else the batch size; says once if the
        batch size is not a multiple of ``mini_batch_size``."""
        batch_size = getattr(self.trainer.train_dataloader, "batch_size", None)
        size = self.hparams.mini_batch_size
        if size and batch_size and batch_size % size:
            rank_zero_info(
                f"manualbp: batch_size {batch_size} is not a multiple of mini_batch_size {size}: the last mini-batch"
                f" of each batch has {batch_size % size} examples, not {size}"
            )
        return size or batch_size or 1

    def _own_optimizer(self) -> bool:
        """Whether the optimizer is this class's (LightningCLI's ``--optimizer`` replaces ``configure_optimizers``)."""
        return self.hparams.optimizer is None and (
            type(self).configure_optimizers is ManualBPClassifier.configure_optimizers
        )

    def _scheduler(self):
        configs = self.trainer.lr_scheduler_configs
        return configs[0] if configs else None

    def on_train_epoch_start(self) -> None:
        self._epoch_cost.start(self.current_epoch)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y, _ = batch
        size = self.hparams.mini_batch_size or len(x)
        first_step = self.trainer.global_step
        self.sgd.forget()  # the steps of earlier batches have been checked (DivergenceGuard.on_train_batch_end)
        costs = []
        for i, j, fused in self._runs(first_step, mini_batches(len(x), size)):
            x_run, y_run = x[i * size : j * size], y[i * size : j * size]
            self.last_mini_batch = (x_run[(j - i - 1) * size :], y_run[(j - i - 1) * size :])
            costs.append(self._fused_steps(x_run, y_run) if fused else self._autograd_step(x_run, y_run))
            self._step_scheduler("step")
        cost = torch.cat(costs).mean(0)  # a population's: each member's, (K,)
        self._epoch_cost.add(cost, len(x))  # a tensor: no host sync at every step; logged at the epoch's last batch
        return cost.mean()

    def _runs(self, first_step: int, count: int) -> Iterator[tuple[int, int, bool]]:
        """The batch's ``count`` mini-batches as runs ``(start, stop, fused)`` in order: fused steps in as few runs as
        possible, every other step alone (observed by a callback, or the run is not fused), and every step alone when
        a scheduler changes η at each update."""
        observers = self._observers
        fused = [self._fused and not any(c.observes_step(first_step + k) for c in observers) for k in range(count)]
        per_step = (scheduler := self._scheduler()) is not None and scheduler.interval == "step"
        start = 0
        for is_fused, run in itertools.groupby(fused):
            stop = start + len(list(run))
            if is_fused and not per_step:
                yield start, stop, True
            else:
                yield from ((k, k + 1, is_fused) for k in range(start, stop))
            start = stop

    def _fused_steps(self, x: Tensor, y: Tensor) -> Tensor:
        """Fused SGD steps on the mini-batches of ``x``, by the engine; counted as Lightning counts optimizer steps."""
        first_step = self.trainer.global_step
        eta = self.etas if self.members else self.optimizers().optimizer.param_groups[0]["lr"]
        costs = self.sgd.run(x, y, eta, first_step)  # (steps,), a population's (steps, K)
        self._batch_costs = (first_step, costs)
        self._step_costs.append((first_step, costs.sum(1) if self.members else costs))
        count_updates(self.trainer, len(costs))
        return costs

    def _autograd_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One step through autograd: ``Network.cost``, its backward (BP1-BP4), the optimizer's step."""
        if torch.is_autocast_enabled(x.device.type):  # precision="*-mixed": the per-layer Functions follow autocast
            cost = self.network.layered_cost(x, y)
        else:
            cost = self.network.cost(x, y)  # its backward is BP1-BP4 (NetworkCostFunction)
        self._step_costs.append((self.trainer.global_step, cost.detach().reshape(1)))
        for p in self.network.parameters():  # optimizer.zero_grad(), without its per-call profiling overhead
            p.grad = None
        self.manual_backward(cost)
        self.optimizers().step()  # for torch.optim.SGD: w → w − η ∂C/∂w, b → b − η ∂C/∂b
        return cost.detach().reshape(1)

    def _step_scheduler(self, interval: str) -> None:
        """Step the scheduler, if it has this interval ("epoch" or "step": an SGD update) and its frequency is due."""
        scheduler = self._scheduler()
        if scheduler is None or scheduler.interval != interval:
            return
        count = self.trainer.global_step if interval == "step" else self.current_epoch + 1
        if count % scheduler.frequency:
            return
        if isinstance(scheduler.scheduler, ReduceLROnPlateau):  # manual optimisation passes it its metric itself
            scheduler.scheduler.step(self.trainer.callback_metrics[scheduler.scheduler.monitor])
        else:
            with warnings.catch_warnings():  # the fused path updates without optimizer.step(), which torch looks for
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before `optimizer.step()`")
                scheduler.scheduler.step()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._log_at_global_step()
        trainer = self.trainer
        last = batch_idx + 1 >= trainer.num_training_batches or 0 < trainer.max_steps <= trainer.global_step
        if last or trainer.should_stop:
            # the epoch's last batch: the mean cost of its batches not logged yet (all of them, the part before a
            # resume included, unless a stop that did not stop logged some), logged once rather than at every batch
            # (Lightning's bookkeeping for a self.log costs more than its batch's data); callbacks read it at the end
            mean, rows = self._epoch_cost.take_unlogged()
            log = functools.partial(self.log, on_step=False, on_epoch=True, batch_size=rows, sync_dist=True)
            for k in range(self.members or 0):
                log(f"train/cost/member{k}", mean[k])
            log("train/cost", mean.mean() if self.members else mean)

    def on_train_epoch_end(self) -> None:
        self._step_scheduler("epoch")

    def _log_at_global_step(self) -> None:
        """Make the loggers' step (Lightning's count of batches that stepped, which it uses for the rows of the
        validation and epoch metrics that follow) the number of SGD updates, as checkpoint names and
        ``trainer.global_step`` count them: several per batch here. Lightning adds 1 after each batch and takes it
        back for the epoch's row, so both rows of an epoch get its last update's number."""
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.trainer.global_step

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["manualbp_epoch_cost"] = self._epoch_cost.state_dict()
        if self.hparams.dropout:  # where the masks' random stream stands: a resume draws the masks that come next
            checkpoint["manualbp_dropout_generator"] = self.sgd.generator_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._epoch_cost.load_state_dict(checkpoint.get("manualbp_epoch_cost", {}))
        # restored by on_train_start, once the network is on its device, where the engine keeps the generator
        self._saved_generator_state = checkpoint.get("manualbp_dropout_generator")

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # a second validation dataloader is the test set (MNISTDataModule(monitor_test=True))
        self._evaluate(batch, "val" if dataloader_idx == 0 else "test")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        self.evaluation.add(self.population if self.members else self.network, batch, stage, self.hparams.dropout)

    def on_validation_epoch_start(self) -> None:
        self.evaluation.start()

    def on_test_epoch_start(self) -> None:
        self.evaluation.start()

    def on_validation_epoch_end(self) -> None:
        self.evaluation.log(self.log, self._penalty(), self._sum_over_processes)

    def on_test_epoch_end(self) -> None:
        self.evaluation.log(self.log, self._penalty(), self._sum_over_processes)

    def _penalty(self) -> Tensor | None:
        r"""The regularisation term of the cost times N: :math:`\frac{\lambda}{2} \sum w^2` (L2) or
        :math:`\lambda \sum |w|` (L1) over the weights, not the biases, one per member for a population; ``None``
        without λ."""
        lmbdas = self.lmbdas or [self.hparams.lmbda]
        if not any(lmbdas):
            return None
        l1 = self.hparams.regularization == "l1"
        members = [self.population.member_parameters(k)[0] for k in range(self.members)] if self.members else None
        terms = []
        for lmbda, weights in zip(lmbdas, members or [self.network.weights_and_biases()[0]]):
            size = sum((w.abs().sum() if l1 else 0.5 * (w * w).sum()) for w in weights)
            terms.append(lmbda * size.detach())
        return torch.stack(terms)

    def _sum_over_processes(self, value: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(value, reduce_op="sum")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The output activations ``(B, 10)`` of a batch ``(x, names, notes, readable)`` from
        ``MNISTDataModule.predict_dataloader``, which ``PredictionReport`` prints: a population's ensemble (the
        members' averaged outputs), or member ``member``'s."""
        a = self(batch[0])
        return a.mean(0) if self.members and self.hparams.member is None else a

    def configure_optimizers(self):
        # The fused path reads its learning rate from this optimizer (and its scheduler) and never steps it; a
        # population's members have their own η, and no optimizer.
        hp = self.hparams
        if self.members:
            return None
        parameters = self.parameters()
        if hp.optimizer is not None:  # --optimizer: LightningCLI's way, and its form of the scheduler's result
            optimizer = instantiate_class(parameters, hp.optimizer)
            scheduler = instantiate_class(optimizer, hp.lr_scheduler) if hp.lr_scheduler else None
            return LightningCLI.configure_optimizers(self, optimizer, scheduler)
        if hp.lmbda and hp.regularization == "l2":  # the book's L2: weight_decay = λ/n on the weights, not biases
            weights, biases = self.network.weights_and_biases()
            decay = l2_weight_decay(hp.lmbda, hp.training_set_size)
            parameters = [{"params": weights, "weight_decay": decay}, {"params": biases, "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(parameters, lr=hp.eta, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.lr_scheduler:  # --lr_scheduler alone drives this SGD
            return LightningCLI.configure_optimizers(self, optimizer, instantiate_class(optimizer, hp.lr_scheduler))
        if hp.lr_schedule == "constant":
            return optimizer
        if self.trainer.max_epochs is None or self.trainer.max_epochs < 1:
            raise ValueError("lr_schedule='cosine' needs trainer.max_epochs to know when to reach 0")
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _member_network(sizes: list[int], kind: dict, seed: int) -> Network:
    """The network ``manualbp fit --seed_everything seed`` starts from (``kind``: its cost, init and activation),
    drawn without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Network(sizes, **kind)


def _say(message: str) -> None:
    rank_zero_info(f"manualbp: {message}")
