r"""The engine's compiled backend: ``steps_per_call`` of the book's mini-batch steps (``update_mini_batch``) unrolled
into one ``torch.compile``-d call (full graph, static shapes), so that Python and dispatch are paid once per call
rather than once per step. :class:`~torch_manualbp.MiniBatchSGD` (``backend="compiled"``) calls it on the whole calls
of a block and steps the rest eagerly."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .costs import Cost
from .step import StepRule, update_mini_batch

__all__ = ["CompiledSteps"]


class CompiledSteps:
    r"""The compiled calls of one engine: ``steps_per_call`` steps each, and the shapes it has been built for (the
    first call for new shapes compiles, which ``on_compile`` hears about, with how long it took).

    Args:
        steps_per_call: mini-batches per compiled call.
        on_compile: called with a one-line message after a call for new shapes was built and run; ``None``: silent.
    """

    def __init__(self, steps_per_call: int, on_compile: Callable[[str], None] | None = None) -> None:
        self.steps_per_call = steps_per_call
        self.on_compile = on_compile
        self._shapes: set[tuple] = set()  # the shapes this engine's compiled calls have been built for

    def __call__(
        self, weights, biases, x: Tensor, y: Tensor, eta: float, size: int, masks, rule: StepRule, ones: Tensor
    ) -> list[Tensor]:
        """The steps on the mini-batches of ``size`` rows of ``x`` (a whole number of calls), ``steps_per_call`` per
        compiled call, with ``masks`` (one (steps, H) per hidden layer) if any; each call's costs."""
        if not len(x):
            return []
        xs = x.reshape(-1, self.steps_per_call, size, x.shape[-1])  # (calls, steps, size, in)
        ys = y.reshape(-1, self.steps_per_call, size, y.shape[-1])
        calls_masks = [None] * len(xs) if not masks else list(zip(*[m.unflatten(0, (len(xs), -1)) for m in masks]))
        eta_t = torch.tensor(eta, dtype=x.dtype, device=x.device)  # a tensor: a new η must not recompile
        # the cost object: a cost of the user's own has no name
        # Python values and objects: Dynamo specialises on them
        settings = (rule.cost, rule.weight_decay, rule.regularization, rule.hidden)
        compiled = _compiled_unrolled_steps()
        key = (tuple(xs.shape[1:]), tuple(tuple(w.shape) for w in weights), x.dtype, str(x.device), settings)
        key += (masks is None,)
        start = time.perf_counter()
        with _room_for_every_setting():
            costs = [compiled(weights, biases, xs[0], ys[0], eta_t, ones, *settings, calls_masks[0])]
            if key not in self._shapes:
                self._shapes.add(key)
                if self.on_compile is not None:
                    self.on_compile(
                        f"compiled {self.steps_per_call} fused SGD steps per call in "
                        f"{time.perf_counter() - start:.1f} s "
                        "(Inductor caches it on disk: later runs of these shapes start faster)"
                    )
            costs += [
                compiled(weights, biases, xs[c], ys[c], eta_t, ones, *settings, calls_masks[c])
                for c in range(1, len(xs))
            ]
        return costs


#: How many versions of the compiled steps (one per shapes and settings, see the key above) one process may build.
RECOMPILE_LIMIT = 64


def _room_for_every_setting():
    """Dynamo's per-function recompile limit (8 by default) raised to :data:`RECOMPILE_LIMIT` for the engine's own
    calls only: every network shape, cost, λ, regularisation, activation and dtype builds its own version of the one
    compiled function, and with ``fullgraph=True`` the ninth in a process would raise rather than run. The user's
    setting stays as it is outside these calls, and a larger one is kept."""
    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch._dynamo.config.patch(recompile_limit=limit)


def _unrolled_steps(
    weights,
    biases,
    xs: Tensor,
    ys: Tensor,
    eta: Tensor,
    ones: Tensor,
    cost: Cost,
    decay: float,
    regularization: str,
    activation,
    masks: Sequence[Tensor] | None,
):
    """``update_mini_batch`` on ``xs[0]``, ``xs[1]``, ... in order (step u with row u of each of ``masks``, if
    any): the body that ``torch.compile`` unrolls."""
    rule = (cost, decay, regularization)
    steps = []
    for u in range(len(xs)):
        step_masks = None if masks is None else [m[u] for m in masks]
        steps.append(update_mini_batch(weights, biases, xs[u], ys[u], eta, ones, *rule, step_masks, activation))
    return torch.stack(steps)


@functools.cache
def _compiled_unrolled_steps():
    """``torch.compile(_unrolled_steps)``, built once per process so that every engine reuses Dynamo's cache."""
    return torch.compile(_unrolled_steps, fullgraph=True, dynamic=False)
