r"""The cost Functions of :mod:`torch_manualbp.functional`, each taking the output layer's result: chapter 2's
quadratic cost (:class:`QuadraticCostFunction`, of :math:`a^L`), chapter 3's cross-entropy of sigmoid outputs
(:class:`CrossEntropyCostFunction`, of :math:`a^L`) and the log-likelihood of a softmax
(:class:`LogLikelihoodCostFunction`, of :math:`z^L`), each with its checked functional form.

Each ``backward`` supplies :math:`\nabla_a C` (or, for the log-likelihood, BP1's :math:`\delta^L = a^L - y` itself),
which the output layer's backward turns into BP1. Import these names from :mod:`torch_manualbp.functional`, which
re-exports them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_float_tensor, targets
from .equations import (
    a_minus_y,
    example_share,
    log_likelihood_costs,
    quadratic_costs,
    quadratic_mean,
    reduce_costs,
    softmax,
)
from .layer_functions import _compilable, _without_jvp

REDUCTIONS = ("mean", "sum", "none")


def _save_output_and_targets(ctx, inputs) -> None:
    """``setup_context`` of a cost of ``(a, y, reduction)``: ``a`` and ``y`` saved for both modes, the reduction
    kept."""
    a, y, reduction = inputs
    ctx.save_for_backward(a, y)
    ctx.save_for_forward(a, y)
    ctx.reduction = reduction


class QuadraticCostFunction(torch.autograd.Function):
    r"""The quadratic cost :math:`C_x = \tfrac12 \lVert y(x) - a(x) \rVert^2`, reduced over examples.

    Use :func:`quadratic_cost`, which checks its arguments and one-hot encodes class labels;
    this class expects a float target ``y`` shaped like ``a`` and a valid ``reduction``.

    The cost is accumulated in at least float32, so bf16/fp16 activations (autocast) still get an
    fp32 cost; the gradient for ``a`` is cast back to ``a``'s dtype by autograd.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor, y: Tensor, reduction: str) -> Tensor:
        output_minus_y = a_minus_y(a, y)
        if reduction == "mean":
            return quadratic_mean(output_minus_y)  # C = 1/(2n) Σ_x ‖y(x) − a(x)‖², the book's cost
        return reduce_costs(quadratic_costs(output_minus_y), reduction)  # of C_x = ½‖y(x) − a(x)‖²

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_output_and_targets(ctx, inputs)

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        a, y = ctx.saved_tensors
        grad_a = grad_y = None
        # ∇_a C = (a − y)/n for the mean: the first factor of (BP1), which the output layer's
        # backward multiplies by σ'(zᴸ).
        grad_error = a_minus_y(a, y) * example_share(grad_cost, a, ctx.reduction)
        if ctx.needs_input_grad[0]:
            grad_a = grad_error
        if ctx.needs_input_grad[1]:
            grad_y = -grad_error
        return grad_a, grad_y, None

    @staticmethod
    def jvp(ctx, a_t: Tensor | None, y_t: Tensor | None, _reduction_t) -> Tensor:
        # Forward mode: Ċ_x = (a − y) · (ȧ − ẏ), reduced like the cost itself.
        a, y = ctx.saved_tensors
        error_t = a_t if y_t is None else (-y_t if a_t is None else a_t - y_t)
        return reduce_costs((a_minus_y(a, y) * error_t).sum(-1), ctx.reduction)


