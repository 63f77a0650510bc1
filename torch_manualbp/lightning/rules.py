r"""Chapter 3's rules for when to change η and when to stop, as Lightning callbacks on the fused path.

- Early stopping, the book's "no-improvement-in-ten" rule, is Lightning's own
  :class:`~lightning.pytorch.callbacks.EarlyStopping` with ``monitor: val/accuracy``, ``mode: max``,
  ``patience: 10`` (and its default ``min_delta: 0``): it stops once the validation accuracy has not exceeded its best
  for ``patience`` evaluations in a row, which is ``network2.py``'s ``early_stopping_n`` (its counter resets on a
  strictly higher accuracy and stops at ``n``). Nothing here duplicates it; ``experiments/ch3_early_stopping.yaml``
  uses it, and ``tests/test_ch3_rules.py`` checks the epoch it stops at against the book's loop.
- :class:`HalveEtaOnPlateau`: the learning-rate schedule of the chapter's problem: halve η each time the
  validation accuracy satisfies the no-improvement-in-n rule, and stop when η has dropped to 1/128 of its start.

To run::

    manualbp fit --config experiments/ch3_eta_schedule.yaml
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from .callbacks import log_metrics

__all__ = ["HalveEtaOnPlateau"]


class HalveEtaOnPlateau(L.Callback):
    r"""Multiply η by ``factor`` each time ``monitor`` has not improved for ``patience`` evaluations; stop training
    when η has come down to ``floor`` times its starting value.

    The book's problem (chapter 3, "How to choose a neural network's hyper-parameters?", learning rate schedule):
    "halves the learning rate each time the validation accuracy satisfies the no-improvement-in-10 rule; and
    terminates when the learning rate has dropped to 1/128 of its original value". After each evaluation the
    metric is compared with the best so far: higher (``mode="max"``; lower for ``"min"``) resets the count of
    evaluations without improvement, anything else adds one; at ``patience`` η is multiplied by ``factor`` and
    the count starts again (the best is kept). Training stops at the halving that brings η to
    ``floor`` of its start (the 7th with the defaults, so the last η trained with is 1/64 of the start).

    η is the learning rate of the optimizer's parameter groups, which the fused path reads before each Lightning
    batch (``ManualBPClassifier``'s ``_fused_steps``) and ``torch.optim.SGD`` on the autograd path: a change made
    here applies from the next batch on, on either path. Logged as ``schedule/eta`` after each evaluation, and said
    in a line when it changes. The count, the best value and the number of halvings are saved in checkpoints, and η
    is set from them when training starts, so a resumed run continues the schedule where it was. Refused beside an
    ``lr_scheduler`` (or ``lr_schedule: cosine``), which would set η too.

    Args:
        monitor: the logged metric to watch; ``val/accuracy`` is the book's.
        mode: ``"max"`` (an accuracy) or ``"min"`` (a cost): which direction improves.
        patience: evaluations without improvement before η changes, the book's 10.
        factor: what η is multiplied by, in (0, 1); the book's 1/2.
        floor: the fraction of the starting η at which training stops, in (0, 1); the book's 1/128.

    Examples::

        >>> trainer = L.Trainer(callbacks=[HalveEtaOnPlateau(patience=10)])
    """

    def __init__(
        self,
        monitor: str = "val/accuracy",
        mode: str = "max",
        patience: int = 10,
        factor: float = 0.5,
        floor: float = 1 / 128,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive number of evaluations, got {patience!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        if not 0 < floor < 1:
            raise ValueError(f"floor must lie in (0, 1), a fraction of the starting η, got {floor}")
        self.monitor, self.mode, self.patience, self.factor, self.floor = monitor, mode, patience, factor, floor
        self.start_eta: float | None = None  # the optimizer's η when training first started
        self.best = -math.inf if mode == "max" else math.inf
        self.waited = 0  # evaluations since the best
        self.halvings = 0  # times η has been multiplied by factor

    @property
    def state_key(self) -> str:
        # the key Callback._generate_state_key(monitor=..., mode=...) makes, written out (no private Lightning name),
        # so that checkpoints written before keep resuming
        return f"{type(self).__qualname__}{dict(monitor=self.monitor, mode=self.mode)!r}"

    @property
    def eta(self) -> float:
        """The η the schedule prescribes now."""
        return self.start_eta * self.factor**self.halvings

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.lr_scheduler_configs:
            raise ValueError("HalveEtaOnPlateau sets η itself: leave out the lr_scheduler (and lr_schedule: cosine)")
        if self.start_eta is None:
            self.start_eta = trainer.optimizers[0].param_groups[0]["lr"]
        self._set_eta(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.monitor not in trainer.callback_metrics:
            raise RuntimeError(
                f"HalveEtaOnPlateau watches {self.monitor!r}, which was not logged; logged: "
                + ", ".join(sorted(trainer.callback_metrics))
            )
        value = float(trainer.callback_metrics[self.monitor])
        if value > self.best if self.mode == "max" else value < self.best:
            self.best, self.waited = value, 0
        else:
            self.waited += 1
        if self.waited >= self.patience:  # the no-improvement-in-n rule
            self.halvings, self.waited = self.halvings + 1, 0
            self._set_eta(trainer)
            stop = self.factor**self.halvings <= self.floor * (1 + 1e-9)  # 0.5**7 is 1/128 exactly; other factors
            rank_zero_info(
                f"manualbp: {self.monitor} has not improved in {self.patience} evaluations: η multiplied by "
                f"{self.factor:g} to {self.eta:g}" + (f", {self.floor:g} of its start: training stops" if stop else "")
            )
            trainer.should_stop = trainer.should_stop or stop
        log_metrics(trainer, {"schedule/eta": self.eta, "epoch": trainer.current_epoch})  # epoch: as self.log does

    def _set_eta(self, trainer) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.eta

    def state_dict(self) -> dict:
        return {"start_eta": self.start_eta, "best": self.best, "waited": self.waited, "halvings": self.halvings}

    def load_state_dict(self, state_dict: dict) -> None:
        self.start_eta, self.best = state_dict["start_eta"], state_dict["best"]
        self.waited, self.halvings = state_dict["waited"], state_dict["halvings"]
