r"""``ManualBPClassifier``: a small Lightning "system" around the core's ``Network``.

The network and its gradients are the core's: each SGD step's cost is ``Network.cost``, whose backward
(``NetworkCostFunction``) runs the hand-written BP1-BP4 over all layers at once; it gives the same numbers
as the per-layer Functions, bit for bit, with one autograd node instead of one per layer. Lightning
supplies the loop, the optimizer, logging, checkpoints and DDP.

Optimisation is manual so that one Lightning batch may hold several of the book's mini-batches
(``mini_batch_size``), stepped through in order, one SGD update each, like Keras' ``steps_per_execution``:
Lightning's fixed cost per batch (hooks, logging, loop bookkeeping) is then paid once per block.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
"""
from __future__ import annotations

import math
import warnings
from typing import Literal

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from ..network import Network, l2_weight_decay
from .datamodule import NUM_TRAIN

__all__ = ["ManualBPClassifier"]

# Under manual optimisation Lightning warns that a checkpoint taken every N steps holds the weights after that
# batch's updates. That is the state an exact resume needs (with the batch position saved beside it; see
# test_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run), so the warning would only mislead.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)


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
    ) -> None:
        super().__init__()
        if not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta must be a positive, finite learning rate, got {eta}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        l2_weight_decay(lmbda, training_set_size)  # raises on a bad lmbda or training_set_size
        if lmbda and weight_decay:
            raise ValueError(
                "give lmbda (the book's L2, weights only) or weight_decay (torch's, every parameter), not both"
            )
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive number of examples or None, got {mini_batch_size}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # see the module docstring: several SGD steps per batch
        self.last_mini_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, y), for GradientAudit
        self.network = Network(sizes, cost=cost, init=init)
        classes = sizes[-1]
        self.val_accuracy = MulticlassAccuracy(classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        optimizer = self.optimizers()
        parameters = list(self.network.parameters())
        size = self.hparams.mini_batch_size or len(x)
        costs = []
        for x_m, y_m in zip(x.split(size), y.split(size)):  # the book's mini-batches, in order
            self.last_mini_batch = (x_m, y_m)
            cost = self.network.cost(x_m, y_m)  # its backward is BP1-BP4 (NetworkCostFunction)
            for p in parameters:  # optimizer.zero_grad(), without its per-call profiling overhead
                p.grad = None
            self.manual_backward(cost)
            optimizer.step()  # w → w − η ∂C/∂w, b → b − η ∂C/∂b
            costs.append(cost.detach())
        cost = torch.stack(costs).mean()
        # on_epoch only: accumulated as a tensor, so no host sync at every step
        self.log("train/cost", cost, on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True)
        return cost

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
        a = self.network(x)
        accuracy(a, labels)  # the book's answer is the output neuron with the highest activation
        cost = self.network.layered_cost(x, y)  # C₀, without the L2 term; the cross-entropy's from zᴸ
        self.log(f"{stage}/cost", cost, batch_size=len(x), sync_dist=True, add_dataloader_idx=False)
        self.log(f"{stage}/accuracy", accuracy, batch_size=len(x), add_dataloader_idx=False)

    def configure_optimizers(self):
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
