r"""Backpropagation written by hand: the sigmoid layer, the quadratic cost, and the output layer with chapter 3's
cross-entropy cost, as autograd Functions.

Each ``backward`` below is one of the four equations of chapter 2 of Michael Nielsen's
"Neural Networks and Deep Learning", in PyTorch's row layout: a mini-batch of n examples
is n rows, and ``weight`` is ``(out, in)`` like ``nn.Linear``, which is exactly the book's
:math:`w^l_{jk}` (row j: a neuron of this layer, column k: a neuron of the layer below).

.. math::
    z^l = a^{l-1} W^{l\top} + b^l, \qquad a^l = \sigma(z^l), \qquad
    C = \frac{1}{2n} \sum_x \lVert y(x) - a^L(x) \rVert^2

    \text{(BP1)}\ \delta^L = \nabla_a C \odot \sigma'(z^L) \qquad
    \text{(BP2)}\ \delta^l = (\delta^{l+1} W^{l+1}) \odot \sigma'(z^l)

    \text{(BP3)}\ \partial C / \partial b^l = \textstyle\sum_x \delta^l_x \qquad
    \text{(BP4)}\ \partial C / \partial W^l = \delta^{l\top} a^{l-1}

Autograd splits the work between the two Functions: the cost's backward supplies
:math:`\nabla_a C`, and each layer's backward turns the gradient arriving at its output,
:math:`\partial C/\partial a^l`, into :math:`\delta^l` by the factor :math:`\sigma'(z^l)`, which is
BP1 at the output layer and BP2 below it, where :math:`\partial C/\partial a^l = \delta^{l+1} W^{l+1}`
is what the layer above returned for its input.

The cross-entropy cannot be split that way without a NaN: its :math:`\nabla_a C = (a - y)/(a(1 - a))` is
infinite where the output saturates, and the layer's :math:`\sigma'(z) = 0` there. So
:class:`SigmoidCrossEntropyFunction` is the output layer and the cost in one node, computed from :math:`z^L`
(the softplus form), whose backward starts from BP1 as chapter 3 writes it, :math:`\delta^L = a^L - y`.

Both Functions follow PyTorch's "Extending PyTorch" rules: ``forward`` and ``setup_context``
apart, tensors kept only through ``save_for_backward``/``save_for_forward``, ``needs_input_grad``
honoured, a ``backward`` made of differentiable torch operations (so double backward works), a
``jvp`` for forward-mode AD, and ``generate_vmap_rule`` so ``torch.func.vmap`` and ``grad`` work.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import recording
from .activations import get_activation
from .checks import check_bias, check_float_tensor, check_same_kind, targets
from .conv import ConvPoolFunction, conv_pool
from .equations import (
    a_minus_y,
    bias_gradient,
    cross_entropy_costs,
    error_below,
    example_share,
    log_likelihood_costs,
    quadratic_costs,
    quadratic_mean,
    reduce_costs,
    sigmoid_delta,
    sigmoid_prime,
    softmax,
    weight_gradient,
    weighted_input,
)

__all__ = [
    "SigmoidLinearFunction",
    "QuadraticCostFunction",
    "SigmoidCrossEntropyFunction",
    "CrossEntropyCostFunction",
    "SoftmaxLogLikelihoodFunction",
    "LogLikelihoodCostFunction",
    "DropoutFunction",
    "sigmoid_linear",
    "quadratic_cost",
    "sigmoid_cross_entropy",
    "cross_entropy_cost",
    "softmax_log_likelihood",
    "log_likelihood_cost",
    "dropout",
    "targets_like",
    "sigmoid_prime",
    "sigmoid_delta",
    "FullyConnectedFunction",
    "fully_connected",
    "ConvPoolFunction",
    "conv_pool",
]

REDUCTIONS = ("mean", "sum", "none")


class SigmoidLinearFunction(torch.autograd.Function):
    r"""A fully-connected sigmoid layer, :math:`a = \sigma(x W^\top + b)`, on a 2-D batch.

    Use :func:`sigmoid_linear`, which checks its arguments and accepts ``(*, in_features)``
    inputs; this class expects ``x`` of shape ``(N, in_features)`` and trusts its caller.

    Only ``x``, ``weight`` and the output ``a`` are saved for backward: :math:`\sigma'(z) = a(1 - a)`
    comes from the output, so :math:`z` is never kept. All three are alive anyway (the input, a
    parameter and the next layer's input), so the layer costs no memory beyond its output.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        z = weighted_input(x, weight, bias)  # z = x Wᵀ + b, (N, out)
        return torch.sigmoid(z)  # a = σ(z); torch.sigmoid saturates to 0 or 1 without overflow

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight, output)
        ctx.save_for_forward(x, weight, output)

    @staticmethod
    def backward(ctx, grad_a: Tensor):
        x, weight, a = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        # Under autocast a is bf16/fp16 while x and weight stay fp32: run the products in the forward's
        # compute dtype, as autocast does for built-in ops; autograd casts each gradient back to the
        # dtype of its input. Outside autocast every .to() here returns its tensor unchanged.
        dtype = a.dtype
        delta = sigmoid_delta(grad_a.to(dtype), a)  # BP1 at the output layer, BP2 below: δ = ∂C/∂a ⊙ σ'(z)
        if recording.is_recording():  # inside torch_manualbp.observe.record_errors(): show it δ and σ'(z)
            recording.notify(weight, delta, sigmoid_prime(a), x)
        if ctx.needs_input_grad[0]:
            grad_x = error_below(delta, weight.to(dtype))  # δˡ Wˡ, handed to the layer below for its BP2, (N, in)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(delta, x.to(dtype))  # BP4, (out, in)
        if ctx.needs_input_grad[2]:
            grad_bias = bias_gradient(delta)  # BP3, (out,)
        return grad_x, grad_weight, grad_bias

    @staticmethod
    def jvp(ctx, x_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None) -> Tensor:
        # Forward mode: ȧ = σ'(z) ⊙ ż.
        x, weight, a = ctx.saved_tensors
        return sigmoid_prime(a) * _weighted_input_tangent(x, weight, x_t, weight_t, bias_t, a.shape)


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
        a, y, reduction = inputs
        ctx.save_for_backward(a, y)
        ctx.save_for_forward(a, y)
        ctx.reduction = reduction

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


