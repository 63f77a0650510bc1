r"""The hook every backward pass that computes :math:`\delta^l` calls, and what it hands over.

The autograd Functions' ``backward``, ``NetworkCostFunction`` and ``update_mini_batch`` ask :func:`is_recording`
and, only when it says yes, hand each layer's :math:`\partial C/\partial z`, :math:`\sigma'(z)` and input to
:func:`notify`. Who listens is :func:`torch_manualbp.observe.record_errors`, through :func:`listening`. This
module sits below ``functional`` and ``network`` and imports only torch, so that ``observe`` can import those
without a cycle; users reach it as ``observe.is_recording()`` / ``observe.notify()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor

__all__ = ["LayerErrors", "is_recording", "notify", "listening"]

# The lists being filled. Global rather than thread-local: on CUDA, autograd runs backward on a
# device thread of its own, not on the thread that entered record_errors().
_LISTENERS: list[list[LayerErrors]] = []


@dataclass(frozen=True)
class LayerErrors:
    r"""What one sigmoid layer's backward computed.

    Attributes:
        weight: the layer's weight parameter, which identifies the layer.
        delta: :math:`\partial C/\partial z` of the layer, ``(N, out_features)``, detached.
        sigmoid_prime: :math:`\sigma'(z) = a(1 - a)`, ``(N, out_features)``, detached.
        input: the layer's input :math:`a^{l-1}`, ``(N, in_features)``, detached.
    """

    weight: Tensor
    delta: Tensor
    sigmoid_prime: Tensor
    input: Tensor


@contextmanager
def listening(entries: list[LayerErrors]) -> Iterator[list[LayerErrors]]:
    """While inside, every :func:`notify` appends its :class:`LayerErrors` to ``entries`` (and to any other list
    listening at the same time)."""
    _LISTENERS.append(entries)
    try:
        yield entries
    finally:
        # by identity: two listeners' lists may be equal (both empty) without being the same list
        del _LISTENERS[next(i for i, listener in enumerate(_LISTENERS) if listener is entries)]


def is_recording() -> bool:
    """Whether anything is listening: the backward passes ask before computing what :func:`notify` takes.

    A plain function of a global list, so ``torch.compile(fullgraph=True)`` traces it (guarding on the list)."""
    return bool(_LISTENERS)


def notify(weight: Tensor, delta: Tensor, sigmoid_prime: Tensor, input: Tensor) -> None:
    r"""Hand one layer's :math:`\partial C/\partial z`, :math:`\sigma'(z)` and input to every listener.

    Called by every backward pass that computes :math:`\delta^l` (the autograd Functions, ``NetworkCostFunction``,
    ``update_mini_batch``) while :func:`is_recording`; ``weight`` identifies the layer."""
    # δ and σ'(z) are fresh tensors and the input is saved for backward anyway: no copy needed
    entry = LayerErrors(weight, delta.detach(), sigmoid_prime.detach(), input.detach())
    for entries in _LISTENERS:
        entries.append(entry)
