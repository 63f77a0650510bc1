r"""Section ``peers``: one epoch of the book's run by the package and by what a user could pick instead.

``[784, 30, 10]``, η = 3, mini-batches of 10, the book's N(0, 1) initialisation, the first 50,000 MNIST training
images in one seeded shuffled order (``--quick``: the first 2,000 of that order), float32 except the book's float64.
Contenders, all from the same initial weights and on the same mini-batches, timed in one interleaved run
(:func:`torch_manualbp.testing.timing.interleaved`, one epoch a call; each call starts again from the initial weights):

* ``book (numpy)``: :class:`torch_manualbp.testing.reference.BookNetwork`, the book's algorithm, example by example.
* ``autograd + torch.optim.SGD``: :func:`torch_manualbp.testing.reference.autograd_cost` (plain ops), ``backward`` and
  ``torch.optim.SGD`` in a Python loop.
* ``Network.sgd_step``: the package's public step in a user's loop, over integer labels.
* ``bare fused step``: the in-place fused step written here as eager torch ops in a Python loop, no package code
  (forward, BP1, BP2, and BP3/BP4 added into the parameters by ``addmv_``/``addmm_``): what ``sgd_step`` costs
  without its checks and label conversion.
* ``MiniBatchSGD eager`` and ``MiniBatchSGD native``: the package's training engine
  (:class:`torch_manualbp.sgd.MiniBatchSGD`) over the epoch's examples as one block, one Python call of the fused
  step per mini-batch, or the whole block in one call of the native op (``torch.ops.manualbp.sgd_block``, a C++ loop
  of the same equations that calls no ATen op on the CPU: its products go straight to MKL's ``sgemm_`` or, forward
  in float32 on an AVX2 CPU, to a kernel of its own; built before timing). The native one is skipped, saying why,
  where it cannot be built.
* ``JAX jit(scan)``: ``jax.jit`` of ``jax.lax.scan`` over the epoch's mini-batches, ``jax.grad`` of the same mean
  quadratic cost of the same sigmoid network, plain SGD: a user's ten-line JAX script. XLA's CPU thread pool is its
  own (``OMP_NUM_THREADS`` does not set it). Skipped, saying why, when JAX is absent
  (``pip install -c constraints.txt -e ".[bench]"``).

Ratios: ``x book`` is the book's time over the contender's; ``x JAX`` the contender's over JAX's (above 1: slower).
The ``manualbp fit`` epoch is section ``cli`` (:mod:`benchmarks.cli_epoch`): a process per run, so it is timed
there, against the book in its own interleaved rounds. The validation accuracy after the epoch (untimed) shows
that every contender trained the same network the same way.

To run only this section::

    python -m benchmarks --only peers [--quick]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torch_manualbp import Network
from torch_manualbp.mnist import load_mnist
from torch_manualbp.sgd import MiniBatchSGD, build_native
from torch_manualbp.testing.reference import BookNetwork, autograd_cost
from torch_manualbp.testing.timing import interleaved, median

__all__ = ["run", "jax_epoch"]

SIZES, ETA, MINI_BATCH, SEED = [784, 30, 10], 3.0, 10, 0
TRAIN, VALIDATION = 50_000, 10_000  # the book's split of MNIST's training images


class PeerEpochs:
    """The data in each contender's layout (untimed), the shared initial weights, and one epoch per contender."""

    def __init__(self, data_dir: Path, examples: int) -> None:
        mnist = load_mnist(data_dir)
        images = mnist["train_images"].reshape(-1, SIZES[0]).float() / 255
        labels = mnist["train_labels"]
        order = torch.randperm(TRAIN, generator=torch.Generator().manual_seed(SEED))[:examples]
        self.steps = examples // MINI_BATCH
        used = order[: self.steps * MINI_BATCH]
        self.xs = images[used].reshape(self.steps, MINI_BATCH, SIZES[0])  # (steps, 10, 784)
        self.labels = labels[used].reshape(self.steps, MINI_BATCH)  # (steps, 10) integers
        self.ys = F.one_hot(self.labels, SIZES[-1]).float()  # (steps, 10, 10)
        self.val_x, self.val_labels = images[TRAIN : TRAIN + VALIDATION], labels[TRAIN : TRAIN + VALIDATION]
        torch.manual_seed(SEED)
        self.initial = Network(SIZES, init="normal")
        x64, y64 = self.xs.double().numpy(), self.ys.double().numpy()
        self.book_batches = [[(x.reshape(-1, 1), y.reshape(-1, 1)) for x, y in zip(xb, yb)] for xb, yb in zip(x64, y64)]
        self.trained: dict[str, list] = {}  # contender -> [W¹, b¹, W², b²] after its last epoch

    def _parameters(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.initial.parameters()]

    def book(self) -> None:
        params = [p.double().numpy() for p in self._parameters()]
        net = BookNetwork(SIZES, weights=params[0::2], biases=params[1::2])
        net.train_epoch(self.book_batches, ETA)
        self.trained["book (numpy)"] = [p for w, b in zip(net.weights, net.biases) for p in (w, b.reshape(-1))]

    def autograd_sgd(self) -> None:
        params = [p.requires_grad_() for p in self._parameters()]
        optimizer = torch.optim.SGD(params, lr=ETA)
        for x, y in zip(self.xs, self.ys):
            optimizer.zero_grad()
            autograd_cost(params, x, y).backward()
            optimizer.step()
        self.trained["autograd + torch.optim.SGD"] = params

    def sgd_step(self) -> None:
        net = Network(SIZES, init="normal")
        net.load_state_dict(self.initial.state_dict())
        for x, labels in zip(self.xs, self.labels):
            net.sgd_step(x, labels, ETA)
        self.trained["Network.sgd_step"] = list(net.parameters())

    @torch.no_grad()
    def bare_fused(self) -> None:
        params = self._parameters()
        weights, biases = params[0::2], params[1::2]
        ones, step = torch.ones(MINI_BATCH), ETA / MINI_BATCH
        for x, y in zip(self.xs, self.ys):
            activations = [x]
            for w, b in zip(weights, biases):
                activations.append(torch.addmm(b, activations[-1], w.T).sigmoid_())  # aˡ = σ(aˡ⁻¹ Wˡᵀ + bˡ)
            a = activations[-1]
            delta = torch.ops.aten.sigmoid_backward(a - y, a)  # (BP1) δᴸ = (aᴸ − y) ⊙ σ'(zᴸ)
            for l in range(len(weights) - 1, -1, -1):
                # (BP2) δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ'(zˡ), with Wˡ⁺¹ before its update below
                below = torch.ops.aten.sigmoid_backward(delta @ weights[l], activations[l]) if l else None
                weights[l].addmm_(delta.T, activations[l], alpha=-step)  # (BP4) W −= η/m δᵀ aˡ⁻¹
                biases[l].addmv_(delta.T, ones, alpha=-step)  # (BP3) b −= η/m Σ_x δ_x
                delta = below
        self.trained["bare fused step"] = params

    def engine(self, backend: str):
        """One epoch of :class:`MiniBatchSGD` with ``backend``: a function of no arguments."""
        x, labels = self.xs.reshape(-1, SIZES[0]), self.labels.reshape(-1)
        name = f"MiniBatchSGD {backend}"

        def call() -> None:
            net = Network(SIZES, init="normal")
            net.load_state_dict(self.initial.state_dict())
            MiniBatchSGD(net, MINI_BATCH, backend=backend).run(x, labels, ETA)
            self.trained[name] = list(net.parameters())

        return call

    def val_accuracy(self, name: str) -> float:
        with torch.no_grad():
            params = [
                p.detach().float() if isinstance(p, torch.Tensor) else torch.from_numpy(np.array(p, np.float32))
                for p in self.trained[name]
            ]  # numpy arrays (the book's) and JAX's arrays, copied
            a = self.val_x
            for w, b in zip(params[0::2], params[1::2]):
                a = torch.sigmoid(a @ w.T + b)
            return float((a.argmax(1) == self.val_labels).float().mean())


