r"""The cost modules of :mod:`torch_manualbp.nn`: ``nn.Module`` forms of the cost Functions (``QuadraticCost``,
``CrossEntropyCost``, ``LogLikelihoodCost``), each with its ``reduction`` over examples. Import them from
:mod:`torch_manualbp.nn`, which re-exports them.
"""

from __future__ import annotations

from torch import Tensor, nn

from . import functional as F


class _ReducedCost(nn.Module):
    """What the cost modules share, as ``torch.nn``'s losses share ``_Loss``: the ``reduction`` over examples, checked
    once here; each subclass's ``forward`` calls its functional form with it."""

    __constants__ = ["reduction"]

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in F.REDUCTIONS:
            raise ValueError(f"reduction must be one of {F.REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class QuadraticCost(_ReducedCost):
    r"""The quadratic cost :math:`C = \frac{1}{2n} \sum_x \lVert y(x) - a^L(x) \rVert^2` of chapter 2.

    Its backward, :class:`~torch_manualbp.functional.QuadraticCostFunction`, returns
    :math:`\nabla_a C = (a - y)/n`, the first factor of BP1. Unlike ``nn.MSELoss`` it halves the
    squared error and averages over examples, not over every element.

    Args:
        reduction: ``"mean"`` (default) for the book's :math:`C`, the average over examples of
            :math:`C_x = \tfrac12 \lVert y(x) - a(x) \rVert^2`; ``"sum"`` for :math:`\sum_x C_x`;
            ``"none"`` for the :math:`C_x` themselves.

    Shape:
        - Input ``a``: :math:`(*, K)`, one example per leading index.
        - Target ``y``: :math:`(*, K)` floats (e.g. one-hot vectors), or :math:`(*)` integer class
          labels in ``0..K-1``, one-hot encoded inside.
        - Output: a scalar; :math:`(*)` if ``reduction="none"``.

    Examples::

        >>> cost = QuadraticCost()
        >>> a = torch.rand(8, 10, requires_grad=True)
        >>> cost(a, torch.randint(0, 10, (8,))).backward()
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.quadratic_cost(input, target, self.reduction)


class CrossEntropyCost(_ReducedCost):
    r"""Chapter 3's cross-entropy :math:`C = -\frac1n \sum_x \sum_j [y_j \ln a^L_j + (1 - y_j) \ln(1 - a^L_j)]` of
    sigmoid outputs, a drop-in for :class:`QuadraticCost`: ``CrossEntropyCost()(model(x), y)``.

    Its backward, :class:`~torch_manualbp.functional.CrossEntropyCostFunction`, returns
    :math:`\nabla_a C = (a - y)/(n\,a(1 - a))`; the output layer's :math:`\sigma'(z^L)` then gives BP1,
    :math:`\delta^L = a^L - y`. Exact where :math:`0 < a < 1`; where an output has rounded to exactly 0 or 1 it is
    finite (logarithms clamped at :math:`-100`, :math:`a(1 - a)` at :math:`10^{-12}`, as ``nn.BCELoss``) but not exact,
    and a saturated sigmoid layer's :math:`\sigma'(z) = 0` then stops its gradient. For the exact form use
    ``Network(sizes, cost="cross_entropy")`` or :func:`~torch_manualbp.functional.sigmoid_cross_entropy`, which start
    from :math:`z^L`. Unlike ``nn.BCELoss`` it sums over the outputs and averages over the examples, as the book does.

    Args:
        reduction: ``"mean"`` (default) for the book's :math:`C`; ``"sum"`` for :math:`\sum_x C_x`; ``"none"`` for
            the :math:`C_x` themselves.

    Shape:
        - Input ``a``: :math:`(*, K)`, sigmoid outputs in [0, 1], one example per leading index.
        - Target ``y``: :math:`(*, K)` floats in [0, 1], or :math:`(*)` integer class labels in ``0..K-1``.
        - Output: a scalar; :math:`(*)` if ``reduction="none"``.

    Examples::

        >>> model = torch.nn.Sequential(SigmoidLinear(784, 30), SigmoidLinear(30, 10))
        >>> CrossEntropyCost()(model(torch.rand(8, 784)), torch.randint(0, 10, (8,))).backward()
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy_cost(input, target, self.reduction)


class LogLikelihoodCost(_ReducedCost):
    r"""Chapter 3's softmax output with the log-likelihood cost, :math:`C = -\frac1n \sum_x \ln a^L_{y(x)}`,
    :math:`a^L = \operatorname{softmax}(z^L)`, taken on the softmax's input :math:`z^L` (the logits), as
    ``nn.CrossEntropyLoss`` is: ``LogLikelihoodCost()(model(x), y)`` with a model whose last layer is linear
    (``nn.Linear``), not a :class:`SigmoidLinear`.

    Its backward, :class:`~torch_manualbp.functional.LogLikelihoodCostFunction`, returns BP1 itself,
    :math:`\delta^L = \partial C/\partial z^L = (a^L - y)/n`. It takes :math:`z^L` because that is what keeps it
    finite: on :math:`a^L` the cost would need :math:`\ln a_j`, which is :math:`\ln 0` once a softmax output rounds to
    0, and its gradient :math:`-y_j/a_j` would be infinite; from :math:`z^L` it is computed through ``logsumexp``.

    Args:
        reduction: ``"mean"`` (default) for the book's :math:`C`; ``"sum"`` for :math:`\sum_x C_x`; ``"none"`` for
            the :math:`C_x` themselves.

    Shape:
        - Input ``z``: :math:`(*, K)`, one example per leading index.
        - Target ``y``: :math:`(*)` integer class labels in ``0..K-1``, or :math:`(*, K)` floats whose rows sum to 1.
        - Output: a scalar; :math:`(*)` if ``reduction="none"``.

    Examples::

        >>> model = torch.nn.Sequential(SigmoidLinear(784, 30), torch.nn.Linear(30, 10))
        >>> LogLikelihoodCost()(model(torch.rand(8, 784)), torch.randint(0, 10, (8,))).backward()
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.log_likelihood_cost(input, target, self.reduction)
