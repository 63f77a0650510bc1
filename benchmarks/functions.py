r"""Section 1: forward+backward through the hand-written Functions vs the same computation through autograd.

Three cases, each for batch sizes N in (10, 100, 1000) and hidden sizes H in (30, 100, 1000):

* ``layer``: one sigmoid layer 784 -> H. Custom: ``sigmoid_linear(x, W, b)``; autograd:
  ``torch.sigmoid(F.linear(x, W, b))`` (``reference.autograd_output``). ``x`` requires grad, so BP2's
  ``grad_x`` is computed too, as in any layer above the first; the backward is seeded with a fixed random
  ``grad_output``.
* ``network``: ``[784, H, 10]`` plus the mean quadratic cost against one-hot targets. Custom:
  ``quadratic_cost(sigmoid_linear(sigmoid_linear(x, W1, b1), W2, b2), y)``; autograd: the same with
  ``F.linear`` + ``torch.sigmoid`` and the cost in plain ops ``0.5 * ((a - y) ** 2).sum(1).mean()``
  (``reference.autograd_cost``). ``x`` needs no grad (it is the data).
* ``network, one node``: the same network and cost through ``Network.cost``, whose backward runs BP1-BP4
  over both layers in one autograd node.

Each call runs forward, backward, and sets every ``.grad`` back to ``None`` (so no accumulation op).
The gradients of both contenders are compared once per shape, and the bytes saved for backward are
counted with :mod:`benchmarks.saved_bytes`.

To run only this section::

    python -m benchmarks --only functions [--quick]
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_manualbp import Network
from torch_manualbp.functional import quadratic_cost, sigmoid_linear
from torch_manualbp.mnist import MNIST_CLASSES, MNIST_INPUTS
from torch_manualbp.testing.reference import autograd_cost, autograd_output
from torch_manualbp.testing.timing import interleaved, median, synchronizer

from .saved_bytes import count_saved_bytes

__all__ = ["run", "BATCH_SIZES", "HIDDEN_SIZES"]

BATCH_SIZES = (10, 100, 1000)
HIDDEN_SIZES = (30, 100, 1000)
INPUTS, CLASSES = MNIST_INPUTS, MNIST_CLASSES


def _param(*shape: int, device, scale: float = 1.0) -> Tensor:
    return (torch.randn(*shape, device=device) * scale).requires_grad_()


def _forward_layer(n: int, h: int, device) -> tuple[dict[str, Callable[[], Tensor]], list[Tensor], Tensor]:
    """Forward passes of one layer, the tensors the caller holds, and the backward's seed gradient."""
    x = torch.rand(n, INPUTS, device=device, requires_grad=True)
    w, b = _param(h, INPUTS, device=device, scale=INPUTS**-0.5), _param(h, device=device)
    forwards = {
        "custom": lambda: sigmoid_linear(x, w, b),
        "autograd": lambda: autograd_output([w, b], x),
    }
    return forwards, [x, w, b], torch.randn(n, h, device=device)


def _forward_network(n: int, h: int, device, one_node: bool = False):
    """Forward passes of [784, h, 10] + mean quadratic cost, and the tensors the caller holds.

    ``one_node``: the custom contender is ``Network.cost`` (the whole network and cost as one autograd node)
    instead of the per-layer Functions.
    """
    net = Network([INPUTS, h, CLASSES], device=device)  # weights N(0, 1/n_in), biases N(0, 1)
    x = torch.rand(n, INPUTS, device=device)
    y = F.one_hot(torch.randint(0, CLASSES, (n,), device=device), CLASSES).to(x.dtype)
    (w1, b1), (w2, b2) = [(layer.weight, layer.bias) for layer in net.layers]

    def custom() -> Tensor:
        if one_node:
            return net.cost(x, y)
        return quadratic_cost(sigmoid_linear(sigmoid_linear(x, w1, b1), w2, b2), y)

    return {"custom": custom, "autograd": lambda: autograd_cost([w1, b1, w2, b2], x, y)}, [x, y, w1, b1, w2, b2], None


CASES = {
    "layer": _forward_layer,
    "network": _forward_network,
    "network, one node": partial(_forward_network, one_node=True),
}


def _step(forward: Callable[[], Tensor], grad_output: Tensor | None, leaves: list[Tensor]) -> Callable[[], None]:
    """Forward + backward + clearing the gradients: one timed call."""

    def step() -> None:
        forward().backward(grad_output)
        for t in leaves:
            t.grad = None

    return step


def _gradient_difference(forwards, grad_output, leaves) -> float:
    """Largest |custom − autograd| over all gradients: the two contenders must compute the same thing."""
    grads = {}
    for name, forward in forwards.items():
        forward().backward(grad_output)
        grads[name] = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
    return max(float((c - a).abs().max()) for c, a in zip(grads["custom"], grads["autograd"]))


def measure(case: str, n: int, h: int, device, repeats: int, min_sample_s: float) -> dict:
    """Time both contenders on one shape, interleaved; count their saved bytes; compare gradients."""
    torch.manual_seed(0)
    forwards, held, grad_output = CASES[case](n, h, device)
    leaves = [t for t in held if t.requires_grad]
    steps = {name: _step(fn, grad_output, leaves) for name, fn in forwards.items()}
    samples, calls = interleaved(steps, repeats, min_sample_s, sync=synchronizer(device))
    saved = {name: count_saved_bytes(fn, held) for name, fn in forwards.items()}
    for t in leaves:
        t.grad = None
    us = {name: median(s) * 1e6 for name, s in samples.items()}
    return {
        "case": case,
        "device": str(device),
        "batch": n,
        "hidden": h,
        "custom_us": us["custom"],
        "autograd_us": us["autograd"],
        "ratio": us["custom"] / us["autograd"],
        "saved_custom": saved["custom"].saved,
        "saved_autograd": saved["autograd"].saved,
        "extra_custom": saved["custom"].extra,
        "extra_autograd": saved["autograd"].extra,
        "max_grad_diff": _gradient_difference(forwards, grad_output, leaves),
        "calls_per_sample": calls,
        "samples_us": {name: [v * 1e6 for v in s] for name, s in samples.items()},
    }


def run(device, repeats: int, min_sample_s: float, log=print) -> list[dict]:
    """All cases and shapes on ``device``; one row per (case, N, H)."""
    rows = []
    for case in CASES:
        for n in BATCH_SIZES:
            for h in HIDDEN_SIZES:
                row = measure(case, n, h, device, repeats, min_sample_s)
                log(
                    f"  {case:17s} N={n:<4d} H={h:<4d} custom {row['custom_us']:9.1f} us  "
                    f"autograd {row['autograd_us']:9.1f} us  ratio {row['ratio']:.2f}"
                )
                rows.append(row)
    return rows
