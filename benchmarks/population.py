r"""Section: K networks stepped together (``Population``) against one network at a time.

``[784, 30, 10]``, float32, mini-batches of 10 (random inputs and labels, the same batch every step), η = 0.001,
small enough that thousands of timed steps do not drive the sigmoids into saturation. Contenders, timed interleaved
(:func:`torch_manualbp.timing.interleaved`), one SGD step each:

* ``Network.sgd_step``: one network, the fused step with its checks and label encoding, as a user's loop calls it.
* ``update_mini_batch``: the same step without the checks (one-hot targets made once), the bare fused step.
* ``population K=1``, ``K=10``, ``K=30``: ``Population.sgd_step`` of K members on the mini-batch, checks included.

Per network-epoch is a step's time times the 5,000 mini-batches of the book's 50,000-example epoch, divided by the
members it trains. The goal (issue 19): a step of K = 10 members costs at most 3.0x one of K = 1. Run it with one
thread: at these sizes a second thread only waits for the first.

To run only this section::

    python -m benchmarks --only population --threads 1 [--quick]
"""

from __future__ import annotations

import torch

from torch_manualbp import Network
from torch_manualbp.network import update_mini_batch
from torch_manualbp.population import Population
from torch_manualbp.timing import interleaved, median, synchronizer

__all__ = ["run", "markdown", "MEMBERS"]

MEMBERS = (1, 10, 30)
SIZES, ETA, BATCH, STEPS_PER_EPOCH = [784, 30, 10], 0.001, 10, 5_000


def _contenders(device: torch.device) -> dict[str, tuple[int, object]]:
    """name -> (networks trained per call, one step)."""
    torch.manual_seed(0)
    x = torch.rand(BATCH, SIZES[0], device=device)
    labels = torch.randint(0, SIZES[-1], (BATCH,), device=device)
    net = Network(SIZES, init="normal", device=device)
    bare = Network(SIZES, init="normal", device=device)
    weights, biases = bare.weights_and_biases()
    one_hot = torch.nn.functional.one_hot(labels, SIZES[-1]).to(x.dtype)
    ones = torch.ones(BATCH, device=device)

    @torch.no_grad()
    def bare_step():
        return update_mini_batch(weights, biases, x, one_hot, ETA, ones)

    contenders = {
        "Network.sgd_step": (1, lambda: net.sgd_step(x, labels, ETA)),
        "update_mini_batch": (1, bare_step),
    }
    for k in MEMBERS:
        pop = Population([Network(SIZES, init="normal", device=device) for _ in range(k)])
        contenders[f"population K={k}"] = (k, lambda pop=pop: pop.sgd_step(x, labels, ETA))
    return contenders


def run(device: str, repeats: int, min_sample_s: float) -> list[dict]:
    """One row per contender: µs per step, seconds per network-epoch, and the ratios."""
    device = torch.device(device)
    contenders = _contenders(device)
    samples, _ = interleaved(
        {name: step for name, (_, step) in contenders.items()}, repeats, min_sample_s, sync=synchronizer(device)
    )
    step_s = {name: median(times) for name, times in samples.items()}
    one = step_s["population K=1"]
    per_network = {name: step_s[name] * STEPS_PER_EPOCH / k for name, (k, _) in contenders.items()}
    return [
        {
            "device": device.type,
            "contender": name,
            "members": k,
            "us_per_step": step_s[name] * 1e6,
            "s_per_network_epoch": per_network[name],
            "step_vs_population_k1": step_s[name] / one,
            "network_epoch_vs_sgd_step": per_network[name] / per_network["Network.sgd_step"],
        }
        for name, (k, _) in contenders.items()
    ]


def markdown(rows: list[dict]) -> str:
    """The section's table, for benchmark.md."""
    lines = [
        "| device | contender | networks | µs per step | step / K=1's | s per network-epoch "
        "| per network-epoch / Network.sgd_step's |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['contender']} | {r['members']} | {r['us_per_step']:,.1f} | "
            f"{r['step_vs_population_k1']:.2f} | {r['s_per_network_epoch']:.3f} | "
            f"{r['network_epoch_vs_sgd_step']:.2f} |"
        )
    return "\n".join(lines)
