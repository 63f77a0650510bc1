r"""What :class:`~torch_manualbp.population.Population` checks and caches outside the class: its members checked
at construction (one sizes, cost, dtype and device), and one step's η, λ and n checked once and kept as the tensors
its update takes (:class:`_StepTensors`), keyed exactly (:func:`_exact`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .checks import check_same_kind
from .network import Network


def _check_members(networks) -> Network:
    """Raise unless ``networks`` is a non-empty sequence of Networks of one sizes, cost, dtype and device; the first."""
    if not isinstance(networks, Sequence) or isinstance(networks, (str, bytes)):
        raise TypeError(f"networks must be a list of Networks, got {type(networks).__name__}")
    if len(networks) == 0:
        raise ValueError("networks must hold at least one Network, got an empty list")
    for i, network in enumerate(networks):
        if not isinstance(network, Network):
            raise TypeError(f"networks[{i}] must be a Network, got {type(network).__name__}")
    first = networks[0]
    weight = first.layers[0].weight
    for i, network in enumerate(networks[1:], start=1):
        if network.sizes != first.sizes:
            raise ValueError(
                f"networks must all have the same sizes: networks[0] has {first.sizes}, "
                f"networks[{i}] has {network.sizes}"
            )
        if network.cost_name != first.cost_name:
            raise ValueError(
                f"networks must all have the same cost: networks[0] has {first.cost_name!r}, "
                f"networks[{i}] has {network.cost_name!r}"
            )
        if type(network.activation) is not type(first.activation):
            raise ValueError(
                f"networks must all have the same activation: networks[0] has {first.activation!r}, "
                f"networks[{i}] has {network.activation!r}"
            )
        check_same_kind(f"networks[{i}]'s weights", network.layers[0].weight, "networks[0]'s weights", weight)
    return first


def _exact(value):
    """An η or λ argument as a key that ``==`` compares exactly, types included (``1``, ``1.0`` and ``True`` differ),
    or, for a tensor or anything else, a new object, equal to nothing: such an argument is checked at every call."""
    if type(value) in (float, int):
        return type(value), value
    if type(value) in (list, tuple) and all(type(v) in (float, int) for v in value):
        return type(value), tuple(map(type, value)), tuple(value)
    return object()


class _StepTensors:
    r"""One step's checked settings as the tensors :meth:`Population._update` takes: each member's
    :math:`\eta_k/m`, :math:`(K, 1, 1)`, for each mini-batch size m met; the weights' decay factors
    :math:`1 - \eta_k\lambda_k/n`, shaped for each layer's weight, or ``None`` when every λ is 0; and m ones for
    :func:`~torch_manualbp.equations.descend`."""

    def __init__(
        self, key: tuple, etas: list[float], weight_decays: list[float], sizes: list[int], like: Tensor
    ) -> None:
        self.key, self.etas = key, etas
        self.kind = {"dtype": like.dtype, "device": like.device}
        self.decays = None
        if any(weight_decays):
            factor = torch.tensor([1 - eta * decay for eta, decay in zip(etas, weight_decays)], **self.kind)
            self.decays = [factor.repeat_interleave(sizes[1]).unsqueeze(1)]  # (K·H₁, 1), the stacked first layer
            self.decays += [factor.view(-1, 1, 1)] * (len(sizes) - 2)  # (K, 1, 1) for each later layer
        self._by_rows: dict[int, tuple] = {}

    def at(self, m: int) -> tuple[Tensor, list[Tensor] | None, Tensor]:
        """``(step, decays, ones)`` for a mini-batch of m examples."""
        found = self._by_rows.get(m)
        if found is None:
            step = torch.tensor([eta / m for eta in self.etas], **self.kind).view(-1, 1, 1)
            found = self._by_rows[m] = (step, self.decays, torch.ones(m, **self.kind))
        return found
