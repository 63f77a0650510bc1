r"""The classifier's training hooks: each Lightning batch a block of the book's mini-batches, stepped in order by the
engine (the fused path) or one by one through autograd and the optimizer (see
:class:`~torch_manualbp.lightning.ManualBPClassifier`), the epoch's training cost logged once at its end, and what a
checkpoint keeps beside the weights for an exact resume."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from ..sgd import mini_batches
from .progress import count_updates

__all__ = ["TrainingHooks"]


class TrainingHooks:
    """The training hooks of :class:`~torch_manualbp.lightning.ManualBPClassifier` (a mixin)."""

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