def jax_epoch(bench: PeerEpochs):
    """One epoch as ``jax.jit`` of ``lax.scan`` over the mini-batches: a function of no arguments, or the reason JAX
    cannot run (a string)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as error:
        return f'JAX is not installed ({error}); pip install -c constraints.txt -e ".[bench]"'

    def cost(params, x, y):  # the mean quadratic cost of the sigmoid network, C = 1/(2m) Σ_x ‖y − aᴸ‖²
        a = x
        for w, b in params:
            a = jax.nn.sigmoid(a @ w.T + b)
        return 0.5 * jnp.sum((a - y) ** 2) / x.shape[0]

    def sgd(params, batch):
        grads = jax.grad(cost)(params, *batch)
        return jax.tree.map(lambda p, g: p - ETA * g, params, grads), None

    epoch = jax.jit(lambda params, xs, ys: jax.lax.scan(sgd, params, (xs, ys))[0])
    initial = [p.numpy() for p in bench._parameters()]
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in zip(initial[0::2], initial[1::2])]
    xs, ys = jnp.asarray(bench.xs.numpy()), jnp.asarray(bench.ys.numpy())

    def call() -> None:
        trained = jax.block_until_ready(epoch(params, xs, ys))
        bench.trained["JAX jit(scan)"] = [p for pair in trained for p in pair]

    return call


def run(data_dir: Path, examples: int, repeats: int, log=print) -> dict:
    """Every contender's epoch, interleaved; one row each, with the ratios to the book and to JAX."""
    bench = PeerEpochs(data_dir, examples)
    contenders = {
        "book (numpy)": bench.book,
        "autograd + torch.optim.SGD": bench.autograd_sgd,
        "Network.sgd_step": bench.sgd_step,
        "bare fused step": bench.bare_fused,
    }
    contenders["MiniBatchSGD eager"] = bench.engine("eager")
    native_failure = build_native()
    if native_failure is None:
        contenders["MiniBatchSGD native"] = bench.engine("native")
    jax_call = jax_epoch(bench)
    skipped = jax_call if isinstance(jax_call, str) else None
    if skipped is None:
        contenders["JAX jit(scan)"] = jax_call  # its first call, the warm-up, compiles
    log(
        f"  {bench.steps * MINI_BATCH:,} examples, {len(contenders)} contenders, {repeats} epochs each"
        + (f"; JAX skipped: {skipped}" if skipped else "")
        + (f"; native skipped: {native_failure}" if native_failure else "")
    )
    samples, _ = interleaved(contenders, repeats, warmup=1, calls={name: 1 for name in contenders})
    seconds = {name: median(s) for name, s in samples.items()}
    book, jax_s = seconds["book (numpy)"], seconds.get("JAX jit(scan)")
    rows = []
    for name, s in seconds.items():
        rows.append(
            {
                "contender": name,
                "examples": bench.steps * MINI_BATCH,
                "steps": bench.steps,
                "epoch_s": s,
                "us_per_step": s / bench.steps * 1e6,
                "x_book": book / s,
                "x_jax": s / jax_s if jax_s else None,
                "val_accuracy": bench.val_accuracy(name),
                "samples_s": samples[name],
            }
        )
        log(
            f"  {name:27s} {s:7.3f} s/epoch  x book {book / s:5.1f}"
            + (f"  x JAX {s / jax_s:5.2f}" if jax_s else "")
            + f"  val accuracy {rows[-1]['val_accuracy']:.4f}"
        )
    return {"rows": rows, "jax_skipped": skipped, "native_skipped": native_failure, "jax_version": _jax_version()}


def _jax_version() -> str | None:
    try:
        import jax
    except ImportError:
        return None
    return jax.__version__
