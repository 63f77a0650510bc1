r"""Bytes a forward pass saves for backward, counted with ``torch.autograd.graph.saved_tensors_hooks``.

Every tensor an autograd node saves (``ctx.save_for_backward`` in a custom Function, or the saved
inputs/outputs of a built-in op) goes through the pack hook. Two figures are reported, both counted
over unique storages (by device and ``data_ptr``), so that a tensor saved by two nodes, or a view
such as ``weight.T`` of a parameter, is counted once and at its storage's full size:

* ``saved``: all storages the graph holds.
* ``extra``: those of them that the caller does not hold anyway, i.e. not the storage of an input,
  parameter, target or returned output. This is the memory the graph keeps alive only for backward:
  hidden activations, intermediates such as ``a - y``, pre-activations ``z``.

To run (a tiny example)::

    python -c "import torch; from benchmarks.saved_bytes import count_saved_bytes; \
x = torch.rand(4, 3, requires_grad=True); print(count_saved_bytes(lambda: torch.sigmoid(x), [x]))"
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SavedBytes", "count_saved_bytes"]


class SavedBytes(NamedTuple):
    saved: int  # bytes of all unique storages saved for backward
    extra: int  # bytes of those not held by the caller anyway
    tensors: int  # how many tensors were packed, duplicates included


def _key(t: Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


def _tensors(obj) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


def count_saved_bytes(run: Callable[[], object], alive: Iterable[Tensor] = ()) -> SavedBytes:
    """Run ``run()`` (a forward pass) and count what its graph saves for backward.

    Args:
        run: the forward pass; the tensors it returns count as held by the caller.
        alive: the other tensors the caller holds anyway (inputs, parameters, targets).
    """
    storages: dict[tuple[str, int], int] = {}
    packed = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal packed
        packed += 1
        storages[_key(t)] = t.untyped_storage().nbytes()
        return t  # keep the tensor itself: we only observe, the graph behaves as without hooks

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = run()
    held = {_key(t) for t in [*alive, *_tensors(output)]}
    extra = sum(nbytes for key, nbytes in storages.items() if key not in held)
    return SavedBytes(sum(storages.values()), extra, packed)
