r"""Watch the errors :math:`\delta^l` that an ordinary ``backward()`` computes, without changing it.

Autograd hides the book's "demon", the error :math:`\delta^l_j = \partial C/\partial z^l_j` of each neuron.
Here the backward of :class:`~torch_manualbp.functional.SigmoidLinearFunction` computes it explicitly
(BP1/BP2), so it can hand a detached copy to whoever is listening:

    >>> net = Network([784, 30, 10])
    >>> with record_errors() as record:
    ...     quadratic_cost(net(x), labels).backward()
    >>> [e.delta.shape for e in record.for_network(net)]   # input side first
    [torch.Size([10, 30]), torch.Size([10, 10])]

Each entry holds :math:`\partial C/\partial z^l` for the cost being differentiated, one row per example;
for the mean cost :math:`C = \frac1n \sum_x C_x` that is :math:`\delta^{x,l}/n`, the book's per-example
error divided by the batch size. It also holds :math:`\sigma'(z^l)`, which says which neurons are
saturated. When no recording is active, the backward pays one check of an empty list.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["LayerErrors", "ErrorRecord", "record_errors"]

# The records being filled. Global rather than thread-local: on CUDA, autograd runs backward on a
# device thread of its own, not on the thread that entered record_errors().
_ACTIVE: list["ErrorRecord"] = []


@dataclass(frozen=True)
class LayerErrors:
    r"""What one sigmoid layer's backward computed.

    Attributes:
        weight: the layer's weight parameter, which identifies the layer.
        delta: :math:`\partial C/\partial z` of the layer, ``(N, out_features)``, detached.
        sigmoid_prime: :math:`\sigma'(z) = a(1 - a)`, ``(N, out_features)``, detached.
    """

    weight: Tensor
    delta: Tensor
    sigmoid_prime: Tensor


@dataclass
class ErrorRecord:
    """The layers' errors from the backward passes run while it was active, in the order computed
    (output layer first, as backpropagation goes)."""

    entries: list[LayerErrors] = field(default_factory=list)

    def for_weight(self, weight: Tensor) -> LayerErrors:
        """The latest entry of the layer whose weight parameter is ``weight``."""
        for entry in reversed(self.entries):
            if entry.weight is weight:
                return entry
        raise KeyError("no backward through a layer with this weight was recorded")

    def for_network(self, network: torch.nn.Module) -> list[LayerErrors]:
        """The latest entry of each ``SigmoidLinear`` in ``network``, input side first."""
        from .nn import sigmoid_layers  # imported here: nn -> functional -> observe would be circular

        return [self.for_weight(layer.weight) for layer in sigmoid_layers(network)]


@contextmanager
def record_errors() -> Iterator[ErrorRecord]:
    """Record every sigmoid layer's :math:`\\partial C/\\partial z` and :math:`\\sigma'(z)` during backward."""
    record = ErrorRecord()
    _ACTIVE.append(record)
    try:
        yield record
    finally:
        _ACTIVE.remove(record)


def _notify(weight: Tensor, delta: Tensor, sigmoid_prime: Tensor) -> None:
    """Called by SigmoidLinearFunction.backward while a recording is active."""
    entry = LayerErrors(weight, delta.detach(), sigmoid_prime.detach())  # fresh tensors: no copy needed
    for record in _ACTIVE:
        record.entries.append(entry)