class SigmoidCrossEntropyFunction(torch.autograd.Function):
    r"""The output layer and chapter 3's cross-entropy cost as one node, reduced over examples:

    .. math::
        z = x W^\top + b, \qquad
        C_x = -\sum_j \left[y_j \ln \sigma(z_j) + (1 - y_j) \ln(1 - \sigma(z_j))\right]
            = \sum_j \left[\operatorname{softplus}(z_j) - y_j z_j\right]

    Use :func:`sigmoid_cross_entropy`, which checks its arguments and one-hot encodes class labels; this class
    expects ``x`` of shape ``(N, in_features)`` and a float ``y`` of shape ``(N, out_features)``.

    The cost is computed from :math:`z` (``ln σ(z)`` would be ``ln 0`` for a saturated output), and the backward
    starts from BP1 for this cost, :math:`\delta^L = a^L - y`, never forming :math:`\nabla_a C`. Only the inputs
    are saved; the backward recomputes :math:`z` from them (one ``(N, in) × (in, out)`` product, the output
    layer's, which is small), so that it is made of differentiable operations on the inputs alone and double
    backward is exact.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str) -> Tensor:
        z = weighted_input(x, weight, bias)  # zᴸ = x Wᵀ + b, (N, out)
        return reduce_costs(cross_entropy_costs(z, y), reduction)  # "mean": C = (1/n) Σ_x C_x, the book's cost

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, y, reduction = inputs
        ctx.save_for_backward(x, weight, bias, y)
        ctx.save_for_forward(x, weight, bias, y)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        # (BP1) δᴸ = aᴸ − y: σ'(zᴸ) cancelled (costs.CrossEntropy.delta, for one node)
        return _output_layer_backward(ctx, grad_cost, torch.sigmoid)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, y_t, _reduction_t) -> Tensor:
        # Forward mode: Ċ_x = Σ_j (σ(z_j) − y_j) ż_j − z_j ẏ_j, reduced like the cost.
        x, weight, bias, y = ctx.saved_tensors
        z = weighted_input(x, weight, bias)
        z_t = _weighted_input_tangent(x, weight, x_t, weight_t, bias_t, z.shape)
        if z_t is None:  # only y has a tangent
            z_t = torch.zeros_like(z)
        rate = (torch.sigmoid(z) - y) * z_t  # (N, out)
        if y_t is not None:
            rate = rate - z * y_t
        return reduce_costs(rate.sum(-1), ctx.reduction)


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
        a, y, reduction = inputs
        ctx.save_for_backward(a, y)
        ctx.save_for_forward(a, y)
        ctx.reduction = reduction

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


class SoftmaxLogLikelihoodFunction(torch.autograd.Function):
    r"""A softmax output layer and chapter 3's log-likelihood cost as one node, reduced over examples:

    .. math::
        z = x W^\top + b, \qquad a_j = \frac{e^{z_j}}{\sum_k e^{z_k}}, \qquad
        C_x = -\ln a_{y(x)} = \ln \sum_k e^{z_k} - \sum_j y_j z_j

    Use :func:`softmax_log_likelihood`, which checks its arguments and one-hot encodes class labels; this class
    expects ``x`` of shape ``(N, in_features)`` and a float ``y`` of shape ``(N, out_features)``.

    As :class:`SigmoidCrossEntropyFunction` for the sigmoid: the value comes from :math:`z` through ``logsumexp``
    (finite however saturated), the backward starts at BP1 for this cost, :math:`\delta^L = a^L - y`, and only the
    inputs are saved, :math:`z` being recomputed so that the backward is differentiable on the inputs alone.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str) -> Tensor:
        z = weighted_input(x, weight, bias)  # zᴸ = x Wᵀ + b, (N, out)
        return reduce_costs(log_likelihood_costs(z, y), reduction)  # "mean": C = −(1/n) Σ_x ln aᴸ_{y(x)}

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, y, reduction = inputs
        ctx.save_for_backward(x, weight, bias, y)
        ctx.save_for_forward(x, weight, bias, y)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        # (BP1) δᴸ = aᴸ − y, with aᴸ_j = e^{zᴸ_j} / Σ_k e^{zᴸ_k} (costs.LogLikelihood.delta, for one node)
        return _output_layer_backward(ctx, grad_cost, softmax)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, y_t, _reduction_t) -> Tensor:
        x, weight, bias, y = ctx.saved_tensors
        z = weighted_input(x, weight, bias)
        z_t = _weighted_input_tangent(x, weight, x_t, weight_t, bias_t, z.shape)
        return _log_likelihood_rate(z, y, z_t, y_t, ctx.reduction)


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


