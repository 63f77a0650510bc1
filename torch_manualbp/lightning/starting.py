r"""The classifier's start of training: which path trains this run (fused or autograd, chosen and refused in one place,
:func:`~torch_manualbp.lightning.paths.training_path`), the callbacks a population cannot take, the thread rule,
and the one line that says how the run trains."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info

from ..threads import apply_thread_rule
from .callbacks import TrainingSetMonitor
from .noise import GradientNoiseMonitor
from .paths import _describe, check_population_callbacks, check_scheduler, training_path
from .rules import HalveEtaOnPlateau

#: Callbacks that work on one network (its optimizer's η, its own evaluation, its gradients): refused beside a
#: population, which has one η per member and no optimizer.
_ONE_NETWORKS_CALLBACKS = (HalveEtaOnPlateau, TrainingSetMonitor, GradientNoiseMonitor, LearningRateMonitor)

__all__ = ["StartHooks"]


class StartHooks:
    """The start-of-training hooks of :class:`~torch_manualbp.lightning.ManualBPClassifier` (a mixin)."""

    def on_fit_start(self) -> None:
        if self.members:  # before the callbacks' own on_train_start, which would reach for one network's optimizer
            check_population_callbacks(self.members, *self._callbacks())
        if self.of_layers:  # before the callbacks' own on_train_start, which would reach for Network's layers
            _check_layer_callbacks(self.trainer.callbacks)

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
            if self.of_layers:  # the rule's measurements are of Network's fully connected layers
                threads = torch.get_num_threads()
                rank_zero_info(
                    f"manualbp: {threads} intra-op thread{'s' * (threads != 1)} (torch's; OMP_NUM_THREADS sets it)"
                )
            else:
                sizes = (self.population if self.members else self.network).sizes
                rank_zero_info(apply_thread_rule(sizes, size, members=self.members or 1))
        lr = optimizer.defaults["lr"] if optimizer is not None else self.hparams.eta
        lr = f"; η is the optimizer's lr, {lr:g}, not model.eta" if lr != self.hparams.eta else ""
        if self._fused:
            how = f"compiled, {self.steps_per_call} steps per call" if self.hparams.compile else "eager"
            if self.of_layers:
                how = "sequential.sgd_step on each mini-batch of the layers, eager"
            elif self.sgd.uses_native():  # builds the native op the first time, or says once why it cannot
                how = "native: a Lightning batch of steps per call of torch.ops.manualbp.sgd_block"
            watched = [type(callback).__name__ for callback in self._observers]
            whom = f" of {self.members} members" if self.members else ""
            engine = type(self.sgd).__name__
            rank_zero_info(
                f"manualbp: training with the fused SGD step{whom} ({engine}: BP1-BP4 and the update without"
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


def _check_layer_callbacks(callbacks) -> None:
    """A ``ValueError`` for the callbacks a network of ``layers`` cannot serve: those that observe steps through
    ``Network``'s backward hooks, or read its sigmoid layers' gradients (``GradientAudit``, ``LearningSpeedMonitor``,
    ``GradientNoiseMonitor``)."""
    refused = [
        type(callback).__name__
        for callback in callbacks
        if hasattr(callback, "observes_step") or isinstance(callback, GradientNoiseMonitor)
    ]
    if refused:
        raise ValueError(
            f"trainer.callbacks: {', '.join(refused)} observe Network's sigmoid layers, and model.layers gives a"
            " network of chapter 6's layers; leave them out"
        )


def say(message: str) -> None:
    """Print ``message`` once (rank zero), as ``manualbp: message``."""
    rank_zero_info(f"manualbp: {message}")