class CrossEntropyCostFunction(torch.autograd.Function):
    r"""Chapter 3's cross-entropy of given sigmoid outputs :math:`a`, reduced over examples:
    :math:`C_x = -\sum_j [y_j \ln a_j + (1 - y_j) \ln(1 - a_j)]`, with :math:`\nabla_a C_x = (a - y)/(a(1 - a))`.

    Use :func:`cross_entropy_cost`, which checks its arguments and one-hot encodes class labels. Given :math:`a`
    rather than :math:`z`, it cannot be exact where :math:`a` has rounded to 0 or 1: there, as ``nn.BCELoss`` does,
    each logarithm is clamped at :math:`-100` and :math:`a(1 - a)` in the gradient at :math:`10^{-12}`, so the value
    and the gradient stay finite (large where the output is wrong). :func:`sigmoid_cross_entropy` is the exact form.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor, y: Tensor, reduction: str) -> Tensor:
        log_a, log_1_minus_a = _clamped_logs(a)
        cost_x = -(y * log_a + (1 - y) * log_1_minus_a).sum(-1)  # C_x = −Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)]
        return reduce_costs(cost_x, reduction)  # "mean": C = (1/n) Σ_x C_x, the book's cost

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_output_and_targets(ctx, inputs)

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        a, y = ctx.saved_tensors
        grad_a = grad_y = None
        share = example_share(grad_cost, a, ctx.reduction)
        if ctx.needs_input_grad[0]:  # ∇_a C = (a − y)/(a(1 − a)); the output layer's σ'(zᴸ) = a(1 − a) then cancels
            grad_a = (a - y) / (a * (1 - a)).clamp_min(_SATURATED) * share
        if ctx.needs_input_grad[1]:
            log_a, log_1_minus_a = _clamped_logs(a)
            grad_y = (log_1_minus_a - log_a) * share  # ∂C_x/∂y_j = −ln a_j + ln(1 − a_j)
        return grad_a, grad_y, None

    @staticmethod
    def jvp(ctx, a_t: Tensor | None, y_t: Tensor | None, _reduction_t) -> Tensor:
        # Forward mode: Ċ_x = Σ_j [(a_j − y_j)/(a_j(1 − a_j)) ȧ_j + (ln(1 − a_j) − ln a_j) ẏ_j], reduced like the cost.
        a, y = ctx.saved_tensors
        rate = torch.zeros_like(a)
        if a_t is not None:
            rate = rate + (a - y) / (a * (1 - a)).clamp_min(_SATURATED) * a_t
        if y_t is not None:
            log_a, log_1_minus_a = _clamped_logs(a)
            rate = rate + (log_1_minus_a - log_a) * y_t
        return reduce_costs(rate.sum(-1), ctx.reduction)


class LogLikelihoodCostFunction(torch.autograd.Function):
    r"""Chapter 3's log-likelihood of the softmax of given weighted inputs :math:`z^L`, reduced over examples:
    :math:`C_x = \ln \sum_k e^{z_k} - \sum_j y_j z_j = -\ln a_{y(x)}`, with :math:`\partial C_x/\partial z = a - y`.

    Use :func:`log_likelihood_cost`, which checks its arguments and one-hot encodes class labels. It takes
    :math:`z^L`, the softmax's input (as ``F.cross_entropy`` takes logits): from :math:`a^L` the cost would need
    :math:`\ln a_j`, which is :math:`\ln 0` once a softmax output has rounded to 0, and :math:`\nabla_a C = -y/a`
    would be infinite there; from :math:`z^L` both the value and :math:`\delta^L = a^L - y` are finite.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, y: Tensor, reduction: str) -> Tensor:
        return reduce_costs(log_likelihood_costs(z, y), reduction)  # "mean": C = −(1/n) Σ_x ln aᴸ_{y(x)}

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, y, reduction = inputs
        ctx.save_for_backward(z, y)
        ctx.save_for_forward(z, y)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        z, y = ctx.saved_tensors
        grad_z = grad_y = None
        a = softmax(z)  # aᴸ
        share = example_share(grad_cost, a, ctx.reduction)
        if ctx.needs_input_grad[0]:
            grad_z = (a - y) * share  # (BP1) δᴸ = ∂C_x/∂zᴸ = aᴸ − y
        if ctx.needs_input_grad[1]:
            grad_y = -z * share  # ∂C_x/∂y_j = −z_j
        return grad_z, grad_y, None

    @staticmethod
    def jvp(ctx, z_t: Tensor | None, y_t: Tensor | None, _reduction_t) -> Tensor:
        z, y = ctx.saved_tensors
        return _log_likelihood_rate(z, y, z_t, y_t, ctx.reduction)


