r"""Chapter 6's convolutional layer with max-pooling, ``network3.py``'s ``ConvPoolLayer``, as an autograd Function
whose backward is the four equations of backpropagation written for it (the chapter's problem "Backpropagation in a
convolutional network"; derived in ``docs/chapter6.md``).

The layer maps feature maps :math:`x` of shape :math:`(N, C_{in}, H, W)` through local receptive fields of
:math:`k \times k` shared weights (stride 1, no padding), takes the maximum of each non-overlapping
:math:`p \times p` block, adds one shared bias per feature map and applies the activation:

.. math::
    c_{o,j,k} = \sum_{c,l,m} w_{o,c,l,m}\, x_{c,j+l,k+m}, \qquad
    z_{o,J,K} = \max_{(j,k) \in \text{pool}(J,K)} c_{o,j,k} + b_o, \qquad a = f(z)

:math:`c` is a cross-correlation, as ``nn.Conv2d`` computes and as the chapter writes it,
:math:`\sigma(b + \sum_{l,m} w_{l,m} a_{j+l,k+m})`. (``network3.py``'s Theano ``conv2d`` flips its filters, a true
convolution; the two differ only in how the weights are laid out.) The bias comes after the pool, as in
``network3.py``; since a max commutes with adding a constant to every entry, it is the same as adding it before.

The backward, with :math:`\delta` the errors :math:`\partial C/\partial z` of the pooled outputs and :math:`\hat\delta`
those of the convolution's outputs :math:`c`:

.. math::
    \text{(BP1)}\ \delta = \partial C/\partial a \odot f'(z) \qquad
    \text{(pool)}\ \hat\delta_{o,j,k} = \delta_{o,J,K} \text{ at the winner } (j,k) \text{ of pool } (J,K),
    \ 0 \text{ elsewhere}

    \text{(BP2)}\ \frac{\partial C}{\partial x_{c,p,q}} = \sum_{o,l,m} \hat\delta_{o,p-l,q-m}\, w_{o,c,l,m} \qquad
    \text{(BP3)}\ \frac{\partial C}{\partial b_o} = \sum_{n,J,K} \delta_{n,o,J,K} \qquad
    \text{(BP4)}\ \frac{\partial C}{\partial w_{o,c,l,m}} = \sum_{n,j,k} \hat\delta_{n,o,j,k}\, x_{n,c,j+l,k+m}

BP2 is the full correlation of :math:`\hat\delta` with the flipped filters; BP4 the correlation of the input with
:math:`\hat\delta`. Both are computed with ``conv2d`` itself (the forward op), with the roles of the tensors swapped,
never with ``torch.nn.grad`` or autograd. Imports only torch and the package's ``activations`` and ``checks``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import get_activation
from .checks import check_bias, check_float_tensor, check_same_kind

__all__ = [
    "ConvPoolFunction",
    "conv_pool",
    "feedforward_conv_pool",
    "route_through_pool",
    "conv_error_below",
    "conv_bias_gradient",
    "conv_weight_gradient",
]


class ConvPoolFunction(torch.autograd.Function):
    r"""A convolutional-pooling layer, :math:`a = f(\operatorname{maxpool}_p(x \star w) + b)`, stride 1, no padding.

    Use :func:`conv_pool`, which checks its arguments and looks the activation up by name; this class expects a 4-D
    ``x``, an int ``pool_size`` that fits, an :class:`~torch_manualbp.activations.Activation`, and trusts its caller.

    ``forward`` returns three tensors: the activations ``a``, the weighted inputs ``z`` and the pool's winners
    (``max_pool2d``'s flat indices into each :math:`H_{conv} \times W_{conv}` map); :func:`conv_pool` hands on ``a``
    only. ``z`` is an output so that the :math:`f'(z)` of the backward is connected to the graph (gradgradcheck
    passes); the indices are not differentiable. The backward is made of differentiable torch ops; there is no
    forward-mode rule (``jvp``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, pool_size: int, activation):
        a, z, winners = feedforward_conv_pool(x, weight, bias, pool_size, activation)
        # an activation that hands z back itself (linear) would make two outputs one tensor, which autograd and
        # torch.compile cannot route gradients through: z gets its own copy then
        return a, z.clone() if a is z else z, winners

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, _, activation = inputs
        a, z, winners = output
        ctx.mark_non_differentiable(winners)
        ctx.save_for_backward(x, weight, winners, z if activation.prime_from == "z" else a)
        ctx.activation = activation

    @staticmethod
    def backward(ctx, grad_a: Tensor, grad_z: Tensor, _grad_winners):
        x, weight, winners, z_or_a = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        # grad_z is zero unless z itself is used downstream, as it is in a double backward through f'(z)
        delta = grad_a * ctx.activation.prime(z_or_a) + grad_z  # (BP1) δ = ∂C/∂a ⊙ f'(z), (N, C_out, H_pool, W_pool)
        if ctx.needs_input_grad[2]:
            grad_bias = conv_bias_gradient(delta)  # (BP3)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return grad_x, grad_weight, grad_bias, None, None
        delta_conv = route_through_pool(delta, winners, x.shape, weight.shape[-1])  # (pool)
        if ctx.needs_input_grad[0]:
            grad_x = conv_error_below(delta_conv, weight)  # (BP2)
        if ctx.needs_input_grad[1]:
            grad_weight = conv_weight_gradient(delta_conv, x)  # (BP4)
        return grad_x, grad_weight, grad_bias, None, None


def feedforward_conv_pool(
    x: Tensor, weight: Tensor, bias: Tensor | None, pool_size: int, activation, channels_last: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The layer's forward pass: :math:`(a, z, \text{winners})`, the activations, the weighted inputs of the pooled
    outputs and each pool's winner (``max_pool2d``'s flat index into its :math:`H_{conv} \times W_{conv}` map).

    ``channels_last=True`` pools the convolution's maps in channels-last memory: on the CPU, ``max_pool2d`` with
    indices is about 7x faster so (75 against 530 µs for chapter 6's (10, 20, 24, 24), one thread), with the same
    values and winners, ties included (as measured here); ``vmap`` cannot query that layout, so the Function
    leaves it off."""
    conv = F.conv2d(x, weight)  # c = x ⋆ w, (N, C_out, H - k + 1, W - k + 1)
    if channels_last:  # the same numbers in another memory layout
        conv = conv.contiguous(memory_format=torch.channels_last)
    pooled, winners = F.max_pool2d(conv, pool_size, return_indices=True)  # (N, C_out, H_conv//p, W_conv//p)
    z = pooled if bias is None else pooled + bias[:, None, None]  # (N, C_out, H_pool, W_pool)
    return activation(z), z, winners


def route_through_pool(delta: Tensor, winners: Tensor, x_shape, k: int) -> Tensor:
    r""":math:`\hat\delta`, the errors of the convolution's outputs: :math:`\delta` of each pooled output at its
    pool's winner, 0 at the losers and at the rows and columns the floor left out; :math:`(N, C_{out}, H_{conv},
    W_{conv})` for an input of shape ``x_shape`` and :math:`k \times k` filters."""
    n, c_out = delta.shape[:2]
    h_conv, w_conv = x_shape[2] - k + 1, x_shape[3] - k + 1
    # (pool) δ̂ = δ at each pool's winner, 0 at the losers and at the rows/columns the floor left out
    delta_conv = delta.new_zeros(n, c_out, h_conv * w_conv).scatter(2, winners.flatten(2), delta.flatten(2))
    return delta_conv.view(n, c_out, h_conv, w_conv)


def conv_error_below(delta_conv: Tensor, weight: Tensor) -> Tensor:
    r""":math:`\partial C/\partial x`, the layer below's :math:`\partial C/\partial a` (BP2), :math:`(N, C_{in}, H,
    W)`: the full correlation of :math:`\hat\delta` with the flipped filters."""
    k = weight.shape[-1]
    # (BP2) ∂C/∂x_{c,p,q} = Σ_{o,l,m} δ̂_{o,p-l,q-m} w_{o,c,l,m}: the full correlation of δ̂ (zero-padded by
    # k - 1 on every side) with the filters flipped in both axes, their in and out channels swapped
    flipped = weight.flip(2, 3).transpose(0, 1)  # (C_in, C_out, k, k)
    return F.conv2d(F.pad(delta_conv, (k - 1,) * 4), flipped)  # (N, C_in, H, W)


def conv_bias_gradient(delta: Tensor) -> Tensor:
    r""":math:`\partial C/\partial b_o = \sum_{n,J,K} \delta_{n,o,J,K}` (BP3), :math:`(C_{out})`."""
    return delta.sum((0, 2, 3))  # (BP3) ∂C/∂b_o = Σ_{n,J,K} δ_{n,o,J,K}, (C_out,)


def conv_weight_gradient(delta_conv: Tensor, x: Tensor) -> Tensor:
    r""":math:`\partial C/\partial w` (BP4), shaped like ``weight``: the correlation of the input with
    :math:`\hat\delta`."""
    # (BP4) ∂C/∂w_{o,c,l,m} = Σ_{n,j,k} δ̂_{n,o,j,k} x_{n,c,j+l,k+m}: the correlation of x with δ̂, with the
    # batch as the channel that conv2d sums over (x as (C_in, N, H, W), δ̂ as C_out filters (N, H_conv, W_conv))
    return F.conv2d(x.transpose(0, 1), delta_conv.transpose(0, 1)).transpose(0, 1)  # (C_out, C_in, k, k)


def conv_pool(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, pool_size: int = 2, activation="sigmoid"
) -> Tensor:
    r"""Apply :math:`a = f(\operatorname{maxpool}_p(x \star w) + b)` with the hand-written backward of
    :class:`ConvPoolFunction`: ``network3.py``'s ``ConvPoolLayer``.

    Args:
        x: the input feature maps, a mini-batch of them.
        weight: the shared weights, one :math:`k \times k` filter per output feature map and input feature map.
        bias: the shared biases, one per output feature map, or ``None`` for none.
        pool_size: the side :math:`p` of each non-overlapping max-pool block; rows and columns of the convolution's
            output that do not fill a block are dropped (the floor of :math:`H_{conv}/p`, as ``max_pool2d``).
            Default: 2. ``1`` pools nothing.
        activation: a name in :data:`torch_manualbp.activations.ACTIVATIONS` (``"sigmoid"``, ``"tanh"``,
            ``"relu"``, ``"linear"``) or an :class:`~torch_manualbp.activations.Activation`.

    Shape:
        - x: :math:`(N, C_{in}, H, W)`.
        - weight: :math:`(C_{out}, C_{in}, k, k)`.
        - bias: :math:`(C_{out})`.
        - Output: :math:`(N, C_{out}, \lfloor (H - k + 1)/p \rfloor, \lfloor (W - k + 1)/p \rfloor)`.

    Raises:
        TypeError: a tensor is not floating-point, their dtypes differ, ``pool_size`` is not an int, or
            ``activation`` is neither a name nor an ``Activation``.
        ValueError: a shape does not fit, the tensors are on different devices, ``pool_size`` is not positive or
            larger than the convolution's output, or no activation has that name.

    Examples::

        >>> x = torch.rand(10, 1, 28, 28)
        >>> weight, bias = torch.randn(20, 1, 5, 5, requires_grad=True), torch.randn(20, requires_grad=True)
        >>> conv_pool(x, weight, bias, pool_size=2).shape
        torch.Size([10, 20, 12, 12])
    """
    f = get_activation(activation)
    _check_conv_pool(x, weight, bias, pool_size)
    a, _, _ = ConvPoolFunction.apply(x, weight, bias, pool_size, f)
    return a


def _check_conv_pool(x: Tensor, weight: Tensor, bias: Tensor | None, pool_size: int) -> None:
    """Raise unless ``x``, ``weight``, ``bias`` and ``pool_size`` make a conv-pool layer."""
    check_float_tensor("x", x)
    check_float_tensor("weight", weight)
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(
            f"weight must be 4-D (out_channels, in_channels, k, k), a square kernel, got shape {tuple(weight.shape)}"
        )
    c_out, c_in, k, _ = weight.shape
    if x.ndim != 4 or x.shape[1] != c_in:
        raise ValueError(
            f"x must have shape (N, in_channels, H, W) with in_channels={c_in} to match weight "
            f"{tuple(weight.shape)}, got shape {tuple(x.shape)}"
        )
    if x.shape[2] < k or x.shape[3] < k:
        raise ValueError(f"x's height and width must be at least the kernel size {k}, got {tuple(x.shape[2:])}")
    check_same_kind("x", x, "weight", weight)
    check_bias(bias, c_out, weight)
    if isinstance(pool_size, bool) or not isinstance(pool_size, int):
        raise TypeError(f"pool_size must be an int, got {type(pool_size).__name__}")
    conv_size = (x.shape[2] - k + 1, x.shape[3] - k + 1)
    if not 1 <= pool_size <= min(conv_size):
        raise ValueError(
            f"pool_size must be between 1 and the convolution's output size {conv_size} (H - k + 1, W - k + 1), "
            f"got {pool_size}"
        )
