r"""The classifier's training hooks: each Lightning batch a block of the book's mini-batches, stepped in order by the
engine (the fused path) or one by one through autograd and the optimizer (see
:class:`~torch_manualbp.lightning.ManualBPClassifier`), the epoch's training cost logged once at its end, and what a
checkpoint keeps beside the weights for an exact resume.

Lightning counts steps in its own way, through public calls only: one ``LightningOptimizer.step()`` a batch, so
``trainer.global_step`` is the number of Lightning batches trained (each a block of SGD updates), and the loggers'
step and the checkpoints' ``step=`` count the same. The SGD updates are the classifier's ``updates`` (kept in
checkpoints); ``manualbp`` turns the settings that count steps (``max_steps``, ``val_check_interval``,
``every_n_train_steps``) from updates into batches, and the package's callbacks name updates."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from ..sgd import mini_batches

__all__ = ["TrainingHooks"]


class TrainingHooks:
    """The training hooks of :class:`~torch_manualbp.lightning.ManualBPClassifier` (a mixin)."""

    #: The SGD updates made so far in this run (a resumed run's count goes on from its checkpoint's).
    updates: int = 0
    #: True while Lightning counts a batch whose updates are all made (the optimizer step then applies none).
    counts_batch_only: bool = False

    def setup(self, stage: str) -> None:
        if stage == "fit":  # a new run counts from 0; a checkpoint it resumes from restores its count after this
            self.updates = 0

    def on_train_epoch_start(self) -> None:
        self._epoch_cost.start(self.current_epoch)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        # also here: resumed from a checkpoint taken at an epoch's last batch, Lightning counts that epoch done and
        # calls no on_train_epoch_start for the next one
        self._epoch_cost.start(self.current_epoch)
        x, y, _ = batch
        size = self.hparams.mini_batch_size or len(x)
        self.sgd.forget()  # the steps of earlier batches have been checked (DivergenceGuard.on_train_batch_end)
        costs = []
        runs = list(self._runs(self.updates, mini_batches(len(x), size)))
        for n, (i, j, fused) in enumerate(runs):
            x_run, y_run = x[i * size : j * size], y[i * size : j * size]
            self.last_mini_batch = (x_run[(j - i - 1) * size :], y_run[(j - i - 1) * size :])
            last = n + 1 == len(runs)
            costs.append(self._fused_steps(x_run, y_run) if fused else self._autograd_step(x_run, y_run, last))
            self._step_scheduler("step")
        if runs[-1][2]:
            self._count_batch()
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
        """Fused SGD steps on the mini-batches of ``x``, by the engine, with no optimizer."""
        first_step = self.updates
        eta = self.etas if self.members else self.optimizers().optimizer.param_groups[0]["lr"]
        costs = self.sgd.run(x, y, eta, first_step)  # (steps,), a population's (steps, K)
        self._batch_costs = (first_step, costs)
        self._step_costs.append((first_step, costs.sum(1) if self.members else costs))
        self.updates += len(costs)
        return costs

    def _autograd_step(self, x: Tensor, y: Tensor, last: bool) -> Tensor:
        """One step through autograd: ``Network.cost``, its backward (BP1-BP4), the optimizer's step: Lightning's
        (hooks, precision, counted) for the batch's ``last`` update, the torch optimizer's own for the others."""
        if torch.is_autocast_enabled(x.device.type):  # precision="*-mixed": the per-layer Functions follow autocast
            cost = self.network.layered_cost(x, y)
        else:
            cost = self.network.cost(x, y)  # its backward is BP1-BP4 (NetworkCostFunction)
        self._step_costs.append((self.updates, cost.detach().reshape(1)))
        for p in self.network.parameters():  # optimizer.zero_grad(), without its per-call profiling overhead
            p.grad = None
        self.manual_backward(cost)
        optimizer = self.optimizers()  # for torch.optim.SGD: w → w − η ∂C/∂w, b → b − η ∂C/∂b
        if last:
            optimizer.step()
        else:
            _check_unscaled(self.trainer)
            optimizer.optimizer.step()
        self.updates += 1
        return cost.detach().reshape(1)

    def _count_batch(self) -> None:
        """Lightning's step for a batch whose updates the engine has made: ``LightningOptimizer.step()`` with no
        gradient, which changes no parameter (plain SGD skips parameters without one) and is how Lightning counts a
        step (``trainer.global_step``) through its public API."""
        for p in self.parameters():
            p.grad = None
        self.counts_batch_only = True
        try:
            self.optimizers().step()
        finally:
            self.counts_batch_only = False

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
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
            log("updates", float(self.updates), batch_size=1)  # metrics.csv's step counts Lightning batches

    def on_train_epoch_end(self) -> None:
        self._step_scheduler("epoch")

    def epoch_training_cost(self) -> tuple[float, list[float] | None] | None:
        """The mean training cost over this epoch's batches so far, as ``train/cost`` logs it at the epoch's end,
        and a population's per member (else ``None``); ``None`` before the epoch's first batch."""
        total, rows = self._epoch_cost.total, self._epoch_cost.rows
        if not rows:
            return None
        mean = torch.as_tensor(total, dtype=torch.float64) / rows
        return float(mean.mean()), (mean.tolist() if self.members else None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["manualbp_epoch_cost"] = self._epoch_cost.state_dict()
        checkpoint["manualbp_updates"] = self.updates
        state = self.sgd.generator_state()  # where the masks' random stream stands (None: no dropout, none drawn)
        if state is not None:  # a resume draws the masks that come next
            checkpoint["manualbp_dropout_generator"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._epoch_cost.load_state_dict(checkpoint.get("manualbp_epoch_cost", {}))
        if "manualbp_updates" not in checkpoint and _fitting(self):
            raise ValueError(
                "ckpt_path: this checkpoint was written by an earlier torch_manualbp, whose global_step counted SGD"
                " updates (now it counts Lightning batches); it can be validated, tested and predicted with, not"
                " resumed: start the run again"
            )
        self.updates = checkpoint.get("manualbp_updates", checkpoint.get("global_step", 0))
        # restored by on_train_start, once the network is on its device, where the engine keeps the generator
        self._saved_generator_state = checkpoint.get("manualbp_dropout_generator")


def _check_unscaled(trainer) -> None:
    """A ``ValueError`` if the precision plugin scales the loss (``16-mixed`` on CUDA): its scaler unscales the
    gradients in Lightning's optimizer step alone, which each batch takes once, for its last update."""
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise ValueError(
            f"trainer.precision {trainer.precision}: its gradient scaler steps once a Lightning batch, and this batch"
            " makes several SGD updates through autograd; use bf16-mixed, or model.mini_batch_size equal to"
            " data.batch_size"
        )


def _fitting(module) -> bool:
    """Whether ``module`` is being trained by a Trainer (not evaluated, nor loaded on its own)."""
    try:
        return module.trainer.state.fn == "fit"
    except RuntimeError:  # not attached to a Trainer: LightningModule.load_from_checkpoint
        return False
