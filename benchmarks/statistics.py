r"""Section 4: what per-example gradient statistics cost on top of a training step.

``[784, 30, 10]``, the book's N(0, 1) initialisation, random inputs and labels, mini-batches N of 10, 100 and
1,000. Six contenders per N, timed interleaved (:func:`benchmarks.timing.interleaved`), each a whole SGD step:

* ``backprop step``: ``Network.backprop`` (BP1-BP4 in matrix form, no autograd), then ``p -= η ∂C/∂p``.
* ``statistics + step``: ``observe.gradient_statistics`` (the same pass plus the per-example products), then the
  same update with its mean gradient, which is ∂C/∂p: statistics and step from one pass. Goal: ≤ 1.5x the above.
* ``autograd step``: the training path, ``Network.cost(x, y).backward()`` then ``torch.optim.SGD.step()``.
* ``recorded + statistics``: the same inside ``record_errors()``, then ``ErrorRecord.gradient_statistics``.
* ``Network.sgd_step``: the public fused step, integer labels, every check, as in a user's loop; and
  ``update_mini_batch``: the same step's arithmetic bare, its one-hot targets made once, on detached aliases of
  the parameters (no grad-mode switch)
  (issue 18: the first at most 1.3x the second, its per-call tax of checks and label encoding).

η is 0.001, small enough that thousands of timed steps on random labels do not drive the sigmoids into
saturation (where denormal floats could slow the CPU and distort the comparison).

Memory: the peak bytes that tensors created during one call hold at the same time (the network, the batch and
anything alive before the call do not count), for the backprop step and for ``gradient_statistics``. It is
measured by :class:`PeakNewBytes` on the CPU and by ``torch.cuda.max_memory_allocated`` on CUDA. Beside it
its result (mean, sum of squares and variance of every parameter, and the (N, L) norms: O(parameters) and not
transient), and two bounds: :math:`N \sum_l H_l` floats (the issue's goal, the input layer included, since
:math:`(a^0)^2` is formed) and N copies of all parameters (what per-example gradients done naively would hold).

To run only this section::

    python -m benchmarks --only statistics [--quick]
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from torch_manualbp import Network
from torch_manualbp.checks import targets
from torch_manualbp.network import update_mini_batch
from torch_manualbp.observe import gradient_statistics, record_errors
from torch_manualbp.testing.timing import interleaved, median, synchronizer

__all__ = ["run", "markdown", "PeakNewBytes", "BATCH_SIZES"]

BATCH_SIZES = (10, 100, 1000)
SIZES, ETA = [784, 30, 10], 0.001


class PeakNewBytes(TorchDispatchMode):
    """The largest number of bytes held at once by storages that aten ops allocate while the mode is active.

    A storage counts from the op that returns it until the last tensor the op returned on it is freed; an
    output that shares an input's storage (a view, an in-place op) is not new memory and does not count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage data_ptr -> [bytes, tensors returned on it still alive]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            key = t.untyped_storage().data_ptr()
            if key in inputs or t.untyped_storage().nbytes() == 0:
                continue
            if key not in self._live:
                self._live[key] = [t.untyped_storage().nbytes(), 0]
                self.now += self._live[key][0]
                self.peak = max(self.peak, self.now)
            self._live[key][1] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self._live[key]


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


def _peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of the memory ``fn`` allocates, its result included while it is alive."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()  # noqa: F841 (kept alive until the peak is read)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with PeakNewBytes() as mode:
        result = fn()  # noqa: F841
    return mode.peak


