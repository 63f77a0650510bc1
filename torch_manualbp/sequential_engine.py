r"""The fused path's engine for a :class:`~torch_manualbp.layer_spec.LayerNetwork`: :class:`SequentialSGD`, each
mini-batch of a block one :func:`~torch_manualbp.sequential.sgd_step` (the book's SGD, no autograd), with the
interface :class:`~torch_manualbp.sgd.MiniBatchSGD` gives ``ManualBPClassifier``'s training hooks: :meth:`run`,
:meth:`forget`, :meth:`rewind`, the dropout generator's state and :meth:`uses_native`.

A network whose layers have dropout (``network3.py``'s ``p_dropout``) has its masks drawn by the engine: for each
step, in order, for each dropout layer, a 0/1 mask of its input, one entry per example and input, each kept with
probability :math:`1 - p` (``torch.bernoulli``, as ``network3.py``'s ``dropout_layer``), from the engine's own
generator, seeded from torch's global one when the engine is built (as :class:`~torch_manualbp.sgd.MiniBatchSGD`
seeds its own) and made on the data's device; :meth:`generator_state` and :meth:`set_generator_state` carry it
through a checkpoint, so that a run resumed mid-epoch draws the masks the uninterrupted one draws, and
:meth:`rewind` replays a block's masks as they were drawn.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .checks import l2_weight_decay
from .layer_spec import LayerNetwork
from .sequential import sgd_step
from .sgd import check_mini_batch_size, mini_batches
from .sgd_state import _SeededGenerator

__all__ = ["SequentialSGD"]


class _Block(NamedTuple):
    first_step: int
    before: list[Tensor]  # the parameters before the block
    x: Tensor
    y: Tensor
    eta: float
    masks: list[list[Tensor | None]] | None  # per step, one entry per module of the layers; None: no dropout


class SequentialSGD(_SeededGenerator):
    r"""The book's SGD over blocks of mini-batches of a :class:`~torch_manualbp.layer_spec.LayerNetwork`, in place,
    without autograd: :math:`w \to (1 - \eta\lambda/n) w - \eta\, \partial C_0/\partial w`,
    :math:`b \to b - \eta\, \partial C_0/\partial b` per mini-batch, by :func:`~torch_manualbp.sequential.sgd_step`,
    with the layers' dropout masks drawn for each step (see the module docstring).

    Args:
        network: the :class:`~torch_manualbp.layer_spec.LayerNetwork` to train.
        mini_batch_size: the examples per SGD step; ``None``: each block is one mini-batch.
        lmbda, n: the book's L2 parameter :math:`\lambda` over ``n`` training examples; 0 (default): off.

    Examples::

        >>> net = LayerNetwork([{"conv_pool": [4, 5, 2]}, {"fully_connected": 20}, {"softmax": 10}])
        >>> SequentialSGD(net, 10).run(torch.rand(30, 784), torch.randint(0, 10, (30,)), eta=0.1).shape
        torch.Size([3])
        >>> net = LayerNetwork([{"fully_connected": 20, "dropout": 0.5}, {"softmax": 10, "dropout": 0.5}])
        >>> SequentialSGD(net, 10).run(torch.rand(30, 784), torch.randint(0, 10, (30,)), eta=0.1).shape
        torch.Size([3])
    """

    _owns_generator = True  # no generator argument: the masks' generator is always the engine's own
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
        # the masks' generator: its seed drawn now (only with dropout, so a run without draws nothing), so that
        # torch.manual_seed before construction fixes the masks; the generator made on the data's device later
        self._seed = int(torch.randint(2**62, ()).item()) if network.has_dropout else None
        self._generator: torch.Generator | None = None
        self._pending_state: Tensor | None = None  # set_generator_state's, until the generator is made

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
        masks = self._block_masks(images) if self.network.has_dropout else None  # drawn after the checks
        before = [p.detach().clone() for p in self.network.parameters()]
        self._blocks.append(_Block(first_step, before, x, y, eta, masks))
        return self._steps(images, y, eta, masks)

    def _steps(self, images: Tensor, y: Tensor, eta: float, masks: list | None) -> Tensor:
        size = self.mini_batch_size or len(images)
        layers, n = self.network.layers, self.n
        costs = [
            sgd_step(
                layers, images[i : i + size], y[i : i + size], eta, "log_likelihood", self.lmbda, n,
                None if masks is None else masks[s],
            ).reshape(1)
            for s, i in enumerate(range(0, len(images), size))
        ]  # fmt: skip
        return torch.cat(costs) if costs else images.new_empty(0)

    def _block_masks(self, images: Tensor) -> list[list[Tensor | None]]:
        """The block's dropout masks, drawn step by step in order, for each step one entry per module of the
        layers: ``None``, or for a layer of dropout :math:`p` a 0/1 mask of its input, :math:`(m, n_{in})`, each
        entry 1 with probability :math:`1 - p`."""
        generator = self._generator_on(images.device)
        size = self.mini_batch_size or len(images)
        inputs = [
            layer.in_features if p else 0 for layer, p in zip(self.network.layers, self.network.dropouts)
        ]  # each dropout layer's inputs per example (a FullyConnected's)
        like = dict(dtype=images.dtype, device=images.device)
        return [
            [
                torch.empty(len(images[i : i + size]), n_in, **like).bernoulli_(1 - p, generator=generator)
                if p
                else None
                for p, n_in in zip(self.network.dropouts, inputs)
            ]
            for i in range(0, len(images), size)
        ]

    def forget(self) -> None:
        """Drop the record of the blocks run so far (they have been checked)."""
        self._blocks = []

    def rewind(self, step: int) -> bool:
        """Undo the steps from step ``step`` on (as ``run`` counts them), for a divergence report: the parameters
        become those before ``step`` (the block's earlier steps replayed with their masks) and their ``.grad`` the
        gradients of step ``step`` (through autograd, ``LayerNetwork.cost``, with the step's masks), not applied.
        False if no block run since :meth:`forget` holds ``step``."""
        for block in self._blocks:
            if block.first_step <= step < block.first_step + self.steps_in(len(block.x)):
                size = self.mini_batch_size or len(block.x)
                index = step - block.first_step
                start = index * size
                parameters = list(self.network.parameters())
                with torch.no_grad():
                    for p, saved in zip(parameters, block.before):
                        p.copy_(saved)
                    if start:
                        self._steps(self.network.images(block.x[:start]), block.y[:start], block.eta, block.masks)
                masks = None if block.masks is None else block.masks[index]
                with torch.enable_grad():
                    cost = self.network.cost(block.x[start : start + size], block.y[start : start + size], masks)
                    for p, grad in zip(parameters, torch.autograd.grad(cost, parameters)):
                        p.grad = grad
                return True
        return False

    def generator_state(self) -> Tensor | None:
        """The state of the generator the dropout masks are drawn from (``torch.Generator.get_state``), for a
        checkpoint: :meth:`set_generator_state` with it makes the following blocks draw the same masks; ``None``
        when no layer has dropout, nothing being drawn (``MiniBatchSGD``'s interface)."""
        if self._seed is None:
            return None
        return self._current_state()

    def set_generator_state(self, state: Tensor | None) -> None:
        """Restore a state from :meth:`generator_state` (resuming a run mid-epoch); the generator takes it when the
        next block makes it on the data's device, so it may be restored before the network moves there. ``None``,
        or any state for a network without dropout, leaves everything as it is."""
        if self._seed is None or state is None:
            return
        self._generator, self._pending_state = None, state.clone()  # its own storage: set_state reads it whole

    def uses_native(self) -> bool:
        r"""False: the native op's loop steps ``Network``\ s of sigmoid layers, not these; every step is eager."""
        return False