def _output_layer_backward(ctx, grad_cost: Tensor, activation) -> tuple[Tensor | None, ...]:
    r"""The backward of an output layer and its cost as one node whose BP1 is :math:`\delta^L = a^L - y`: the sigmoid
    with the cross-entropy, the softmax (``activation``) with the log-likelihood. Returns the gradients of ``x``,
    ``weight``, ``bias``, ``y`` (and ``None`` for the reduction), each only where it is needed."""
    x, weight, bias, y = ctx.saved_tensors
    grad_x = grad_weight = grad_bias = grad_y = None
    z = weighted_input(x, weight, bias)  # zᴸ again, from the inputs (not saved: see the classes' docstrings)
    a = activation(z)  # aᴸ
    share = example_share(grad_cost, a, ctx.reduction)  # each example's weight in the reduced cost: 1/n for the mean
    delta = (a - y) * share  # (BP1) δᴸ = aᴸ − y
    if recording.is_recording():  # record_errors(): for the softmax, the diagonal a(1 − a) of ∂aᴸ/∂zᴸ stands for σ'
        recording.notify(weight, delta, sigmoid_prime(a), x)
    if ctx.needs_input_grad[0]:
        grad_x = error_below(delta, weight)  # δᴸ Wᴸ, handed to the layer below for its BP2, (N, in)
    if ctx.needs_input_grad[1]:
        grad_weight = weight_gradient(delta, x)  # BP4, (out, in)
    if ctx.needs_input_grad[2]:
        grad_bias = bias_gradient(delta)  # BP3, (out,)
    if ctx.needs_input_grad[3]:
        grad_y = -z * share  # ∂C_x/∂y_j = −z_j, for both costs
    return grad_x, grad_weight, grad_bias, grad_y, None


