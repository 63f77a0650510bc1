r"""Section: K networks stepped together (``Population``) against one network at a time, and against JAX.

``[784, 30, 10]``, float32, mini-batches of 10 (random inputs and labels, the same batch every step), η = 0.001,
small enough that thousands of timed steps do not drive the sigmoids into saturation. Contenders, timed interleaved
(:func:`torch_manualbp.testing.timing.interleaved`), one SGD step each:

* ``Network.sgd_step``: one network, the fused step with its checks and label encoding, as a user's loop calls it.
* ``update_mini_batch``: the same step without the checks (one-hot targets made once), the bare fused step.
* ``population K=1``, ``K=10``, ``K=30``: ``Population.sgd_step`` of K members on the mini-batch, checks included.
* ``population K=10, block``: ``Population.sgd_steps`` over a block of 100 mini-batches (one-hot targets, checked
  once, the costs computed once after the block), what the engine calls for a population's block where the
  native op does not serve; a call's time over its 100 steps.
* ``engine: network``, ``engine: population K=1``, ``engine: population K=10``: :class:`~torch_manualbp.MiniBatchSGD`
  (``backend="auto"``: the native op where it is built) over a block of 100 mini-batches of a Network, of a
  population of one and of ten; the issue-25 goals: K = 10's per network-epoch at most 0.5x the network's through
  the engine, a population of one at most 1.1x it (column "/ engine's").
* ``JAX jit(scan)``: one network, ``jax.jit`` of ``lax.scan`` over 100 mini-batches, the same script as section
  ``peers`` (:func:`benchmarks.peers.jax_epoch`, its η); a call's time over its 100 steps. Skipped, saying why, when
  JAX is absent. XLA's CPU thread pool is its own: ``--threads`` does not bind it.

Per network-epoch is a step's time times the 5,000 mini-batches of the book's 50,000-example epoch, divided by the
members it trains. The goals (issue 19): a step of K = 10 members costs at most 3.0x one of K = 1, and K = 10's
per network-epoch at most JAX's epoch of one network. Run it with one thread: at these sizes a second thread only
waits for the first.

To run only this section::

    python -m benchmarks --only population --threads 1 [--quick]
"""

from __future__ import annotations

import torch

from torch_manualbp import MiniBatchSGD, Network
from torch_manualbp.network import update_mini_batch
from torch_manualbp.population import Population
from torch_manualbp.testing.timing import interleaved, median, synchronizer

from .peers import jax_epoch

__all__ = ["run", "markdown", "MEMBERS"]

MEMBERS = (1, 10, 30)
SIZES, ETA, BATCH, STEPS_PER_EPOCH = [784, 30, 10], 0.001, 10, 5_000
BLOCK = 100  # mini-batches per call of the block contenders: a Lightning batch of 1,000 examples
JAX = "JAX jit(scan)"
ENGINE = "engine: network"


class _JaxSteps:
    """What :func:`benchmarks.peers.jax_epoch` reads of its bench: BLOCK mini-batches, initial weights, a record."""

    def __init__(self, x: torch.Tensor, one_hot: torch.Tensor) -> None:
        self.xs, self.ys = x.expand(BLOCK, *x.shape), one_hot.expand(BLOCK, *one_hot.shape)
        self.initial = Network(SIZES, init="normal")
        self.trained: dict[str, list] = {}

    def _parameters(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.initial.parameters()]


def _contenders(device: torch.device) -> tuple[dict[str, tuple[int, int, object]], str | None]:
    """name -> (networks trained per step, steps per call, one call), and why JAX was skipped (or None)."""
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
        "Network.sgd_step": (1, 1, lambda: net.sgd_step(x, labels, ETA)),
        "update_mini_batch": (1, 1, bare_step),
    }
    for k in MEMBERS:
        pop = Population([Network(SIZES, init="normal", device=device) for _ in range(k)])
        contenders[f"population K={k}"] = (k, 1, lambda pop=pop: pop.sgd_step(x, labels, ETA))
    block = Population([Network(SIZES, init="normal", device=device) for _ in range(10)])
    xs, ys = x.repeat(BLOCK, 1), one_hot.repeat(BLOCK, 1)
    contenders["population K=10, block"] = (10, BLOCK, lambda: block.sgd_steps(xs, ys, ETA, mini_batch_size=BATCH))
    for name, k, model in [
        (ENGINE, 1, Network(SIZES, init="normal", device=device)),
        ("engine: population K=1", 1, Population([Network(SIZES, init="normal", device=device)])),
        ("engine: population K=10", 10, Population([Network(SIZES, init="normal", device=device) for _ in range(10)])),
    ]:
        engine = MiniBatchSGD(model, BATCH, backend="auto")

        def engine_block(engine=engine):
            costs = engine.run(xs, ys, ETA)
            engine.forget()  # what rewind keeps: a training loop forgets it once a block is checked
            return costs

        contenders[name] = (k, BLOCK, engine_block)
    jax_call = jax_epoch(_JaxSteps(x.cpu(), one_hot.cpu())) if device.type == "cpu" else "not timed on CUDA"
    if isinstance(jax_call, str):
        return contenders, jax_call
    contenders[JAX] = (1, BLOCK, jax_call)  # its first call, a warm-up, compiles
    return contenders, None


def run(device: str, repeats: int, min_sample_s: float) -> list[dict]:
    """One row per contender: µs per step, seconds per network-epoch, and the ratios; a row saying why JAX was
    skipped if it was."""
    device = torch.device(device)
    contenders, jax_skipped = _contenders(device)
    samples, _ = interleaved(
        {name: call for name, (_, _, call) in contenders.items()}, repeats, min_sample_s, sync=synchronizer(device)
    )
    step_s = {name: median(samples[name]) / steps for name, (_, steps, _) in contenders.items()}
    one = step_s["population K=1"]
    per_network = {name: step_s[name] * STEPS_PER_EPOCH / k for name, (k, _, _) in contenders.items()}
    jax_s = per_network.get(JAX)
    rows = [
        {
            "device": device.type,
            "contender": name,
            "members": k,
            "us_per_step": step_s[name] * 1e6,
            "s_per_network_epoch": per_network[name],
            "step_vs_population_k1": step_s[name] / one,
            "network_epoch_vs_sgd_step": per_network[name] / per_network["Network.sgd_step"],
            "network_epoch_vs_engine": per_network[name] / per_network[ENGINE],
            "network_epoch_vs_jax": per_network[name] / jax_s if jax_s else None,
        }
        for name, (k, _, _) in contenders.items()
    ]
    if jax_skipped:
        rows.append({"device": device.type, "contender": JAX, "skipped": jax_skipped})
    return rows


def markdown(rows: list[dict]) -> str:
    """The section's table, for benchmark.md."""
    lines = [
        "| device | contender | networks | µs per step | step / K=1's | s per network-epoch "
        "| per network-epoch / Network.sgd_step's | / engine's | per network-epoch / JAX's |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['device']} | {r['contender']} | skipped: {r['skipped']} | | | | | | |")
            continue
        versus_jax = f"{r['network_epoch_vs_jax']:.2f}" if r.get("network_epoch_vs_jax") else "—"
        lines.append(
            f"| {r['device']} | {r['contender']} | {r['members']} | {r['us_per_step']:,.1f} | "
            f"{r['step_vs_population_k1']:.2f} | {r['s_per_network_epoch']:.3f} | "
            f"{r['network_epoch_vs_sgd_step']:.2f} | {r['network_epoch_vs_engine']:.2f} | {versus_jax} |"
        )
    return "\n".join(lines)
