r"""``ManualBPClassifier``: a small Lightning "system" around the core's ``Network``.

The network, its gradients and, on the fast path, the update itself are the core's. Two paths:

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

Optimisation is manual so that one Lightning batch may hold several of the book's mini-batches
(``mini_batch_size``), stepped through in order, one SGD update each, like Keras' ``steps_per_execution``:
Lightning's fixed cost per batch (hooks, logging, loop bookkeeping) is then paid once per block.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import warnings
from collections.abc import Iterator
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics.classification import MulticlassAccuracy

from ..checks import check_dropout, check_learning_rate, check_regularization, l2_weight_decay
from ..network import Network, dropout_evaluation_weights, feedforward_to_cost
from ..sgd import MiniBatchSGD, check_mini_batch_size, differences_from_plain_sgd, mini_batches
from ..threads import apply_thread_rule
from .datamodule import NUM_TRAIN

__all__ = ["ManualBPClassifier", "EpochCost", "check_hyperparameters", "count_updates"]

#: The largest float32: ``torch.optim.SGD`` cannot apply a larger learning rate to float32 weights (RuntimeError).
FLOAT32_MAX = torch.finfo(torch.float32).max

# Under manual optimisation Lightning warns that a checkpoint taken every N steps holds the weights after that
# batch's updates. That is the state an exact resume needs (with the batch position saved beside it; see
# test_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run), so the warning would only mislead.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)


def check_hyperparameters(**settings) -> None:
    """Raise a ``ValueError`` (or ``TypeError``) whose message starts with the setting's name, for the first of
    ``ManualBPClassifier``'s ``settings`` (given by name, any subset) that cannot work. The classifier checks all of
    them; ``manualbp`` checks a config's before building anything, and prints the message after ``model.``."""
    for name, rule in _RULES.items():
        if name in settings:
            rule(settings[name])
    if "lmbda" in settings:  # raises on a bad lmbda or training_set_size
        l2_weight_decay(settings["lmbda"], settings.get("training_set_size", NUM_TRAIN))
    if settings.get("lmbda") and settings.get("weight_decay"):
        raise ValueError(
            "give lmbda (the book's L2, weights only) or weight_decay (torch's, every parameter), not both"
        )
    if settings.get("dropout") and "sizes" in settings and len(settings["sizes"]) < 3:
        raise ValueError(f"dropout removes hidden neurons, and sizes={settings['sizes']} has no hidden layer")


def _check_eta(eta) -> None:
    if check_learning_rate(eta) > FLOAT32_MAX:
        raise ValueError(f"eta must be a positive learning rate no larger than {FLOAT32_MAX:.4g}, got {float(eta)}")


def _check_momentum(momentum) -> None:
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")


def _check_weight_decay(weight_decay) -> None:
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay}")


def _check_lr_schedule(lr_schedule) -> None:
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")


def _check_compile(compile) -> None:
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")


#: One rule per setting, each written once (see check_hyperparameters); lmbda's needs training_set_size too.
_RULES = {
    "eta": _check_eta,
    "momentum": _check_momentum,
    "weight_decay": _check_weight_decay,
    "lr_schedule": _check_lr_schedule,
    "mini_batch_size": check_mini_batch_size,
    "compile": _check_compile,
    "regularization": check_regularization,
    "dropout": check_dropout,
}


