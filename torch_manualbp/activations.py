r"""The activations, each as one object that keeps :math:`f(z)` and :math:`f'(z)` together, as :mod:`.costs` keeps a
cost's value and its BP1.

BP1 and BP2 need :math:`f'(z)` where the sigmoid's layers write :math:`\sigma'(z) = a(1 - a)`. Each activation says
which argument its :meth:`Activation.prime` takes, ``z`` or ``a = f(z)``, whichever gives the derivative exactly and
cheaper:

- ``sigmoid``: :math:`\sigma'(z) = a(1 - a)`, from ``a`` (no second exponential);
- ``tanh``: :math:`\tanh'(z) = 1 - a^2`, from ``a``;
- ``relu``: :math:`1` where :math:`z > 0`, else :math:`0` (at :math:`z = 0` the subgradient 0, as ``torch.relu``'s
  autograd has it), from ``z`` (``a > 0`` would say the same, but ``z`` is what the sign is of);
- ``linear``: :math:`f(z) = z`, :math:`f'(z) = 1`, from ``z`` (the chapter-2 problem of linear neurons).

Look one up by name in :data:`ACTIVATIONS` or with :func:`get_activation`; an :class:`Activation` object may be passed
instead. The objects are stateless constants; a new activation is a new subclass here and its entry in
:data:`ACTIVATIONS`. Imports only torch.

Examples::

    >>> f = get_activation("tanh")
    >>> z = torch.zeros(2); a = f(z)
    >>> f.derivative(z, a)
    tensor([1., 1.])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Activation", "Sigmoid", "Tanh", "ReLU", "Linear", "ACTIVATIONS", "get_activation"]


class Activation:
    r"""An activation :math:`a = f(z)` and its derivative :math:`f'(z)`; subclass to add one.

    Subclasses set :attr:`name`, :attr:`prime_from` (``"z"`` or ``"a"``), :meth:`__call__` and :meth:`prime`.
    """

    #: the name ``activation="..."`` uses
    name = ""
    #: which argument :meth:`prime` takes: ``"z"`` (the weighted input) or ``"a"`` (the activation ``f(z)``)
    prime_from = "z"

    def __call__(self, z: Tensor) -> Tensor:
        """:math:`a = f(z)`, elementwise."""
        raise NotImplementedError

    def prime(self, z_or_a: Tensor) -> Tensor:
        """:math:`f'(z)`, elementwise, from ``z`` or from ``a = f(z)`` as :attr:`prime_from` says."""
        raise NotImplementedError

    def derivative(self, z: Tensor, a: Tensor) -> Tensor:
        """:math:`f'(z)` given both ``z`` and ``a = f(z)``: :meth:`prime` of whichever it takes."""
        return self.prime(a if self.prime_from == "a" else z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Sigmoid(Activation):
    r""":math:`\sigma(z) = 1/(1 + e^{-z})`, :math:`\sigma'(z) = a(1 - a)` from ``a``."""

    name = "sigmoid"
    prime_from = "a"

    def __call__(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def prime(self, a: Tensor) -> Tensor:
        return a * (1 - a)


class Tanh(Activation):
    r""":math:`\tanh z`, :math:`\tanh'(z) = 1 - a^2` from ``a``."""

    name = "tanh"
    prime_from = "a"

    def __call__(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def prime(self, a: Tensor) -> Tensor:
        return 1 - a * a


class ReLU(Activation):
    r""":math:`\max(0, z)`, :math:`f'(z) = [z > 0]` from ``z`` (0 at ``z = 0``, as ``torch.relu``'s autograd)."""

    name = "relu"
    prime_from = "z"

    def __call__(self, z: Tensor) -> Tensor:
        return torch.relu(z)

    def prime(self, z: Tensor) -> Tensor:
        return (z > 0).to(z.dtype)


class Linear(Activation):
    r""":math:`f(z) = z`, :math:`f'(z) = 1`."""

    name = "linear"
    prime_from = "z"

    def __call__(self, z: Tensor) -> Tensor:
        return z

    def prime(self, z: Tensor) -> Tensor:
        return torch.ones_like(z)


#: every activation by its name
ACTIVATIONS: dict[str, Activation] = {f.name: f for f in (Sigmoid(), Tanh(), ReLU(), Linear())}


def get_activation(activation: str | Activation) -> Activation:
    """The :class:`Activation` named ``activation`` (one of :data:`ACTIVATIONS`), or ``activation`` itself if it is one.

    Raises:
        TypeError: ``activation`` is neither a name nor an :class:`Activation`.
        ValueError: no activation has that name.
    """
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(
            f"activation must be the name of an activation, one of {tuple(ACTIVATIONS)}, or an Activation, "
            f"got {type(activation).__name__}"
        )
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}") from None
