r"""The classifier's evaluation hooks: validation, test and predict batches summed by
:class:`~torch_manualbp.lightning.evaluation.Evaluation` and logged once at the stage's end, with the
regularisation term of network2.py's ``total_cost``."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EvaluationHooks"]


class EvaluationHooks:
    """The evaluation hooks of :class:`~torch_manualbp.lightning.ManualBPClassifier` (a mixin)."""

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
        if self.trainer.state.fn == "fit":  # the row's SGD updates (metrics.csv's step counts Lightning batches)
            self.log("updates", float(self.updates), batch_size=1)

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
