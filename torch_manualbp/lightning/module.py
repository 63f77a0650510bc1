r"""``ManualBPClassifier``: a small Lightning "system" around the core's ``Network``, or a ``Population`` of them, or
chapter 6's network of ``layers`` (a :class:`~torch_manualbp.layer_spec.LayerNetwork`, its fused steps
``sequential.sgd_step``'s by :class:`~torch_manualbp.sequential_engine.SequentialSGD`).

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

The class is its settings, its network and the engine (this file); its Lightning hooks are grouped by what they do,
one file each: :mod:`~torch_manualbp.lightning.starting` (the path chosen, refused or said at the start),
:mod:`~torch_manualbp.lightning.training` (the block of steps a batch is, the epoch's cost, what checkpoints keep),
:mod:`~torch_manualbp.lightning.optimizing` (the optimizer and its scheduler) and
:mod:`~torch_manualbp.lightning.evaluating` (validation, test and predict).

Optimisation is manual so that one Lightning batch may hold several of the book's mini-batches
(``mini_batch_size``), stepped through in order, one SGD update each, like Keras' ``steps_per_execution``:
Lightning's fixed cost per batch (hooks, logging, loop bookkeeping) is then paid once per block.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
    manualbp fit --config experiments/nielsen_ch1_seeds.yaml   # three seeds as one population
    manualbp fit --config experiments/ch6_rung2_conv20.yaml   # chapter 6's first conv net, as model.layers
"""

from __future__ import annotations

import warnings
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ..layer_spec import LayerNetwork
from ..network import Network, dropout_evaluation_weights, feedforward_to_cost
from ..population import Population
from ..sequential_engine import SequentialSGD
from ..sgd import MiniBatchSGD
from .datamodule import NUM_TRAIN
from .evaluating import EvaluationHooks
from .evaluation import Evaluation
from .hparams import check_hyperparameters, population_settings
from .optimizing import OptimizerHooks
from .progress import EpochCost
from .starting import StartHooks, say
from .training import TrainingHooks

__all__ = ["ManualBPClassifier"]

#: The network ``sizes`` gives when neither it nor ``layers`` is given: chapter 1's.
DEFAULT_SIZES = (784, 30, 10)

# Under manual optimisation Lightning warns that a checkpoint taken every N steps holds the weights after that
# batch's updates. That is the state an exact resume needs (with the batch position saved beside it; see
# test_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run), so the warning would only mislead.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
# a population steps its parameters itself (the engine), with no optimizer to configure
warnings.filterwarnings(
    "ignore", message=r"`LightningModule\.configure_optimizers` returned `None`", category=UserWarning
)


