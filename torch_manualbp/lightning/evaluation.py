r"""The book's evaluation of a network or a population: :class:`Evaluation` sums each batch's cost :math:`C_0`, its
correct answers (the output neuron with the highest activation) and its images, with a few tensor operations and no
``self.log`` per batch (Lightning's bookkeeping for a log costs more than the arithmetic of a batch of 1,000), and
logs the stage's totals once at its end: the cost as network2.py's ``total_cost`` reports it, :math:`C_0` plus the
regularisation term over the evaluated images, and :math:`C_0` alone beside it."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["Evaluation"]


class Evaluation(nn.Module):
    r"""Sums of one evaluation pass per stage (``"val"``, ``"test"``), then its logged metrics.

    Logged per stage: ``{stage}/cost``, network2.py's ``total_cost`` of the evaluated images: :math:`C_0` (the mean
    cost, :math:`\sum C_0 n / \sum n`) plus :math:`\frac{\lambda}{2N} \sum w^2` for L2, or
    :math:`\frac{\lambda}{N} \sum |w|` for L1, N the images evaluated (the book's ``len(data)``), the weights not the
    biases; ``{stage}/cost0``, :math:`C_0` alone (the two are equal without λ); ``{stage}/accuracy`` (torchmetrics'
    count), ``{stage}/correct`` and ``{stage}/images`` (the book's "9129 / 10000"). A population's costs are the
    members' mean and its counts its ensemble's (the members' averaged output activations), beside each member's
    ``{stage}/cost/member{k}``, ``{stage}/cost0/member{k}``, ``{stage}/accuracy/member{k}`` and
    ``{stage}/correct/member{k}``.

    Args:
        classes: the output neurons.
        members: K for a population, ``None`` for a network.
    """

    def __init__(self, classes: int, members: int | None = None) -> None:
        super().__init__()
        self.members = members
        self.val_accuracy = MulticlassAccuracy(classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(classes, average="micro")
        self._sums: dict[str, tuple[Tensor, int]] = {}  # stage -> (sums, images) of this evaluation

    def start(self) -> None:
        self._sums = {}
        self.val_accuracy.reset()
        self.test_accuracy.reset()

    def add(self, model, batch, stage: str, dropout: float) -> None:
        """Add a batch ``(x, y, labels)`` evaluated by ``model`` (a ``Network`` or a ``Population``, trained with
        ``dropout``: evaluated with the book's scaled weights) to ``stage``'s sums."""
        x, y, labels = batch
        a, cost = model.output_and_cost(x, y, dropout)  # aᴸ, C₀ (no λ term): one feedforward
        if self.members:  # the ensemble answers with the members' averaged output activations
            correct = (a.argmax(-1) == labels).sum(-1).to(cost.dtype)  # (K,)
            a = a.mean(0)
        self._accuracy(stage).update(a, labels)  # the book's answer is the output neuron with the highest activation
        answered = (a.argmax(-1) == labels).sum().to(cost.dtype).reshape(1)  # an exact count (EpochReport prints it)
        # (Σ C₀·n, correct); a population's (K costs, K members' correct, the ensemble's correct)
        sums = torch.cat((cost * len(x), correct, answered) if self.members else ((cost * len(x)).reshape(1), answered))
        total, images = self._sums.get(stage, (0.0, 0))
        self._sums[stage] = (sums + total, images + len(x))

    def log(self, log, penalty: Tensor | None = None, reduce_sum=None) -> None:
        r"""Log each stage's totals through ``log`` (a ``LightningModule.log``), over the batches (and, under DDP, the
        processes) seen. ``penalty``: the regularisation term's numerator, :math:`\frac{\lambda}{2} \sum w^2` (L2)
        or :math:`\lambda \sum |w|` (L1), one per member for a population, ``None`` without λ; ``reduce_sum``: the
        sum over processes (the strategy's), so that N counts every process's images."""
        k = self.members or 0
        for stage, (sums, images) in self._sums.items():
            put = functools.partial(log, batch_size=images, sync_dist=True, add_dataloader_idx=False)
            costs0 = sums[:k] / images if k else sums[:1] / images  # C₀, weighted by images: Σ C₀·n / Σ n
            costs = costs0
            if penalty is not None:  # network2.py's total_cost: + (λ/2N) Σ w² over the N images evaluated
                total = images if reduce_sum is None else reduce_sum(torch.tensor(float(images), device=sums.device))
                costs = costs0 + penalty / total
            for j in range(k):
                put(f"{stage}/cost/member{j}", costs[j])
                put(f"{stage}/cost0/member{j}", costs0[j])
                put(f"{stage}/accuracy/member{j}", sums[k + j] / images)
                put(f"{stage}/correct/member{j}", sums[k + j], reduce_fx="sum")
            put(f"{stage}/cost", costs.mean())
            put(f"{stage}/cost0", costs0.mean())
            put(f"{stage}/accuracy", self._accuracy(stage))  # torchmetrics' own count, beside ours
            put(f"{stage}/correct", sums[-1], reduce_fx="sum")
            put(f"{stage}/images", float(images), reduce_fx="sum")

    def _accuracy(self, stage: str) -> MulticlassAccuracy:
        return self.val_accuracy if stage == "val" else self.test_accuracy
