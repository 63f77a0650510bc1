"""What :class:`~torch_manualbp.sgd.MiniBatchSGD` keeps between blocks, for a checkpoint and for a divergence report:
the generator its dropout masks are drawn from (its state saved and restored), and the blocks it has run since
:meth:`~torch_manualbp.sgd.MiniBatchSGD.forget`, which :meth:`~torch_manualbp.sgd.MiniBatchSGD.rewind` replays.

:class:`_RewindAndDropoutState` is a base class of the engine, not an engine: its methods read the engine's
attributes (``network``, ``population``, ``dropout``, ``mini_batch_size``, ``lmbda``, ``n``, ``_blocks``,
``_member_engines``, ``_generator``, ``_owns_generator``, ``_pending_state``, ``_seed``) and call its
``steps_in``, ``_stacked`` and ``_eager_steps``. Import the engine from :mod:`torch_manualbp.sgd`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .step import dropout_masks


class _Block(NamedTuple):
    """A block of steps as :meth:`MiniBatchSGD.rewind` needs it: where it started, the parameters before it, its data,
    its learning rate and its dropout masks."""

    first_step: int
    before: list[Tensor]
    x: Tensor
    y: Tensor  # float targets
    eta: float
    masks: list[Tensor] | None  # one (steps, H_l) per hidden layer, row s the mask of the block's step s; None: none


class _SeededGenerator:
    """The generator an engine draws dropout masks from: the user's (``_owns_generator`` false), or its own, made
    from ``_seed`` on the data's device when first needed, in the state ``set_generator_state`` left in
    ``_pending_state``; ``MiniBatchSGD`` and ``SequentialSGD`` alike."""

    def _generator_on(self, device: torch.device) -> torch.Generator:
        """The generator the masks are drawn from, on ``device``: the user's, checked, or the engine's own, made on
        ``device`` the first time (again from its seed if the network has moved since) in the state restored by
        :meth:`set_generator_state`, if any."""
        generator = self._generator
        if generator is not None and _same_device(generator.device, device):
            return generator
        if not self._owns_generator:
            raise ValueError(f"generator must be on the data's device, {device}; got a generator on {generator.device}")
        self._generator = self._seeded(device)
        if self._pending_state is not None:
            self._generator.set_state(self._pending_state)
            self._pending_state = None
        return self._generator

    def _seeded(self, device: torch.device) -> torch.Generator:
        """A new generator on ``device`` with the engine's seed."""
        return torch.Generator(device=device).manual_seed(self._seed)

    def _current_state(self) -> Tensor:
        """The generator's state now: the generator's own, the one :meth:`set_generator_state` left for it, or (none
        made yet) that of a new one from the seed."""
        if self._generator is not None:
            return self._generator.get_state()
        if self._pending_state is not None:
            return self._pending_state
        return self._seeded(self.network.weights_and_biases()[0][0].device).get_state()


class _RewindAndDropoutState(_SeededGenerator):
    """The engine's dropout generator and its record of blocks, for :meth:`generator_state`,
    :meth:`set_generator_state`, :meth:`rewind` and :meth:`forget` (see the module docstring)."""

    def generator_state(self) -> Tensor | None:
        """The state of the generator the dropout masks are drawn from (``torch.Generator.get_state``), for a
        checkpoint: :meth:`set_generator_state` with it makes the following blocks draw the same masks; ``None``
        without dropout, when nothing is drawn."""
        if not self.dropout:
            return None
        if self._member_engines:  # one state per member, stacked: (K, state bytes)
            return torch.stack([engine.generator_state() for engine in self._member_engines])
        return self._current_state()

    def set_generator_state(self, state: Tensor | None) -> None:
        """Restore a state from :meth:`generator_state` (resuming a run mid-epoch). The engine's own generator takes
        it when the next block makes it on the data's device, so it may be restored before the network moves there
        (as Lightning restores a checkpoint). ``None`` (a checkpoint without one), or any state without dropout,
        leaves everything as it is."""
        if not self.dropout or state is None:
            return
        if self._member_engines:
            for engine, member_state in zip(self._member_engines, state, strict=True):
                engine.set_generator_state(member_state)
            return
        state = state.clone()  # its own storage: Generator.set_state reads the tensor's storage whole
        if self._owns_generator:
            self._generator, self._pending_state = None, state
        else:
            self._generator.set_state(state)

    def rewind(self, step: int) -> bool:
        """Undo the steps from step ``step`` on (as ``run`` counts them), for a divergence report: the parameters
        become those before ``step`` (restored from the start of its block, then the block's earlier steps replayed,
        with their dropout masks) and their ``.grad`` the gradients of step ``step`` (through autograd,
        ``Network.cost``, or ``Network.layered_cost`` with the step's masks), not applied. Returns False if no block
        run since :meth:`forget` holds ``step``. For a population of K > 1 stepped by :meth:`Population.sgd_steps`,
        the parameters only (the stacked members have no autograd cost): their ``.grad`` is left as it was."""
        if self._member_engines and not self._stacked():
            return all([engine.rewind(step) for engine in self._member_engines])
        if self.population is not None:
            return self._rewind_population(step)
        for block in self._blocks:
            if block.first_step <= step < block.first_step + self.steps_in(len(block.x)):
                size = self.mini_batch_size or len(block.x)
                index = step - block.first_step
                start = index * size
                weights, biases = self.network.weights_and_biases()
                parameters = list(self.network.parameters())
                masks = block.masks
                with torch.no_grad():
                    for p, saved in zip(parameters, block.before):
                        p.copy_(saved)
                    self._eager_steps(weights, biases, block.x[:start], block.y[:start], block.eta, size, masks)
                x, y = block.x[start : start + size], block.y[start : start + size]
                with torch.enable_grad():
                    if masks is None:
                        cost = self.network.cost(x, y)
                    else:  # Network.cost has no dropout; the per-layer Functions have
                        cost = self.network.layered_cost(x, y, [m[index] for m in masks])
                    for p, grad in zip(parameters, torch.autograd.grad(cost, parameters)):
                        p.grad = grad
                return True
        return False

    def _rewind_population(self, step: int) -> bool:
        """:meth:`rewind` for a population of K > 1."""
        for block in self._blocks:
            if block.first_step <= step < block.first_step + self.steps_in(len(block.x)):
                start = (step - block.first_step) * (self.mini_batch_size or len(block.x))
                with torch.no_grad():
                    for p, saved in zip(self.population.parameters(), block.before):
                        p.copy_(saved)
                    if start:
                        size = self.mini_batch_size or len(block.x)
                        self.population.sgd_steps(block.x[:start], block.y[:start], block.eta, self.lmbda, self.n, size)
                return True
        return False

    def forget(self) -> None:
        """Drop what :meth:`rewind` keeps (a copy of the parameters per block); call it once the steps are checked."""
        self._blocks = []
        for engine in self._member_engines:
            engine.forget()

    def _block_masks(self, x: Tensor) -> list[Tensor]:
        """The block's dropout masks, one set per step drawn in order as ``Network.sgd_step`` draws one: for each
        hidden layer a (steps, H_l) tensor whose row s is step s's mask."""
        generator = self._generator_on(x.device)
        per_step = [dropout_masks(self.network.sizes, self.dropout, x, generator) for _ in range(self.steps_in(len(x)))]
        return [torch.stack(layer) for layer in zip(*per_step)]


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are one device (``cuda`` and ``cuda:0`` are, when 0 is the current one)."""
    if a.type != b.type:
        return False
    current = torch.cuda.current_device() if a.type == "cuda" else None
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
