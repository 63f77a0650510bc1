r"""``ManualBPClassifier``: a small Lightning "system" around the core's ``Network``.

The network, its gradients and, on the fast path, the update itself are the core's. Two paths:

- **fused** (the book's SGD, with its L2 ``lmbda`` if set): each mini-batch is one ``update_mini_batch``
  (``Network.sgd_step``): feedforward, BP1-BP4 and the update in place, with no autograd, no gradient tensors and
  no optimizer step; with ``compile=True`` several such steps run as one ``torch.compile``-d call.
- **autograd**: ``Network.cost``, whose backward (``NetworkCostFunction``) runs BP1-BP4 over all layers at once,
  then ``torch.optim.SGD``. Used where the fused step does not apply (momentum, weight decay, DDP, autocast; said
  once at the start of training) and for the steps that a callback observes through the backward hooks
  (:class:`~torch_manualbp.lightning.callbacks.LearningSpeedMonitor`, :class:`~torch_manualbp.lightning.callbacks.GradientAudit`).

Optimisation is manual so that one Lightning batch may hold several of the book's mini-batches
(``mini_batch_size``), stepped through in order, one SGD update each, like Keras' ``steps_per_execution``:
Lightning's fixed cost per batch (hooks, logging, loop bookkeeping) is then paid once per block.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from .. import observe
from ..checks import check_learning_rate, l2_weight_decay, targets
from ..network import Network, update_mini_batch
from .datamodule import NUM_TRAIN

__all__ = ["ManualBPClassifier", "check_hyperparameters"]

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
        raise ValueError("give lmbda (the book's L2, weights only) or weight_decay (torch's, every parameter), not both")


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


def _check_mini_batch_size(mini_batch_size) -> None:
    if mini_batch_size is not None and mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be a positive number of examples or None, got {mini_batch_size}")


def _check_compile(compile) -> None:
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")


#: One rule per setting, each written once (see check_hyperparameters); lmbda's needs training_set_size too.
_RULES = {
    "eta": _check_eta,
    "momentum": _check_momentum,
    "weight_decay": _check_weight_decay,
    "lr_schedule": _check_lr_schedule,
    "mini_batch_size": _check_mini_batch_size,
    "compile": _check_compile,
}


class ManualBPClassifier(L.LightningModule):
    r"""Mini-batch SGD on the quadratic or the cross-entropy cost, for a ``Network`` of sigmoid layers.

    Plain SGD with learning rate :math:`\eta` on the mean cost is the book's update rule,
    :math:`w \to w - \frac{\eta}{m} \sum_x \partial C_x/\partial w` for a mini-batch of m examples.

    Args:
        sizes: neurons per layer, input first; ``[784, 30, 10]`` is chapter 1's network.
        eta: the learning rate :math:`\eta`; chapter 1 uses 3.0 for mini-batches of 10, chapter 3 0.5.
        init: ``"normal"`` (the book's N(0, 1), chapters 1-2) or ``"scaled"`` (N(0, 1/n_in) weights,
            chapter 3); see :class:`~torch_manualbp.nn.SigmoidLinear`.
        momentum: SGD momentum; 0 (off) is the book's plain SGD.
        weight_decay: L2 penalty coefficient as ``torch.optim.SGD`` applies it, to weights and biases; 0 (off) by
            default. For the book's regularisation use ``lmbda``.
        lr_schedule: ``"constant"`` (the book's) or ``"cosine"``, which anneals :math:`\eta` to 0 over
            the trainer's ``max_epochs``.
        mini_batch_size: the SGD mini-batch, when each Lightning batch should hold several: a batch of
            1,000 with ``mini_batch_size=10`` makes 100 updates, exactly those of batches of 10 in the same
            order. ``None`` (default): each batch is one mini-batch. ``trainer.global_step`` counts updates.
        cost: ``"quadratic"`` (chapters 1-2) or ``"cross_entropy"`` (chapter 3); see :class:`~torch_manualbp.Network`.
        lmbda: the book's L2 regularisation parameter :math:`\lambda` (chapter 3 uses 5.0): the weights, not the
            biases, decay as :math:`w \to (1 - \eta\lambda/n) w - \eta\, \partial C_0/\partial w`, which is
            ``torch.optim.SGD``'s ``weight_decay`` :math:`= \lambda/n` on the weights alone. 0 (default): off.
        training_set_size: the :math:`n` in :math:`\lambda/n`, the number of training examples; 50,000 for the
            book's MNIST split (:class:`~torch_manualbp.lightning.MNISTDataModule`).
        compile: run the fused steps through ``torch.compile`` (full graph, static shapes), ``steps_per_call``
            mini-batches unrolled into one compiled call. Compiling takes seconds to a minute, printed once;
            Inductor caches the result on disk, so later runs of the same shapes start faster.

    Attributes:
        steps_per_call: mini-batches per compiled call (10, measured: ``python -m benchmarks``). More
            steps per call save per-call overhead and cost compile time.
        fused_costs: ``(first global step, costs)`` of the fused steps of the current batch, for
            :class:`~torch_manualbp.lightning.safety.DivergenceGuard`, which consumes them (and, if one is not
            finite, calls :meth:`rewind`).
    """

    def __init__(
        self,
        sizes: list[int] = [784, 30, 10],
        eta: float = 3.0,
        init: Literal["normal", "scaled"] = "normal",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        mini_batch_size: int | None = None,
        cost: Literal["quadratic", "cross_entropy"] = "quadratic",
        lmbda: float = 0.0,
        training_set_size: int = NUM_TRAIN,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_hyperparameters(
            eta=eta, momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule,
            mini_batch_size=mini_batch_size, lmbda=lmbda, training_set_size=training_set_size, compile=compile,
        )  # fmt: skip
        self.save_hyperparameters()
        self.automatic_optimization = False  # see the module docstring: several SGD steps per batch
        self.last_mini_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, y), for GradientAudit
        self.fused_costs: list[tuple[int, Tensor]] = []
        self._fused_runs: list[tuple[int, list[Tensor], Tensor, Tensor, int]] = []  # for rewind()
        self.steps_per_call = 10
        self._fused = False  # set by on_train_start: whether plain fused SGD applies to this run
        self._observers: list = []  # callbacks with observes_step(step), whose steps go through autograd
        self.network = Network(sizes, cost=cost, init=init)
        classes = sizes[-1]
        self.val_accuracy = MulticlassAccuracy(classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    @property
    def fused(self) -> bool:
        """Whether this run trains on the fused path (decided at the start of training; see the module docstring)."""
        return self._fused

    def on_train_start(self) -> None:
        reasons = self._autograd_reasons()
        self._fused = not reasons
        self._observers = [callback for callback in self.trainer.callbacks if hasattr(callback, "observes_step")]
        if self._fused:
            how = f"compiled, {self.steps_per_call} steps per call" if self.hparams.compile else "eager"
            watched = [type(callback).__name__ for callback in self._observers]
            rank_zero_info(
                f"manualbp: training with the fused SGD step (Network.sgd_step: BP1-BP4 and the update without autograd"
                f", {how})" + (f"; the steps {', '.join(watched)} observe go through autograd" if watched else "")
            )
        else:
            rank_zero_info(
                f"manualbp: training through autograd and torch.optim.SGD, not the fused SGD step, because "
                f"{'; '.join(reasons)}" + ("; compile=True is ignored" if self.hparams.compile else "")
            )

    def _autograd_reasons(self) -> list[str]:
        """Why the fused step (plain SGD, one process, the parameters' dtype) cannot train this run; [] if it can."""
        hp, reasons = self.hparams, []
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

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        size = self.hparams.mini_batch_size or len(x)
        count = -(-len(x) // size)  # mini-batches in this batch, the last one possibly smaller
        first_step = self.trainer.global_step
        self.fused_costs, self._fused_runs = [], []
        costs, i = [], 0
        while i < count:
            j = self._fused_until(first_step, i, count)
            if j > i:  # mini-batches i..j-1: fused SGD steps
                x_run, y_run = x[i * size : j * size], y[i * size : j * size]
                before = [p.detach().clone() for p in self.network.parameters()]  # one copy per batch: see rewind()
                block = self._fused_steps(x_run, y_run, size)
                self.fused_costs.append((first_step + i, block))
                self._fused_runs.append((first_step + i, before, x_run, y_run, size))
                costs.append(block)
                i = j
            else:
                costs.append(self._autograd_step(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]))
                i += 1
        cost = torch.cat(costs).mean()
        # on_epoch only: accumulated as a tensor, so no host sync at every step
        self.log("train/cost", cost, on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True)
        return cost

    def _fused_until(self, first_step: int, i: int, count: int) -> int:
        """The end of the run of fused steps starting at mini-batch ``i``: the first one a callback observes."""
        if not self._fused:
            return i
        if not self._observers:
            return count
        for k in range(i, count):
            if any(callback.observes_step(first_step + k) for callback in self._observers):
                return k
        return count

    def _autograd_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One SGD step through autograd: ``Network.cost``, its backward (BP1-BP4), ``torch.optim.SGD``."""
        self.last_mini_batch = (x, y)
        cost = self.network.cost(x, y)  # its backward is BP1-BP4 (NetworkCostFunction)
        for p in self.network.parameters():  # optimizer.zero_grad(), without its per-call profiling overhead
            p.grad = None
        self.manual_backward(cost)
        self.optimizers().step()  # w → w − η ∂C/∂w, b → b − η ∂C/∂b
        return cost.detach().reshape(1)

    @torch.no_grad()
    def _fused_steps(self, x: Tensor, y: Tensor, size: int) -> Tensor:
        """One fused SGD step per mini-batch of ``size`` rows of ``x``, in order; returns their costs before each update."""
        network = self.network
        network.check_batch(x)
        y = targets(y, (len(x), network.sizes[-1]), x)
        eta, rule = self._learning_rate(), self._update_rule()
        steps = -(-len(x) // size)
        self.last_mini_batch = (x[(steps - 1) * size :], y[(steps - 1) * size :])
        costs, rows = [], 0
        if self.hparams.compile and not observe.is_recording() and len(x) // size >= self.steps_per_call:
            calls = len(x) // size // self.steps_per_call
            rows = calls * self.steps_per_call * size
            xs = x[:rows].reshape(calls, self.steps_per_call, size, -1)
            ys = y[:rows].reshape(calls, self.steps_per_call, size, -1)
            eta_t = torch.tensor(eta, dtype=x.dtype, device=x.device)
            weights, biases = network.weights_and_biases()
            for c in range(calls):
                costs.append(self._compiled_steps(weights, biases, xs[c], ys[c], eta_t, network.ones(size, x), rule))
        costs += self._eager_steps(x[rows:], y[rows:], size, eta, rule)  # what is left, or everything
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        for _ in range(steps):  # what LightningOptimizer.step() counts: trainer.global_step is the number of updates
            progress.increment_ready()
            progress.increment_completed()
        return torch.cat(costs)

    def _eager_steps(self, x: Tensor, y: Tensor, size: int, eta: float, rule: tuple[str, float]) -> list[Tensor]:
        """``update_mini_batch`` on each mini-batch of ``size`` rows of ``x`` (``y``: float targets), in order."""
        weights, biases = self.network.weights_and_biases()
        costs = []
        for start in range(0, len(x), size):
            x_m, y_m = x[start : start + size], y[start : start + size]
            ones = self.network.ones(len(x_m), x_m)
            costs.append(update_mini_batch(weights, biases, x_m, y_m, eta, ones, *rule).reshape(1))
        return costs

    def _learning_rate(self) -> float:
        """The optimizer's η, which its scheduler (if any) sets; the fused path reads it and never steps it."""
        return self.optimizers().optimizer.param_groups[0]["lr"]

    def rewind(self, step: int) -> bool:
        """Undo the fused updates of this batch from global step ``step`` on, for a divergence report.

        The parameters become those before ``step`` (restored from the start of its run of fused steps, then
        the run's earlier steps replayed eagerly) and their ``.grad`` the gradients of step ``step`` (through
        autograd), not applied: the state in which the autograd path stops on a non-finite cost. Returns False
        if ``step`` did not run on the fused path in the current batch.
        """
        for first, before, x, y, size in self._fused_runs:
            if first <= step < first + -(-len(x) // size):
                rows = (step - first) * size
                with torch.no_grad():
                    for p, saved in zip(self.network.parameters(), before):
                        p.copy_(saved)
                    y_float = targets(y, (len(x), self.network.sizes[-1]), x)
                    self._eager_steps(x[:rows], y_float[:rows], size, self._learning_rate(), self._update_rule())
                parameters = list(self.network.parameters())
                with torch.enable_grad():
                    cost = self.network.cost(x[rows : rows + size], y[rows : rows + size])
                    for p, grad in zip(parameters, torch.autograd.grad(cost, parameters)):
                        p.grad = grad
                return True
        return False

    def _update_rule(self) -> tuple[str, float]:
        r"""``(cost, weight_decay)`` for :func:`~torch_manualbp.network.update_mini_batch`: the network's cost and
        the book's L2 as :math:`\lambda/n` (see ``lmbda``)."""
        return self.network.cost_name, l2_weight_decay(self.hparams.lmbda, self.hparams.training_set_size)

    def _compiled_steps(self, weights, biases, xs, ys, eta: Tensor, ones: Tensor, rule: tuple[str, float]) -> Tensor:
        """``xs.shape[0]`` fused steps in one compiled call; the first call for new shapes is timed and printed."""
        global _compiled_unrolled_steps
        if _compiled_unrolled_steps is None:  # one per process, so that every module reuses Dynamo's cache
            _compiled_unrolled_steps = torch.compile(_unrolled_steps, fullgraph=True, dynamic=False)
        shapes = (tuple(xs.shape), tuple(ys.shape), tuple(tuple(w.shape) for w in weights))
        key = (shapes, xs.dtype, str(xs.device), rule)
        if key in _compiled_shapes:
            return _compiled_unrolled_steps(weights, biases, xs, ys, eta, ones, *rule)
        start = time.perf_counter()
        costs = _compiled_unrolled_steps(weights, biases, xs, ys, eta, ones, *rule)
        _compiled_shapes.add(key)
        rank_zero_info(
            f"manualbp: compiled {len(xs)} fused SGD steps per call in {time.perf_counter() - start:.1f} s "
            "(Inductor caches it on disk: later runs of these shapes start faster)"
        )
        return costs

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:  # manual optimisation steps its scheduler itself
            scheduler.step()

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # a second validation dataloader is the test set (MNISTDataModule(monitor_test=True))
        if dataloader_idx == 0:
            self._evaluate(batch, "val", self.val_accuracy)
        else:
            self._evaluate(batch, "test", self.test_accuracy)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_accuracy)

    def _evaluate(self, batch, stage: str, accuracy: MulticlassAccuracy) -> None:
        x, y, labels = batch
        a, cost = self.network.output_and_cost(x, y)  # aᴸ and C₀ (without the L2 term), one feedforward
        accuracy(a, labels)  # the book's answer is the output neuron with the highest activation
        self.log(f"{stage}/cost", cost, batch_size=len(x), sync_dist=True, add_dataloader_idx=False)
        self.log(f"{stage}/accuracy", accuracy, batch_size=len(x), add_dataloader_idx=False)
        # the book's "9129 / 10000": an exact count, summed over batches and processes (EpochReport prints it)
        correct = (a.argmax(-1) == labels).sum().float()
        self.log(f"{stage}/correct", correct, reduce_fx="sum", batch_size=len(x), sync_dist=True, add_dataloader_idx=False)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """The output activations ``(B, 10)`` of a batch ``(x, names, notes, readable)`` from
        ``MNISTDataModule.predict_dataloader``; ``PredictionReport`` prints them."""
        return self.network(batch[0])

    def configure_optimizers(self):
        # The fused path reads its learning rate from this optimizer (and its scheduler) and never steps it.
        hp = self.hparams
        parameters = self.parameters()
        if hp.lmbda:  # the book's L2: weight_decay = λ/n on the weights, none on the biases
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


_compiled_unrolled_steps = None  # torch.compile(_unrolled_steps), built on first use
_compiled_shapes: set[tuple] = set()  # shapes it has been called with in this process


def _unrolled_steps(weights, biases, xs: Tensor, ys: Tensor, eta: Tensor, ones: Tensor, cost: str, decay: float):
    """``update_mini_batch`` on ``xs[0]``, ``xs[1]``, ... in order: the body that ``torch.compile`` unrolls."""
    steps = range(xs.shape[0])
    return torch.stack([update_mini_batch(weights, biases, xs[u], ys[u], eta, ones, cost, decay) for u in steps])
