r"""The classifier's optimizer and scheduler: the book's ``torch.optim.SGD`` at ``eta`` (its L2 as ``weight_decay`` on
the weights), or the ``optimizer`` / ``lr_scheduler`` given (LightningCLI's ``--optimizer`` / ``--lr_scheduler``);
the scheduler stepped by hand at its interval, an epoch or an SGD update."""

from __future__ import annotations

import warnings

import torch
from lightning.pytorch.cli import LightningCLI, instantiate_class
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..checks import l2_weight_decay

__all__ = ["OptimizerHooks"]


class OptimizerHooks:
    """The optimizer hooks of :class:`~torch_manualbp.lightning.ManualBPClassifier` (a mixin)."""

    def _own_optimizer(self) -> bool:
        """Whether the optimizer is this class's (LightningCLI's ``--optimizer`` replaces ``configure_optimizers``)."""
        return self.hparams.optimizer is None and (
            type(self).configure_optimizers is OptimizerHooks.configure_optimizers
        )

    def _scheduler(self):
        configs = self.trainer.lr_scheduler_configs
        return configs[0] if configs else None

    def _step_scheduler(self, interval: str) -> None:
        """Step the scheduler, if it has this interval ("epoch" or "step": an SGD update) and its frequency is due."""
        scheduler = self._scheduler()
        if scheduler is None or scheduler.interval != interval:
            return
        count = self.updates if interval == "step" else self.current_epoch + 1
        if count % scheduler.frequency:
            return
        if isinstance(scheduler.scheduler, ReduceLROnPlateau):  # manual optimisation passes it its metric itself
            scheduler.scheduler.step(self.trainer.callback_metrics[scheduler.scheduler.monitor])
        else:
            with warnings.catch_warnings():  # the fused path's first batch steps the optimizer only at its end
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before `optimizer.step()`")
                scheduler.scheduler.step()

    def configure_optimizers(self):
        # The fused path reads its learning rate from this optimizer (and its scheduler), and steps it once a batch
        # with no gradients, which changes nothing and is how Lightning counts the batch (training.py). A
        # population's members have their own η: its optimizer is there for that count alone, at lr 0.
        hp = self.hparams
        if self.members:
            return torch.optim.SGD(self.parameters(), lr=0.0)
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
