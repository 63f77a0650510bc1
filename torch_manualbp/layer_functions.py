r"""The layer Functions of :mod:`torch_manualbp.functional`: the fully-connected sigmoid layer
(:class:`SigmoidLinearFunction`), the fully-connected layer of any activation (:class:`FullyConnectedFunction`)
and chapter 3's dropout (:class:`DropoutFunction`), each with its checked functional form.

Each layer's ``backward`` turns :math:`\partial C/\partial a^l` into :math:`\delta^l = \partial C/\partial a^l \odot
f'(z^l)`, which is BP1 at the output layer and BP2 below it, then BP3 and BP4 for its parameters and
:math:`\delta^l W^l` for the layer below. Also the helpers the cost and output-layer Functions share: the layer's
argument check and the jvp-less twins that torch.compile traces. Import these names from
:mod:`torch_manualbp.functional`, which re-exports them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import recording
from .activations import get_activation
from .checks import check_bias, check_float_tensor, check_same_kind
from .equations import (
    bias_gradient,
    error_below,
    sigmoid_delta,
    sigmoid_prime,
    weight_gradient,
    weighted_input,
)


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