def _log_likelihood_rate(z: Tensor, y: Tensor, z_t: Tensor | None, y_t: Tensor | None, reduction: str) -> Tensor:
    """Forward mode through the log-likelihood: Ċ_x = Σ_j (a_j − y_j) ż_j − z_j ẏ_j, reduced like the cost."""
    rate = torch.zeros_like(z) if z_t is None else (softmax(z) - y) * z_t  # (N, out)
    if y_t is not None:
        rate = rate - z * y_t
    return reduce_costs(rate.sum(-1), reduction)


#: Where :class:`CrossEntropyCostFunction` clamps, as ``nn.BCELoss``: logarithms at −100, a(1 − a) at 1e-12.
_LOG_FLOOR, _SATURATED = -100.0, 1e-12


def _clamped_logs(a: Tensor) -> tuple[Tensor, Tensor]:
    """``ln a`` and ``ln(1 − a)``, each at least −100, so that a saturated output gives a finite cost."""
    return torch.log(a).clamp_min(_LOG_FLOOR), torch.log1p(-a).clamp_min(_LOG_FLOOR)


_QuadraticCostCompilable = _without_jvp(QuadraticCostFunction)
_CrossEntropyCostCompilable = _without_jvp(CrossEntropyCostFunction)

_LogLikelihoodCostCompilable = _without_jvp(LogLikelihoodCostFunction)