def _log_likelihood_rate(z: Tensor, y: Tensor, z_t: Tensor | None, y_t: Tensor | None, reduction: str) -> Tensor:
    """Forward mode through the log-likelihood: Ċ_x = Σ_j (a_j − y_j) ż_j − z_j ẏ_j, reduced like the cost."""
    rate = torch.zeros_like(z) if z_t is None else (softmax(z) - y) * z_t  # (N, out)
    if y_t is not None:
        rate = rate - z * y_t
    return reduce_costs(rate.sum(-1), reduction)


class DropoutFunction(torch.autograd.Function):
    r"""Dropout as chapter 3 describes it: the hidden neurons where ``mask`` is 0 are removed,
    :math:`a \to a \odot m`, and the backward applies the same mask, :math:`\partial C/\partial a \odot m`, so a
    removed neuron has :math:`\delta = 0` (by BP2) and its weights and bias are not changed by the step.

    Use :func:`dropout`, which checks its arguments. ``mask`` holds one value per neuron (the book removes the same
    neurons for the whole mini-batch), 0 or 1 for the book's form; it is data, not differentiated.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor, mask: Tensor) -> Tensor:
        return a * mask  # the removed neurons output 0

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_a: Tensor):
        (mask,) = ctx.saved_tensors
        return grad_a * mask if ctx.needs_input_grad[0] else None, None  # the same neurons removed

    @staticmethod
    def jvp(ctx, a_t: Tensor | None, _mask_t) -> Tensor:
        (mask,) = ctx.saved_tensors
        return a_t * mask


#: Where :class:`CrossEntropyCostFunction` clamps, as ``nn.BCELoss``: logarithms at −100, a(1 − a) at 1e-12.
_LOG_FLOOR, _SATURATED = -100.0, 1e-12


def _clamped_logs(a: Tensor) -> tuple[Tensor, Tensor]:
    """``ln a`` and ``ln(1 − a)``, each at least −100, so that a saturated output gives a finite cost."""
    return torch.log(a).clamp_min(_LOG_FLOOR), torch.log1p(-a).clamp_min(_LOG_FLOOR)


def _weighted_input_tangent(
    x: Tensor, weight: Tensor, x_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None, shape: torch.Size
) -> Tensor | None:
    r"""Forward mode through :math:`z = x W^\top + b`: :math:`\dot z = \dot x W^\top + x \dot W^\top + \dot b` from
    the tangents that are given (``None``: that input has none), shaped ``shape``; ``None`` if no tangent is given."""
    terms = []
    if x_t is not None:
        terms.append(x_t @ weight.T)
    if weight_t is not None:
        terms.append(x @ weight_t.T)
    if bias_t is not None:
        terms.append(bias_t.expand(shape))
    return sum(terms[1:], terms[0]) if terms else None


def _without_jvp(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """``function`` without its ``jvp``, for torch.compile: a subclass with autograd.Function's default, none.

    Dynamo refuses to trace an autograd.Function that defines a custom ``jvp`` ("Unsupported custom
    jvp", torch 2.14), so a compiled region uses the same Function without it (see :func:`_compilable`): forward
    and backward are identical, and only forward-mode AD through a compiled region is given up.
    """
    return type(f"_{function.__name__}Compilable", (function,), {"jvp": torch.autograd.Function.jvp})


_SigmoidLinearCompilable = _without_jvp(SigmoidLinearFunction)
_QuadraticCostCompilable = _without_jvp(QuadraticCostFunction)
_SigmoidCrossEntropyCompilable = _without_jvp(SigmoidCrossEntropyFunction)
_CrossEntropyCostCompilable = _without_jvp(CrossEntropyCostFunction)
_SoftmaxLogLikelihoodCompilable = _without_jvp(SoftmaxLogLikelihoodFunction)
_LogLikelihoodCostCompilable = _without_jvp(LogLikelihoodCostFunction)
_DropoutCompilable = _without_jvp(DropoutFunction)


def _compilable(function: type[torch.autograd.Function], twin: type[torch.autograd.Function]):
    """The Function to apply: its ``twin`` made by :func:`_without_jvp` while torch.compile traces, itself otherwise."""
    return twin if torch.compiler.is_compiling() else function


def sigmoid_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""Apply :math:`a = \sigma(x W^\top + b)` with the hand-written backward of
    :class:`SigmoidLinearFunction`.

    Args:
        x: input activations :math:`a^{l-1}`.
        weight: the layer's weights :math:`W^l`, one row per neuron of this layer.
        bias: the layer's biases :math:`b^l`, or ``None`` for none.

    Shape:
        - x: :math:`(*, H_{in})`, any number of leading dimensions, including none.
        - weight: :math:`(H_{out}, H_{in})`.
        - bias: :math:`(H_{out})`.
        - Output: :math:`(*, H_{out})`.

    Raises:
        TypeError: an argument is not a floating-point tensor, or their dtypes differ
            (outside autocast, which mixes dtypes on purpose).
        ValueError: a shape does not fit, or the tensors are on different devices.

    Examples::

        >>> x = torch.rand(4, 784)
        >>> weight, bias = torch.randn(30, 784, requires_grad=True), torch.randn(30, requires_grad=True)
        >>> sigmoid_linear(x, weight, bias).shape
        torch.Size([4, 30])
    """
    out_features, in_features = _check_layer(x, weight, bias)
    function = _compilable(SigmoidLinearFunction, _SigmoidLinearCompilable)
    if x.ndim == 2:  # a mini-batch of rows, the Function's own layout: no reshape nodes in the graph
        return function.apply(x, weight, bias)  # (N, out)
    return function.apply(x.reshape(-1, in_features), weight, bias).reshape(*x.shape[:-1], out_features)


def sigmoid_cross_entropy(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""The output layer :math:`a^L = \sigma(x W^\top + b)` and chapter 3's cross-entropy cost of it, in one step,
    :math:`C = -\frac{1}{n} \sum_x \sum_j [y_j \ln a^L_j + (1 - y_j) \ln(1 - a^L_j)]`, with the hand-written
    backward of :class:`SigmoidCrossEntropyFunction`: BP1 as :math:`\delta^L = a^L - y`, then BP3, BP4 and
    :math:`\delta^L W^L` for the layer below.

    It takes the output layer's input and parameters, not :math:`a^L`, because the cost is computed from
    :math:`z^L` and stays finite when the output saturates. It equals ``binary_cross_entropy_with_logits(x @ weight.T
    + bias, y, reduction="none").sum(-1).mean()``: summed over the outputs, averaged over the examples.

    Args:
        x: the activations :math:`a^{L-1}` of the layer below the output layer.
        weight, bias: the output layer's :math:`W^L` and :math:`b^L` (``bias`` may be ``None``).
        y: the desired outputs, floats in [0, 1] shaped like the output, or integer class labels, one-hot encoded here.
        reduction: ``"mean"`` for the book's :math:`C`; ``"sum"`` for :math:`\sum_x C_x`; ``"none"`` for the
            :math:`C_x` themselves.

    Shape:
        - x: :math:`(*, H_{in})`; weight: :math:`(K, H_{in})`; bias: :math:`(K)`.
        - y: :math:`(*, K)` floats or :math:`(*)` integer labels in ``0..K-1``.
        - Output: a scalar, or :math:`(*)` for ``reduction="none"``.

    Raises:
        TypeError, ValueError: as :func:`sigmoid_linear` and :func:`quadratic_cost` document.

    Examples::

        >>> hidden = sigmoid_linear(torch.rand(8, 784), w1, b1)  # (8, 30)
        >>> sigmoid_cross_entropy(hidden, w2, b2, torch.randint(0, 10, (8,))).backward()
    """
    function = _compilable(SigmoidCrossEntropyFunction, _SigmoidCrossEntropyCompilable)
    return _output_layer_cost(function, x, weight, bias, y, reduction)


def softmax_log_likelihood(
    x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str = "mean"
) -> Tensor:
    r"""A softmax output layer :math:`a^L_j = e^{z^L_j} / \sum_k e^{z^L_k}`, :math:`z^L = x W^\top + b`, and
    chapter 3's log-likelihood cost of it, :math:`C = -\frac1n \sum_x \ln a^L_{y(x)}`, in one step, with the
    hand-written backward of :class:`SoftmaxLogLikelihoodFunction`: BP1 as :math:`\delta^L = a^L - y`, then BP3, BP4
    and :math:`\delta^L W^L` for the layer below.

    It equals ``F.cross_entropy(x @ weight.T + bias, labels)`` (and, for float ``y`` whose rows sum to 1, the
    same with probability targets), and is finite however large :math:`z^L` is.

    Args:
        x: the activations :math:`a^{L-1}` of the layer below the output layer.
        weight, bias: the output layer's :math:`W^L` and :math:`b^L` (``bias`` may be ``None``).
        y: integer class labels, one-hot encoded here, or float targets shaped like the output; with a float ``y``
            the cost is :math:`\ln \sum_k e^{z_k} - \sum_j y_j z_j`, the log-likelihood when each row sums to 1.
        reduction: ``"mean"`` for the book's :math:`C`; ``"sum"`` for :math:`\sum_x C_x`; ``"none"`` for the
            :math:`C_x` themselves.

    Shape, Raises: as :func:`sigmoid_cross_entropy`.

    Examples::

        >>> hidden = sigmoid_linear(torch.rand(8, 784), w1, b1)  # (8, 30)
        >>> softmax_log_likelihood(hidden, w2, b2, torch.randint(0, 10, (8,))).backward()
    """
    function = _compilable(SoftmaxLogLikelihoodFunction, _SoftmaxLogLikelihoodCompilable)
    return _output_layer_cost(function, x, weight, bias, y, reduction)


def _output_layer_cost(function, x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, reduction: str) -> Tensor:
    """``function`` (an output layer and its cost as one node) applied after checking its arguments; leading batch
    dimensions are flattened into the Function's ``(N, in_features)`` rows."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    out_features, in_features = _check_layer(x, weight, bias)
    examples = x.shape[:-1]
    if reduction == "mean" and x.numel() == 0:
        raise ValueError(f"the mean cost of zero examples is undefined (x has shape {tuple(x.shape)})")
    y = targets(y, (*examples, out_features), x)
    if x.ndim == 2:  # a mini-batch of rows, the Function's own layout
        return function.apply(x, weight, bias, y, reduction)
    cost = function.apply(x.reshape(-1, in_features), weight, bias, y.reshape(-1, out_features), reduction)
    return cost.reshape(examples) if reduction == "none" else cost


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


def dropout(a: Tensor, mask: Tensor) -> Tensor:
    r"""Remove the hidden neurons where ``mask`` is 0, as chapter 3's dropout does for a mini-batch:
    :math:`a \odot m`, with the hand-written backward of :class:`DropoutFunction`, which applies the same mask.

    Args:
        a: a hidden layer's activations :math:`a^l`.
        mask: one value per neuron of the layer, 0 (removed) or 1 (kept), the same for every example; see
            :func:`torch_manualbp.network.dropout_masks` to draw one as the book does.

    Shape:
        - a: :math:`(*, H)`; mask: :math:`(H)`; Output: :math:`(*, H)`.

    Raises:
        TypeError, ValueError: ``a`` or ``mask`` is not a floating-point tensor, their dtypes or devices differ, or
            ``mask`` is not of shape :math:`(H)`.

    Examples::

        >>> a = sigmoid_linear(torch.rand(8, 784), w1, b1)  # (8, 30)
        >>> mask = (torch.arange(30) % 2).float()  # the odd-numbered neurons kept
        >>> dropout(a, mask).shape
        torch.Size([8, 30])
    """
    check_float_tensor("a", a)
    check_float_tensor("mask", mask)
    if a.ndim == 0 or mask.shape != a.shape[-1:]:
        raise ValueError(
            f"mask must have shape (H,), one value per neuron of a {tuple(a.shape)}, got {tuple(mask.shape)}"
        )
    check_same_kind("mask", mask, "a", a)
    return _compilable(DropoutFunction, _DropoutCompilable).apply(a, mask)


def targets_like(a: Tensor, y: Tensor) -> Tensor:
    r"""Return the desired outputs :math:`y(x)` as floats shaped like ``a``: the public form of the package's one
    target encoder, :func:`torch_manualbp.checks.targets`, for outputs already computed.

    A float ``y`` shaped like ``a`` is checked and returned as it is; integer class labels
    shaped like ``a.shape[:-1]`` become one-hot vectors, the book's representation of a digit.

    Raises:
        TypeError, ValueError: as :func:`quadratic_cost` documents.
    """
    return targets(y, a.shape, a)


def _check_layer(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[int, int]:
    """``(out_features, in_features)`` of a layer, after checking that ``x``, ``weight`` and ``bias`` fit it."""
    check_float_tensor("x", x)
    check_float_tensor("weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if x.ndim == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape (*, in_features) with in_features={in_features} to match weight "
            f"{tuple(weight.shape)}, got shape {tuple(x.shape)}"
        )
    check_same_kind("x", x, "weight", weight)
    check_bias(bias, out_features, weight)
    return out_features, in_features


class FullyConnectedFunction(torch.autograd.Function):
    r"""A fully-connected layer of any activation, :math:`a = f(x W^\top + b)`, on a 2-D batch.

    Use :func:`fully_connected`, which checks its arguments and looks the activation up by name; this class expects
    ``x`` of shape ``(N, in_features)`` and an :class:`~torch_manualbp.activations.Activation`.

    ``z`` and ``a`` are both saved, so that :math:`f'(z)` comes from whichever the activation's ``prime`` takes. The
    backward is made of differentiable torch ops, so it can itself be differentiated (gradgradcheck passes); there
    is no forward-mode rule (``jvp``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, activation) -> Tensor:
        z = weighted_input(x, weight, bias)  # z = x Wᵀ + b, (N, out)
        return activation(z)  # a = f(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, activation = inputs
        ctx.save_for_backward(x, weight, weighted_input(x, weight, bias) if activation.prime_from == "z" else output)
        ctx.activation = activation

    @staticmethod
    def backward(ctx, grad_a: Tensor):
        x, weight, z_or_a = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        delta = grad_a * ctx.activation.prime(z_or_a)  # BP1 at the output layer, BP2 below: δ = ∂C/∂a ⊙ f'(z)
        if ctx.needs_input_grad[0]:
            grad_x = error_below(delta, weight)  # δˡ Wˡ, handed to the layer below for its BP2, (N, in)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(delta, x)  # (BP4) ∂C/∂W = δᵀ x, (out, in)
        if ctx.needs_input_grad[2]:
            grad_bias = bias_gradient(delta)  # (BP3) ∂C/∂b = Σ_x δ, (out,)
        return grad_x, grad_weight, grad_bias, None


def fully_connected(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation="sigmoid") -> Tensor:
    r"""Apply :math:`a = f(x W^\top + b)` with the hand-written backward of :class:`FullyConnectedFunction`.

    Args:
        x: input activations :math:`a^{l-1}`.
        weight: the layer's weights :math:`W^l`, one row per neuron of this layer.
        bias: the layer's biases :math:`b^l`, or ``None`` for none.
        activation: a name in :data:`torch_manualbp.activations.ACTIVATIONS` (``"sigmoid"``, ``"tanh"``,
            ``"relu"``, ``"linear"``) or an :class:`~torch_manualbp.activations.Activation`.

    Shape:
        - x: :math:`(*, H_{in})`, any number of leading dimensions, including none.
        - weight: :math:`(H_{out}, H_{in})`.
        - bias: :math:`(H_{out})`.
        - Output: :math:`(*, H_{out})`.

    Raises:
        TypeError: a tensor is not floating-point, their dtypes differ, or ``activation`` is neither a name nor an
            ``Activation``.
        ValueError: a shape does not fit, the tensors are on different devices, or no activation has that name.

    Examples::

        >>> x = torch.rand(4, 784)
        >>> weight, bias = torch.randn(30, 784, requires_grad=True), torch.randn(30, requires_grad=True)
        >>> fully_connected(x, weight, bias, activation="relu").shape
        torch.Size([4, 30])
    """
    f = get_activation(activation)
    out_features, in_features = _check_layer(x, weight, bias)
    if x.ndim == 2:
        return FullyConnectedFunction.apply(x, weight, bias, f)  # (N, out)
    return FullyConnectedFunction.apply(x.reshape(-1, in_features), weight, bias, f).reshape(
        *x.shape[:-1], out_features
    )
