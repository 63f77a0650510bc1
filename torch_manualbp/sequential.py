r"""One SGD step of an ``nn.Sequential`` of the package's layers, by hand: chapter 6's networks on the fast path.

``network3.py`` stacks ``ConvPoolLayer``\ s and ``FullyConnectedLayer``\ s under a ``SoftmaxLayer``; here the same
network is ``nn.Sequential(ConvPool2d(...), nn.Flatten(), FullyConnected(...), FullyConnected(..., activation=
"linear"))`` whose last layer computes :math:`z^L`, with a cost (``"log_likelihood"``: the softmax output) after it.
Autograd through the layers' Functions trains it (their backwards are the equations); :func:`sgd_step` makes the
same update with no autograd at all: the forward pass keeps what each layer's backward needs, BP1 comes from the
cost, then each layer, top down, hands :math:`\partial C/\partial a` to the layer below (BP2), and its gradients
(BP3, BP4) update its parameters in place. No graph is built and no optimizer runs, which at chapter 6's
mini-batches of 10 is most of autograd's time (``python -m benchmarks.conv_step``). A fully connected layer may drop
entries of its input (``network3.py``'s ``p_dropout``): given the step's ``masks``, its input is :math:`m \odot a`
and the error it hands down goes through the same mask.

The equations are the layers' own: :mod:`torch_manualbp.conv`'s for a conv-pool layer and
:mod:`torch_manualbp.equations`' for a fully connected one; nothing here computes a gradient itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .checks import check_learning_rate, l2_weight_decay, targets
from .conv import (
    conv_bias_gradient,
    conv_error_below,
    conv_weight_gradient,
    feedforward_conv_pool,
    route_through_pool,
)
from .costs import Cost, get_cost
from .equations import a_minus_y, bias_gradient, error_below, weight_gradient, weighted_input
from .nn import ConvPool2d, FullyConnected

__all__ = ["sgd_step"]


def sgd_step(
    layers: nn.Sequential | Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    eta: float,
    cost: str | Cost = "log_likelihood",
    lmbda: float = 0.0,
    n: int | None = None,
    masks: Sequence[Tensor | None] | None = None,
) -> Tensor:
    r"""One step of mini-batch SGD on ``(x, y)``, in place, without autograd; returns the mini-batch's mean cost
    :math:`C_0` before the step.

    The update is the book's: :math:`w \to (1 - \eta\lambda/n) w - \eta\, \partial C_0/\partial w` and
    :math:`b \to b - \eta\, \partial C_0/\partial b`, with :math:`C_0` the mean cost over the mini-batch, every
    gradient from the same parameters (all are computed before any changes), as ``torch.optim.SGD(lr=eta,
    weight_decay=lmbda/n)`` on the weights after a backward through the same layers makes it.

    Args:
        layers: ``ConvPool2d``, ``nn.Flatten`` and ``FullyConnected`` layers, in order; the last a
            ``FullyConnected`` with ``activation="linear"``, whose output is the weighted input :math:`z^L` of the
            cost's output layer.
        x: the mini-batch, as the first layer takes it.
        y: integer class labels, or desired outputs shaped like the last layer's output.
        eta: the learning rate :math:`\eta`.
        cost: a name in :data:`torch_manualbp.costs.COSTS` or a :class:`~torch_manualbp.costs.Cost`; its output layer
            (the softmax for ``"log_likelihood"``, the sigmoid otherwise) turns :math:`z^L` into :math:`a^L`.
        lmbda: chapter 3's L2 parameter :math:`\lambda` (:math:`\frac{\lambda}{2n}\sum w^2`, the weights of every
            layer, not the biases); 0: none. ``network3.py``'s ``lmbda`` (its term is divided by the number of
            mini-batches, not examples) is this one divided by the mini-batch size.
        n: the number of training examples, the :math:`n` of :math:`\lambda/n`; needed with a nonzero ``lmbda``.
        masks: dropout, ``network3.py``'s: one entry per layer, ``None`` or, for a ``FullyConnected``, a 0/1 tensor
            shaped like that layer's input (1 kept, 0 dropped), by which the input is multiplied (not rescaled); the
            step's forward and BP4 see :math:`m \odot a^{l-1}`, and BP2 hands the layer below
            :math:`m \odot (\delta^l W^l)`. ``None`` (default): no dropout.

    Shape:
        - x: :math:`(N, C_{in}, H, W)` for a first ``ConvPool2d``, :math:`(N, H_{in})` for a first
          ``FullyConnected``.
        - y: :math:`(N)` labels or :math:`(N, H_L)` floats.
        - masks[i]: layer i's input shape, :math:`(N, H_{in})` for a ``FullyConnected``.
        - Output: a scalar.
    """
    layers = _check_layers(layers, x)
    masks = _check_masks(masks, layers)
    cost = get_cost(cost)
    eta = check_learning_rate(eta)
    decay = l2_weight_decay(lmbda, n)
    with torch.no_grad():
        inputs, saved, a = [], [], x
        for i, layer in enumerate(layers):  # the forward pass, keeping each layer's input and what its backward needs
            if masks[i] is not None:
                if masks[i].shape != a.shape:
                    raise ValueError(
                        f"masks[{i}] must have the shape of layers[{i}]'s input, {tuple(a.shape)}; got"
                        f" {tuple(masks[i].shape)}"
                    )
                a = a * masks[i]  # (dropout) the layer's input m ⊙ a, each dropped entry 0, the others not rescaled
            inputs.append(a)
            if isinstance(layer, ConvPool2d):
                channels_last = a.device.type == "cpu"  # the CPU's max-pool is faster so (feedforward_conv_pool)
                a, z, winners = feedforward_conv_pool(
                    a, layer.weight, layer.bias, layer.pool_size, layer.activation, channels_last
                )
                saved.append((z, a, winners))
            elif isinstance(layer, FullyConnected):
                z = weighted_input(a, layer.weight, layer.bias)  # z = a Wᵀ + b
                a = layer.activation(z)
                saved.append((z, a, None))
            else:  # nn.Flatten
                a = layer(a)
                saved.append(None)
        z = a  # the last layer's output: the cost's weighted input zᴸ
        output = cost.activation(z)  # aᴸ, the cost's output layer (softmax, sigmoid)
        y = targets(y, tuple(output.shape), output)
        output_minus_y = a_minus_y(output, y)
        mean_cost = cost.mean(z, output_minus_y, y)  # C₀ = (1/N) Σ_x C_x
        grad_a = cost.delta(output_minus_y / len(x), output)  # (BP1) δᴸ = ∂C₀/∂zᴸ, for the linear last layer
        updates = []
        for i in reversed(range(len(layers))):  # top down: each layer's δ from the ∂C/∂a above it
            layer, kept, below = layers[i], saved[i], inputs[i]
            if kept is None:  # nn.Flatten: the same numbers, the layer below's shape
                grad_a = grad_a.reshape(below.shape)
                continue
            z, a, winners = kept
            delta = grad_a * layer.activation.derivative(z, a)  # (BP1)/(BP2) δ = ∂C/∂a ⊙ f'(z)
            if isinstance(layer, ConvPool2d):
                delta_conv = route_through_pool(delta, winners, below.shape, layer.kernel_size)  # (pool)
                grad_w = conv_weight_gradient(delta_conv, below)  # (BP4)
                grad_b = None if layer.bias is None else conv_bias_gradient(delta)  # (BP3)
                grad_a = conv_error_below(delta_conv, layer.weight) if i else None  # (BP2) ∂C/∂a below
            else:
                grad_w = weight_gradient(delta, below)  # (BP4) δᵀ aˡ⁻¹
                grad_b = None if layer.bias is None else bias_gradient(delta)  # (BP3) Σ_x δ
                grad_a = error_below(delta, layer.weight) if i else None  # (BP2) δˡ Wˡ, before Wˡ changes
                if grad_a is not None and masks[i] is not None:
                    grad_a = grad_a * masks[i]  # (BP2, dropout) ∂C/∂a below = m ⊙ δˡ Wˡ: a dropped entry passes none
            updates.append((layer, grad_w, grad_b))
        for layer, grad_w, grad_b in updates:
            if decay:
                layer.weight.mul_(1 - eta * decay)  # L2: w → (1 − ηλ/n) w
            layer.weight.sub_(grad_w, alpha=eta)  # w → w − η ∂C₀/∂w
            if grad_b is not None:
                layer.bias.sub_(grad_b, alpha=eta)  # b → b − η ∂C₀/∂b
    return mean_cost


def _check_masks(masks, layers: list[nn.Module]) -> list[Tensor | None]:
    """``masks`` as one entry per layer (all ``None`` for ``None``); raises in one line naming the first entry that
    is not ``None`` or a tensor, or that is given to a layer other than a ``FullyConnected``."""
    if masks is None:
        return [None] * len(layers)
    if not isinstance(masks, Sequence) or isinstance(masks, (str, bytes)):
        raise TypeError(f"masks must be a sequence of one tensor or None per layer, got {type(masks).__name__}")
    masks = list(masks)
    if len(masks) != len(layers):
        raise ValueError(f"masks must hold one entry per layer, {len(layers)}; got {len(masks)}")
    for i, (mask, layer) in enumerate(zip(masks, layers)):
        if mask is None:
            continue
        if not isinstance(mask, Tensor):
            raise TypeError(f"masks[{i}] must be a torch.Tensor or None, got {type(mask).__name__}")
        if not isinstance(layer, FullyConnected):
            raise ValueError(
                f"masks[{i}]: layers[{i}] is a {type(layer).__name__}; dropout masks the input of a FullyConnected"
                " (network3.py's conv-pool layers have none)"
            )
    return masks


def _check_layers(layers, x: Tensor) -> list[nn.Module]:
    """The layers as a list, each one :func:`sgd_step` can step, the last a linear ``FullyConnected``; raises in one
    line naming the first that is not."""
    if not isinstance(layers, (nn.Sequential, Sequence)) or isinstance(layers, (str, bytes)):
        raise TypeError(f"layers must be an nn.Sequential or a sequence of layers, got {type(layers).__name__}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers must hold at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, (ConvPool2d, FullyConnected, nn.Flatten)):
            raise TypeError(
                f"layers[{i}] is a {type(layer).__name__}; sgd_step steps ConvPool2d, nn.Flatten and FullyConnected"
                " layers (for others, train through autograd: their Functions' backwards are the same equations)"
            )
    last = layers[-1]
    if not isinstance(last, FullyConnected) or last.activation.name != "linear":
        raise ValueError(
            "layers[-1] must be a FullyConnected with activation='linear': its output is zᴸ, and the cost's output"
            f" layer (the softmax for log_likelihood) turns it into aᴸ; got {last!r}"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    first = next(layer for layer in layers if not isinstance(layer, nn.Flatten))
    want = 4 if isinstance(first, ConvPool2d) else 2
    if x.ndim != want:
        shape = "(N, C_in, H, W)" if want == 4 else "(N, in_features)"
        raise ValueError(f"x must have shape {shape} for layers[0], {first!r}; got shape {tuple(x.shape)}")
    return layers