def _contenders(net: Network, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=ETA)

    @torch.no_grad()
    def sgd(grads) -> None:
        for p, g in zip(params, grads):
            p.sub_(g, alpha=ETA)  # w → w − η ∂C/∂w

    def backprop_step():
        result = net.backprop(x, y)
        sgd([g for pair in zip(result.nabla_w, result.nabla_b) for g in pair])

    def statistics_step():
        stats = gradient_statistics(net, x, y)
        sgd([p.mean for layer in stats.layers for p in (layer.weight, layer.bias)])  # ḡ = ∂C/∂p
        return stats

    def autograd_step():
        for p in params:
            p.grad = None
        net.cost(x, y).backward()
        optimizer.step()

    def recorded_step():
        for p in params:
            p.grad = None
        with record_errors() as record:
            net.cost(x, y).backward()
        optimizer.step()
        return record.gradient_statistics(net)

    def sgd_step():
        net.sgd_step(x, y, ETA)

    # detached aliases of the parameters: stepped in place with no grad-mode switch at all, the cheapest bare step
    weights, biases = ([p.detach() for p in ps] for ps in net.weights_and_biases())
    one_hot, ones = targets(y, (len(x), SIZES[-1]), x), torch.ones(len(x), device=x.device)

    def bare_step():
        update_mini_batch(weights, biases, x, one_hot, ETA, ones, net.cost_function)

    return {
        "backprop step": backprop_step,
        "statistics + step": statistics_step,
        "autograd step": autograd_step,
        "recorded + statistics": recorded_step,
        "Network.sgd_step": sgd_step,
        "update_mini_batch": bare_step,
    }


def run(device: str, repeats: int, min_sample_s: float) -> list[dict]:
    """One row per mini-batch size: µs per call of each contender, the two ratios, and the memory figures."""
    device = torch.device(device)
    rows = []
    for n in BATCH_SIZES:
        torch.manual_seed(0)
        net = Network(SIZES, init="normal", device=device)
        x = torch.rand(n, SIZES[0], device=device)
        y = torch.randint(0, SIZES[-1], (n,), device=device)
        contenders = _contenders(net, x, y)
        samples, _ = interleaved(contenders, repeats, min_sample_s, sync=synchronizer(device))
        us = {name: median(times) * 1e6 for name, times in samples.items()}
        itemsize = x.element_size()
        rows.append(
            {
                "device": device.type,
                "batch": n,
                "us": us,
                "ratio_backprop": us["statistics + step"] / us["backprop step"],
                "ratio_autograd": us["recorded + statistics"] / us["autograd step"],
                "ratio_sgd_step": us["Network.sgd_step"] / us["update_mini_batch"],
                "peak_backprop_bytes": _peak_bytes(lambda net=net, x=x, y=y: net.backprop(x, y), device),
                "peak_statistics_bytes": _peak_bytes(lambda net=net, x=x, y=y: gradient_statistics(net, x, y), device),
                "result_bytes": 3 * sum(p.numel() for p in net.parameters()) * itemsize
                + n * len(net.layers) * itemsize,
                "n_sum_h_bytes": n * sum(SIZES) * itemsize,
                "n_copies_of_params_bytes": n * sum(p.numel() for p in net.parameters()) * itemsize,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The section's table, for benchmark.md."""
    lines = [
        "| device | N | backprop step µs | statistics + step µs | ratio | autograd step µs "
        "| recorded + statistics µs | ratio | peak KiB, backprop | peak KiB, statistics (its result) "
        "| N·ΣH floats, KiB | N copies of the parameters, KiB | Network.sgd_step µs | update_mini_batch µs | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        us = r["us"]
        lines.append(
            f"| {r['device']} | {r['batch']:,} | {us['backprop step']:,.1f} | {us['statistics + step']:,.1f} | "
            f"{r['ratio_backprop']:.2f} | {us['autograd step']:,.1f} | {us['recorded + statistics']:,.1f} | "
            f"{r['ratio_autograd']:.2f} | {r['peak_backprop_bytes'] / 1024:,.1f} | "
            f"{r['peak_statistics_bytes'] / 1024:,.1f} ({r['result_bytes'] / 1024:,.1f}) | "
            f"{r['n_sum_h_bytes'] / 1024:,.1f} | "
            f"{r['n_copies_of_params_bytes'] / 1024:,.1f} | {us['Network.sgd_step']:,.1f} | "
            f"{us['update_mini_batch']:,.1f} | {r['ratio_sgd_step']:.2f} |"
        )
    return "\n".join(lines)