class ManualBPClassifier(L.LightningModule):
    r"""Mini-batch SGD on the quadratic or the cross-entropy cost, for a ``Network`` of sigmoid layers.

    Plain SGD with learning rate :math:`\eta` on the mean cost is the book's update rule,
    :math:`w \to w - \frac{\eta}{m} \sum_x \partial C_x/\partial w` for a mini-batch of m examples.

    Args:
        sizes: neurons per layer, input first; ``[784, 30, 10]`` is chapter 1's network.
        eta: the learning rate :math:`\eta`; chapter 1 uses 3.0 for mini-batches of 10, chapter 3 0.5. An optimizer
            given instead (``--optimizer``) brings its own ``lr``, which is used, and said at the start.
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
            ``torch.optim.SGD``'s ``weight_decay`` :math:`= \lambda/n` on the weights alone. 0 (default): off.
        training_set_size: the :math:`n` in :math:`\lambda/n`, the number of training examples; 50,000 for the
            book's MNIST split (:class:`~torch_manualbp.lightning.MNISTDataModule`).
        compile: run the fused steps through ``torch.compile`` (``backend="compiled"`` of
            :class:`~torch_manualbp.sgd.MiniBatchSGD`). Compiling takes seconds to a minute, printed once; Inductor
            caches the result on disk. Refused where no step would be fused.
        regularization: ``"l2"`` (default) or ``"l1"``: the rule ``lmbda`` regularises the weights by. L1 is chapter
            3's :math:`w \to w - \frac{\eta\lambda}{n} \operatorname{sgn}(w) - \eta\, \partial C_0/\partial w`, on the
            fused path only.
        dropout: the fraction :math:`p` of each hidden layer's neurons removed for each mini-batch (the book's 0.5),
            forward and backward, from a generator seeded by the global seed and kept in checkpoints, so that a run
            resumed mid-epoch draws the masks the uninterrupted one draws; on the fused path only. Evaluation,
            ``forward`` and ``predict`` use the whole network with the weights outgoing from hidden neurons scaled by
            :math:`1 - p` (:func:`~torch_manualbp.network.dropout_evaluation_weights`). 0 (default): off.

    Settings that cannot work together are refused with a ``ValueError`` naming them before the first update: the
    classifier's own ``momentum``, ``weight_decay``, ``lmbda`` or ``lr_schedule`` beside an optimizer or scheduler
    given instead of its own, ``compile=True`` on a run that goes through autograd, and a per-step scheduler with
    ``compile=True``; L1 (with a nonzero ``lmbda``) or dropout on a run, or a step a callback observes, that goes
    through autograd.

    Attributes:
        sgd: the training engine of the fused path, :class:`~torch_manualbp.sgd.MiniBatchSGD`.
        steps_per_call: mini-batches per compiled call (``sgd.steps_per_call``).
    """

    def __init__(
        self,
        sizes: list[int] = [784, 30, 10],  # noqa: B006 -- LightningCLI shows and saves it; never mutated
        eta: float = 3.0,
        init: Literal["normal", "scaled"] = "normal",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        mini_batch_size: int | None = 10,
        cost: Literal["quadratic", "cross_entropy", "log_likelihood"] = "quadratic",
        lmbda: float = 0.0,
        training_set_size: int = NUM_TRAIN,
        compile: bool = False,
        regularization: Literal["l2", "l1"] = "l2",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_hyperparameters(**self.hparams)  # every argument by its rule, before anything is built
        self.automatic_optimization = False  # see the module docstring: several SGD steps per batch
        self.last_mini_batch: tuple[Tensor, Tensor] | None = None  # (x, y), for GradientAudit
        self.network = Network(sizes, cost=cost, init=init)
        backend = "compiled" if compile else "auto"
        self.sgd = MiniBatchSGD(
            self.network,
            mini_batch_size,
            lmbda,
            training_set_size,
            backend,
            on_compile=_say,
            regularization=regularization,
            dropout=dropout,  # its masks' generator is the engine's, seeded from the global RNG here
        )
        self._step_costs: list[tuple[int, Tensor]] = []  # (first global step, costs), until take_step_costs()
        self._epoch_cost = EpochCost()
        self._fused = False  # set by on_train_start: whether plain fused SGD applies to this run
        self._observers: list = []  # callbacks with observes_step(step), whose steps go through autograd
        self._saved_generator_state: Tensor | None = None  # the dropout masks' generator, from a checkpoint
        self._evaluated: dict[str, tuple[Tensor, int]] = {}  # stage -> ((Σ C₀·n, correct), images) this evaluation
        classes = sizes[-1]
        self.val_accuracy = MulticlassAccuracy(classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        """The output activations :math:`a^L`; with ``dropout``, by the book's rule: the whole network, the weights
        outgoing from hidden neurons scaled by :math:`1 - p`."""
        if not self.hparams.dropout:
            return self.network(x)
        weights, biases = self.network.weights_and_biases()
        weights = dropout_evaluation_weights(weights, self.hparams.dropout)  # outgoing weights × (1 − p)
        return feedforward_to_cost(x, weights, biases, self.network.cost_function)[0][-1]

    @property
    def fused(self) -> bool:
        """Whether this run trains on the fused path (decided at the start of training; see the module docstring)."""
        return self._fused

    @property
    def steps_per_call(self) -> int:
        return self.sgd.steps_per_call

    def take_step_costs(self) -> list[tuple[int, Tensor]]:
        """Every training step's cost since the last call, ``(first global step, costs)`` in order, from the fused path
        and from autograd alike: the record :class:`~torch_manualbp.lightning.safety.DivergenceGuard` reads."""
        taken, self._step_costs = self._step_costs, []
        return taken

    def rewind(self, step: int) -> bool:
        """Undo the fused updates of this batch from global step ``step`` on, for a divergence report (see
        :meth:`~torch_manualbp.sgd.MiniBatchSGD.rewind`); False if ``step`` was not fused in the current batch."""
        return self.sgd.rewind(step)

    def on_train_start(self) -> None:
        optimizer = self.optimizers().optimizer
        reasons = self._autograd_reasons(optimizer)
        self._observers = [callback for callback in self.trainer.callbacks if hasattr(callback, "observes_step")]
        self._refuse_what_cannot_work(optimizer, reasons)
        self._fused = not reasons
        if self._saved_generator_state is not None:  # a resumed run: its masks go on from where the checkpoint's were
            self.sgd.set_generator_state(self._saved_generator_state)
            self._saved_generator_state = None
        lr = optimizer.defaults["lr"]
        lr = f"; η is the optimizer's lr, {lr:g}, not model.eta" if lr != self.hparams.eta else ""
        if self.device.type == "cpu":
            rank_zero_info(apply_thread_rule(self.hparams.sizes, self._mini_batch_size_at_start()))
        if self._fused:
            how = f"compiled, {self.steps_per_call} steps per call" if self.hparams.compile else "eager"
            if self.sgd.uses_native():  # builds the native op the first time, or says once why it cannot
                how = "native: a Lightning batch of steps per call of torch.ops.manualbp.sgd_block"
            watched = [type(callback).__name__ for callback in self._observers]
            rank_zero_info(
                f"manualbp: training with the fused SGD step (MiniBatchSGD: BP1-BP4 and the update without autograd"
                f", {how})" + (f"; the steps {', '.join(watched)} observe go through autograd" if watched else "") + lr
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

    def _refuse_what_cannot_work(self, optimizer, reasons: list[str]) -> None:
        """Raise a ``ValueError`` naming the setting that this run would otherwise silently ignore."""
        hp, scheduler = self.hparams, self._scheduler()
        if reasons and hp.compile:
            raise ValueError(
                f"compile=True compiles the fused SGD step, which this run cannot use: {'; '.join(reasons)}"
            )
        fused_only = self._fused_only_settings()
        if fused_only and (reasons or self._observers):
            why = "; ".join(reasons) or "the steps " + ", ".join(type(c).__name__ for c in self._observers) + " observe"
            raise ValueError(
                f"model.{fused_only} is applied by the fused SGD step only, and this run goes through autograd"
                f" ({why}): leave it out, or what makes the run go through autograd"
            )
        if not self._own_optimizer():
            for name in ("momentum", "weight_decay", "lmbda"):
                if hp[name]:
                    raise ValueError(
                        f"model.{name}={hp[name]:g} is not applied by the optimizer given instead of the classifier's"
                        f" ({_describe(optimizer)}): set it on that optimizer, or leave out the optimizer"
                    )
            if hp.lr_schedule != "constant":
                raise ValueError(
                    f"model.lr_schedule={hp.lr_schedule!r} is not applied beside an optimizer given instead"
                )
        if scheduler is None:
            return
        if len(self.trainer.lr_scheduler_configs) > 1 or scheduler.interval not in ("epoch", "step"):
            raise ValueError("lr_scheduler: one scheduler, stepped every 'epoch' or every 'step' (SGD update)")
        if isinstance(scheduler.scheduler, ReduceLROnPlateau) and not (
            scheduler.interval == "epoch" and getattr(scheduler.scheduler, "monitor", None)
        ):
            raise ValueError(
                "lr_scheduler: ReduceLROnPlateau needs a monitor (--lr_scheduler.monitor) and interval 'epoch'"
            )
        if scheduler.interval == "step" and hp.compile:
            raise ValueError("compile=True runs several updates per call, a scheduler with interval 'step' one: choose")

    def _fused_only_settings(self) -> str:
        """The settings only the fused step applies, as ``name=value`` (L1 with a nonzero ``lmbda``, dropout); ""
        if none is set."""
        hp = self.hparams
        given = [f"regularization={hp.regularization!r}"] if hp.regularization == "l1" and hp.lmbda else []
        given += [f"dropout={hp.dropout:g}"] if hp.dropout else []
        return " and model.".join(given)

    def _autograd_reasons(self, optimizer) -> list[str]:
        """Why the fused step (plain SGD, one process, the parameters' dtype) cannot train this run; [] if it can."""
        hp, reasons = self.hparams, []
        if not self._own_optimizer():
            reasons += differences_from_plain_sgd(optimizer)
        if hp.momentum:
            reasons.append(f"momentum={hp.momentum:g} (the fused step is plain SGD)")
        if hp.weight_decay:
            reasons.append(
                f"weight_decay={hp.weight_decay:g} (torch's, on every parameter; the fused step has the book's lmbda)"
            )
        if self.trainer.world_size > 1:
            reasons.append(f"{self.trainer.world_size} processes (DDP averages gradients through autograd's hooks)")
        precision = str(self.trainer.precision)
        if "mixed" in precision:
            reasons.append(f"precision={precision} (autocast)")
        return reasons

    def _own_optimizer(self) -> bool:
        """Whether the optimizer is this class's (LightningCLI's ``--optimizer`` replaces ``configure_optimizers``)."""
        return "configure_optimizers" not in vars(self) and (
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
        cost = torch.cat(costs).mean()
        self._epoch_cost.add(cost, len(x))  # a tensor: no host sync at every step; logged at the epoch's last batch
        return cost

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
        costs = self.sgd.run(x, y, self.optimizers().optimizer.param_groups[0]["lr"], first_step)
        self._step_costs.append((first_step, costs))
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
            self.log("train/cost", mean, on_step=False, on_epoch=True, batch_size=rows, sync_dist=True)

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

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation()

    def on_test_epoch_end(self) -> None:
        self._log_evaluation()

    def _start_evaluation(self) -> None:
        self._evaluated = {}
        self.val_accuracy.reset()
        self.test_accuracy.reset()

    def _evaluate(self, batch, stage: str) -> None:
        """Add a batch's cost, correct answers and images to its stage's sums: a few tensor operations, no
        ``self.log`` (whose bookkeeping costs more than the arithmetic of a batch of 1,000): logged at the end."""
        x, y, labels = batch
        a, cost = self.network.output_and_cost(x, y, self.hparams.dropout)  # aᴸ, C₀ (no λ term): one feedforward
        self._accuracy(stage).update(a, labels)  # the book's answer is the output neuron with the highest activation
        correct = (a.argmax(-1) == labels).sum()  # the book's "9129 / 10000", an exact count (EpochReport prints it)
        sums = torch.stack((cost * len(x), correct.to(cost.dtype)))  # (Σ C₀·n, correct)
        total, images = self._evaluated.get(stage, (0.0, 0))
        self._evaluated[stage] = (sums + total, images + len(x))

    def _log_evaluation(self) -> None:
        """Log each stage's mean cost, accuracy and counts over the batches (and, under DDP, the processes) seen."""
        for stage, (sums, images) in self._evaluated.items():
            log = functools.partial(self.log, batch_size=images, sync_dist=True, add_dataloader_idx=False)
            log(f"{stage}/cost", sums[0] / images)  # weighted by images over processes: Σ C₀·n / Σ n
            log(f"{stage}/accuracy", self._accuracy(stage))  # torchmetrics' own count, beside ours
            log(f"{stage}/correct", sums[1], reduce_fx="sum")
            log(f"{stage}/images", float(images), reduce_fx="sum")

    def _accuracy(self, stage: str) -> MulticlassAccuracy:
        return self.val_accuracy if stage == "val" else self.test_accuracy

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The output activations ``(B, 10)`` of a batch ``(x, names, notes, readable)`` from
        ``MNISTDataModule.predict_dataloader``; ``PredictionReport`` prints them."""
        return self(batch[0])

    def configure_optimizers(self):
        # The fused path reads its learning rate from this optimizer (and its scheduler) and never steps it.
        hp = self.hparams
        parameters = self.parameters()
        if hp.lmbda and hp.regularization == "l2":  # the book's L2: weight_decay = λ/n on the weights, not biases
            weights, biases = self.network.weights_and_biases()
            decay = l2_weight_decay(hp.lmbda, hp.training_set_size)
            parameters = [{"params": weights, "weight_decay": decay}, {"params": biases, "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(parameters, lr=hp.eta, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return optimizer
        if self.trainer.max_epochs is None or self.trainer.max_epochs < 1:
            raise ValueError("lr_schedule='cosine' needs trainer.max_epochs to know when to reach 0")
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def count_updates(trainer, updates: int) -> None:
    """Count ``updates`` SGD steps taken without an optimizer as Lightning counts ``LightningOptimizer.step()``, so
    that ``trainer.global_step`` (and the checkpoints' names) is the number of updates."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for tracker in (progress.total, progress.current):  # increment_ready() and increment_completed(), `updates` times
        tracker.ready += updates
        tracker.completed += updates


class EpochCost:
    """The training cost summed over the epoch so far (rows-weighted, as ``self.log`` averages it), kept in checkpoints
    so that a run resumed mid-epoch logs the mean over the whole epoch, not over the part after the resume."""

    def __init__(self) -> None:
        self.epoch, self.total, self.rows, self.resumed = -1, 0.0, 0, False
        self.logged: tuple[Tensor | float, int] = (0.0, 0)  # (total, rows) when take_unlogged() last took them

    def start(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch, not the one a checkpoint left half done
            self.epoch, self.total, self.rows, self.resumed = epoch, 0.0, 0, False
            self.logged = (0.0, 0)

    def add(self, cost: Tensor, rows: int) -> tuple[Tensor, int]:
        """Add a batch's mean ``cost`` over ``rows`` examples; return what to log for it and its weight: the batch's
        own, or on the first batch after a resume the mean over the part of the epoch before it too."""
        before, before_rows, resumed = self.total, self.rows, self.resumed
        self.total, self.rows, self.resumed = cost.detach() * rows + before, before_rows + rows, False
        if not resumed:
            return cost, rows
        return (cost * rows + before) / (rows + before_rows), rows + before_rows

    def take_unlogged(self) -> tuple[Tensor | float, int]:
        """The mean cost of the rows added since the last call in this epoch (at the first call after a resume, the
        part of the epoch before it too) and their number, which ``self.log`` then weighs it by; marks them logged."""
        total, rows = self.total - self.logged[0], self.rows - self.logged[1]
        self.logged = (self.total, self.rows)
        return total / max(rows, 1), rows

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "total": float(self.total), "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.total, self.rows = state.get("epoch", -1), state.get("total", 0.0), state.get("rows", 0)
        self.resumed = self.rows > 0
        self.logged = (0.0, 0)  # nothing of this epoch is logged in this process yet


def _say(message: str) -> None:
    rank_zero_info(f"manualbp: {message}")


def _describe(optimizer: torch.optim.Optimizer) -> str:
    """``Adam(lr=0.001)``: the optimizer's class, its learning rate and the settings it was given that differ from
    the class's defaults."""
    defaults = {k: p.default for k, p in inspect.signature(type(optimizer)).parameters.items()}
    given = {k: v for k, v in optimizer.defaults.items() if k == "lr" or k in defaults and v != defaults[k]}
    settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in given.items())
    return f"{type(optimizer).__name__}({settings})"