class ManualBPClassifier(StartHooks, TrainingHooks, OptimizerHooks, EvaluationHooks, L.LightningModule):
    r"""Mini-batch SGD on the quadratic or the cross-entropy cost, for a ``Network`` of sigmoid layers, or for a
    population of K of them trained together.

    Plain SGD with learning rate :math:`\eta` on the mean cost is the book's update rule,
    :math:`w \to w - \frac{\eta}{m} \sum_x \partial C_x/\partial w` for a mini-batch of m examples.

    Args:
        sizes: neurons per layer, input first; ``[784, 30, 10]`` is chapter 1's network, and the network when
            neither ``sizes`` nor ``layers`` is given (``None``).
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
            ``trainer.global_step`` counts Lightning batches (as the ``step`` column of the logged metrics does),
            ``updates`` the SGD updates (the ``updates`` column).
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
        layers: chapter 6's network instead of ``sizes``: a list of layers input first, one dict each,
            ``{"conv_pool": [feature_maps, kernel_size, pool_size]}``, ``{"fully_connected": neurons}`` (each may
            set ``"activation"``: ``"sigmoid"``, the default, ``"tanh"``, ``"relu"`` or ``"linear"``) and the output
            layer last, ``{"softmax": 10}``, with ``cost="log_likelihood"`` (see :mod:`torch_manualbp.layer_spec`);
            a fully connected or softmax layer may set ``"dropout"``, ``network3.py``'s ``p_dropout`` of its input
            (masks from the engine's generator, kept in checkpoints; evaluation, ``forward`` and ``predict`` scale
            that layer's weights by :math:`1 - p`), on the fused path only.
            The images go in as :math:`(N, 1, 28, 28)` (rows of 784 are reshaped). The fused path steps each
            mini-batch by :func:`torch_manualbp.sequential.sgd_step` (eagerly: the native op and ``compile`` are
            ``Network``'s), with the book's L2 ``lmbda``; an optimizer given instead trains it through autograd and
            the layers' Functions (not with a layer's dropout). Refused beside it: ``sizes``, a population
            (``seeds``, lists of ``eta`` or ``lmbda``), ``compile``, ``dropout`` (each layer sets its own), L1,
            ``init`` and ``activation`` (set each layer's), and the callbacks that observe steps or read sigmoid
            layers' gradients (``GradientAudit``, ``LearningSpeedMonitor``, ``GradientNoiseMonitor``).

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
        network: the :class:`~torch_manualbp.Network`, or the :class:`~torch_manualbp.layer_spec.LayerNetwork` of
            ``layers`` (a population has ``population``, a :class:`~torch_manualbp.Population`, instead).
        sgd: the training engine of the fused path, :class:`~torch_manualbp.sgd.MiniBatchSGD` (for ``layers``,
            :class:`~torch_manualbp.sequential_engine.SequentialSGD`).
        steps_per_call: mini-batches per compiled call (``sgd.steps_per_call``).
        seeds, etas, lmbdas: a population's members' seeds, η and λ (``None`` for a network).
        updates: the SGD updates made so far in this run, several per Lightning batch (``trainer.global_step``
            counts the batches); kept in checkpoints.

    Examples::

        >>> model = ManualBPClassifier([784, 30, 10], seeds=[0, 1, 2], eta=3.0)
        >>> model(torch.rand(5, 784)).shape  # every member's output activations
        torch.Size([3, 5, 10])
        >>> layers = [{"conv_pool": [20, 5, 2]}, {"fully_connected": 100}, {"softmax": 10}]
        >>> ManualBPClassifier(layers=layers, cost="log_likelihood", eta=0.1)(torch.rand(5, 784)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        sizes: list[int] | None = None,
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
        layers: list[dict] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_hyperparameters(**self.hparams)  # every argument by its rule, before anything is built
        self.automatic_optimization = False  # see the module docstring: several SGD steps per batch
        self.last_mini_batch: tuple[Tensor, Tensor] | None = None  # (x, y), for GradientAudit
        self.seeds = self.etas = self.lmbdas = None
        self.members: int | None = None  # K for a population
        if layers is None and sizes is None:
            sizes = list(DEFAULT_SIZES)
        if layers is not None:  # chapter 6's layers (check_hyperparameters has refused what they cannot take)
            self.network = LayerNetwork(layers)
        elif seeds is not None or isinstance(eta, (list, tuple)) or isinstance(lmbda, (list, tuple)):
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
        self._step_costs: list[tuple[int, Tensor]] = []  # (first SGD update, costs), until take_step_costs()
        self._batch_costs: tuple[int, Tensor] | None = None  # a population's batch: first step, (steps, K) costs
        self._epoch_cost = EpochCost()
        self._fused = False  # set by on_train_start: whether plain fused SGD applies to this run
        self._observers: list = []  # callbacks with observes_step(step), whose steps go through autograd
        self._saved_generator_state: Tensor | None = None  # the dropout masks' generator, from a checkpoint
        classes = 10 if layers is not None else sizes[-1]
        self.evaluation = Evaluation(classes, self.members)  # the book's counts, costs and accuracies

    @property
    def of_layers(self) -> bool:
        """Whether the network was given as ``layers`` (a :class:`~torch_manualbp.layer_spec.LayerNetwork`)."""
        return self.hparams.get("layers") is not None

    def _engine(self) -> MiniBatchSGD | SequentialSGD:
        """The fused path's engine over the network, or the population (whose members it steps through views of
        its storage: made again if the population has moved to another device); for a network of ``layers``,
        :class:`~torch_manualbp.sequential_engine.SequentialSGD`, one ``sequential.sgd_step`` per mini-batch."""
        hp = self.hparams
        if self.of_layers:
            return SequentialSGD(self.network, hp.mini_batch_size, hp.lmbda, hp.training_set_size)
        model = self.population if self.members else self.network
        self._engine_storage = model.weights_and_biases()[0][0].data_ptr()
        return MiniBatchSGD(
            model,
            hp.mini_batch_size,
            self.lmbdas or hp.lmbda,
            hp.training_set_size,
            "compiled" if hp.compile else "auto",
            on_compile=say,
            regularization=hp.regularization,
            dropout=hp.dropout,  # its masks' generator is the engine's, seeded from the global RNG here
        )

    def forward(self, x: Tensor) -> Tensor:
        """The output activations :math:`a^L`, (N, 10), or a population's, (K, N, 10) (member ``member``'s alone,
        (N, 10), if set); with ``dropout``, by the book's rule: the whole network, the weights outgoing from hidden
        neurons scaled by :math:`1 - p`; a network of layers scales each dropout layer's weights so itself."""
        p = self.hparams.dropout
        if self.of_layers:
            return self.network(x)
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
        """Every training step's cost since the last call, ``(first SGD update, costs)`` in order, from the fused path
        and from autograd alike (a population's: the sum over members, non-finite as soon as one member's is): the
        record :class:`~torch_manualbp.lightning.safety.DivergenceGuard` reads."""
        taken, self._step_costs = self._step_costs, []
        return taken

    def rewind(self, step: int) -> bool:
        """Undo the fused updates of this batch from SGD update ``step`` on, for a divergence report (see
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


def _member_network(sizes: list[int], kind: dict, seed: int) -> Network:
    """The network ``manualbp fit --seed_everything seed`` starts from (``kind``: its cost, init and activation),
    drawn without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Network(sizes, **kind)