def quadratic_cost(a: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""The quadratic cost of chapter 2, :math:`C = \frac{1}{2n} \sum_x \lVert y(x) - a(x) \rVert^2`,
    with the hand-written backward of :class:`QuadraticCostFunction`.

    This is not ``F.mse_loss``: that averages over every element and has no :math:`\tfrac12`.

    Args:
        a: the output activations :math:`a^L`, one row per example.
        y: the desired outputs, either floats shaped like ``a`` (e.g. one-hot vectors) or
            integer class labels shaped like ``a`` without its last dimension, one-hot encoded here.
        reduction: ``"mean"`` for the book's :math:`C`, the average of :math:`C_x = \tfrac12\lVert y - a\rVert^2`
            over examples; ``"sum"`` for :math:`\sum_x C_x`; ``"none"`` for the :math:`C_x` themselves.

    Shape:
        - a: :math:`(*, K)`, every leading index an example; :math:`(K)` is a single example.
        - y: :math:`(*, K)` floats or :math:`(*)` integer labels in ``0..K-1``.
        - Output: a scalar, or :math:`(*)` for ``reduction="none"``.

    Raises:
        TypeError: ``a`` is not a floating-point tensor, ``y`` is neither floating nor integer, or
            a float ``y`` has another dtype than ``a`` (outside autocast).
        ValueError: a shape does not fit, a label is outside ``0..K-1``, the devices differ,
            ``reduction`` is unknown, or the mean is asked of zero examples.

    Under :func:`torch.compile` and :mod:`torch.func` transforms a Python branch on tensor values is
    impossible, so there an out-of-range label is not raised but makes its example's cost NaN.

    Examples::

        >>> a = torch.rand(4, 10, requires_grad=True)
        >>> quadratic_cost(a, torch.tensor([3, 1, 4, 1])).backward()
    """
    y = _checked_cost_targets(a, y, reduction)
    return _compilable(QuadraticCostFunction, _QuadraticCostCompilable).apply(a, y, reduction)


def _checked_cost_targets(a: Tensor, y: Tensor, reduction: str, name: str = "a") -> Tensor:
    """The float targets for a cost of outputs ``a`` (the argument called ``name``), after checking ``a``, ``y`` and
    ``reduction``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_float_tensor(name, a)
    if a.ndim == 0 or a.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (*, K) with K >= 1 outputs, got shape {tuple(a.shape)}")
    if reduction == "mean" and a.numel() == 0:
        raise ValueError(f"the mean cost of zero examples is undefined ({name} has shape {tuple(a.shape)})")
    return targets(y, a.shape, a)


def cross_entropy_cost(a: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""Chapter 3's cross-entropy of sigmoid outputs :math:`a^L`,
    :math:`C = -\frac1n \sum_x \sum_j [y_j \ln a^L_j + (1 - y_j) \ln(1 - a^L_j)]`, with the hand-written backward of
    :class:`CrossEntropyCostFunction`: :math:`\nabla_a C = (a - y)/(n\,a(1 - a))`, which the output layer's
    :math:`\sigma'(z^L) = a(1 - a)` turns into BP1, :math:`\delta^L = a^L - y`.

    It takes :math:`a^L`, so it drops into a model as :func:`quadratic_cost` does, and it is exact where
    :math:`0 < a < 1`. Where an output has rounded to exactly 0 or 1 (large :math:`|z|`, float32 sooner than float64)
    it is finite but not exact: the logarithms are clamped at :math:`-100` and :math:`a(1 - a)` at :math:`10^{-12}`,
    as ``nn.BCELoss`` does, whose values and gradients it equals. For the exact saturated form, from :math:`z^L`,
    use :func:`sigmoid_cross_entropy` or ``Network(sizes, cost="cross_entropy")``.

    Args, Shape and Raises: as :func:`quadratic_cost`; ``y`` floats in [0, 1] or integer class labels.

    Examples::

        >>> a = torch.rand(4, 10, requires_grad=True)
        >>> cross_entropy_cost(a, torch.tensor([3, 1, 4, 1])).backward()
    """
    y = _checked_cost_targets(a, y, reduction)
    return _compilable(CrossEntropyCostFunction, _CrossEntropyCostCompilable).apply(a, y, reduction)


def log_likelihood_cost(z: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""Chapter 3's log-likelihood cost of a softmax output, from its input :math:`z^L` (the logits):
    :math:`C = -\frac1n \sum_x \ln a^L_{y(x)}` with :math:`a^L = \operatorname{softmax}(z^L)`, and the hand-written
    backward of :class:`LogLikelihoodCostFunction`, which returns BP1, :math:`\delta^L = a^L - y`, for :math:`z^L`.

    It takes :math:`z^L`, not :math:`a^L`, because that is what keeps it finite (see
    :class:`LogLikelihoodCostFunction`); it equals ``F.cross_entropy(z, labels)``.

    Args:
        z: the output layer's weighted inputs :math:`z^L`, one row per example.
        y, reduction: as :func:`softmax_log_likelihood`.

    Shape, Raises: as :func:`quadratic_cost`, with ``z`` for ``a``.

    Examples::

        >>> z = torch.randn(4, 10, requires_grad=True)
        >>> log_likelihood_cost(z, torch.tensor([3, 1, 4, 1])).backward()
    """
    y = _checked_cost_targets(z, y, reduction, "z")
    return _compilable(LogLikelihoodCostFunction, _LogLikelihoodCostCompilable).apply(z, y, reduction)


def targets_like(a: Tensor, y: Tensor) -> Tensor:
    r"""Return the desired outputs :math:`y(x)` as floats shaped like ``a``: the public form of the package's one
    target encoder, :func:`torch_manualbp.checks.targets`, for outputs already computed.

    A float ``y`` shaped like ``a`` is checked and returned as it is; integer class labels
    shaped like ``a.shape[:-1]`` become one-hot vectors, the book's representation of a digit.

    Raises:
        TypeError, ValueError: as :func:`quadratic_cost` documents.
    """
    return targets(y, a.shape, a)
