r"""The fused path's engine for a :class:`~torch_manualbp.layer_spec.LayerNetwork`: :class:`SequentialSGD`, each
mini-batch of a block one :func:`~torch_manualbp.sequential.sgd_step` (the book's SGD, no autograd), with the
interface :class:`~torch_manualbp.sgd.MiniBatchSGD` gives ``ManualBPClassifier``'s training hooks: :meth:`run`,
:meth:`forget`, :meth:`rewind`, the (absent) dropout generator's state and :meth:`uses_native`."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .checks import l2_weight_decay
from .layer_spec import LayerNetwork
from .sequential import sgd_step
from .sgd import check_mini_batch_size, mini_batches

__all__ = ["SequentialSGD"]


class _Block(NamedTuple):
    first_step: int
    before: list[Tensor]  # the parameters before the block
    x: Tensor
    y: Tensor
    eta: float


class SequentialSGD:
    r"""The book's SGD over blocks of mini-batches of a :class:`~torch_manualbp.layer_spec.LayerNetwork`, in place,
    without autograd: :math:`w \to (1 - \eta\lambda/n) w - \eta\, \partial C_0/\partial w`,
    :math:`b \to b - \eta\, \partial C_0/\partial b` per mini-batch, by :func:`~torch_manualbp.sequential.sgd_step`.

    Args:
        network: the :class:`~torch_manualbp.layer_spec.LayerNetwork` to train.
        mini_batch_size: the examples per SGD step; ``None``: each block is one mini-batch.
        lmbda, n: the book's L2 parameter :math:`\lambda` over ``n`` training examples; 0 (default): off.

    Examples::

        >>> net = LayerNetwork([{"conv_pool": [4, 5, 2]}, {"fully_connected": 20}, {"softmax": 10}])
        >>> SequentialSGD(net, 10).run(torch.rand(30, 784), torch.randint(0, 10, (30,)), eta=0.1).shape
        torch.Size([3])
    """

    #: mini-batches per call of the step (one: there is no compiled or native block)
    steps_per_call = 1

    def __init__(
        self, network: LayerNetwork, mini_batch_size: int | None = None, lmbda: float = 0.0, n: int | None = None
    ) -> None:
        if not isinstance(network, LayerNetwork):
            raise TypeError(f"network must be a LayerNetwork, got {type(network).__name__}")
        check_mini_batch_size(mini_batch_size)
        l2_weight_decay(lmbda, n)  # raises on a bad lmbda or n
        self.network, self.mini_batch_size, self.lmbda, self.n = network, mini_batch_size, lmbda, n
        self._blocks: list[_Block] = []  # since forget(), for rewind()

    def steps_in(self, rows: int) -> int:
        """The number of SGD steps a block of ``rows`` examples makes."""
        return mini_batches(rows, self.mini_batch_size or rows)

    def run(self, x: Tensor, y: Tensor, eta: float, first_step: int = 0) -> Tensor:
        r"""One SGD step per mini-batch of ``x``, in order; the cost :math:`C_0` of each before its update.

        Shape:
            - x: :math:`(N, 784)` or :math:`(N, 1, 28, 28)`; y: :math:`(N, 10)` floats or :math:`(N)` labels.
            - Output: :math:`(\lceil N / \text{mini\_batch\_size} \rceil)`.
        """
        images = self.network.images(x)
        self._blocks.append(_Block(first_step, [p.detach().clone() for p in self.network.parameters()], x, y, eta))
        return self._steps(images, y, eta)

    def _steps(self, images: Tensor, y: Tensor, eta: float) -> Tensor:
        size = self.mini_batch_size or len(images)
        layers, n = self.network.layers, self.n
        costs = [
            sgd_step(layers, images[i : i + size], y[i : i + size], eta, "log_likelihood", self.lmbda, n).reshape(1)
            for i in range(0, len(images), size)
        ]
        return torch.cat(costs) if costs else images.new_empty(0)

    def forget(self) -> None:
        """Drop the record of the blocks run so far (they have been checked)."""
        self._blocks = []

    def rewind(self, step: int) -> bool:
        """Undo the steps from global step ``step`` on, for a divergence report: the parameters become those before
        ``step`` and their ``.grad`` the gradients of step ``step`` (through autograd, ``LayerNetwork.cost``), not
        applied. False if no block run since :meth:`forget` holds ``step``."""
        for block in self._blocks:
            if block.first_step <= step < block.first_step + self.steps_in(len(block.x)):
                size = self.mini_batch_size or len(block.x)
                start = (step - block.first_step) * size
                parameters = list(self.network.parameters())
                with torch.no_grad():
                    for p, saved in zip(parameters, block.before):
                        p.copy_(saved)
                    if start:
                        self._steps(self.network.images(block.x[:start]), block.y[:start], block.eta)
                with torch.enable_grad():
                    cost = self.network.cost(block.x[start : start + size], block.y[start : start + size])
                    for p, grad in zip(parameters, torch.autograd.grad(cost, parameters)):
                        p.grad = grad
                return True
        return False

    def generator_state(self) -> None:
        """``None``: no dropout, nothing drawn (``MiniBatchSGD``'s interface)."""
        return None

    def set_generator_state(self, state) -> None:
        """Nothing to restore: no dropout (``MiniBatchSGD``'s interface)."""

    def uses_native(self) -> bool:
        r"""False: the native op's loop steps ``Network``\ s of sigmoid layers, not these; every step is eager."""
        return False
