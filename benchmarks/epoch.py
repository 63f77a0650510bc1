r"""Section 2: one training epoch of the book's chapter-1 configuration, eight ways, and the arithmetic floor.

``[784, 30, 10]``, η = 3.0, mini-batches of 10, the book's N(0, 1) initialisation, 50,000 training
examples (``--quick``: the first 2,000 of the same shuffled order). All contenders start from the same
weights and see the same mini-batches in the same order (the data module's seeded epoch-0 permutation):

* ``lightning, 1 per step``: ``ManualBPClassifier`` + ``MNISTDataModule`` under a ``lightning.Trainer`` (no
  logger, no checkpoints, no progress bar, ``limit_val_batches=0``, ``max_epochs=1``), one mini-batch of 10 per
  Lightning step, on the fused path (``Network.sgd_step``'s arithmetic, no autograd). Timed twice: the epoch
  alone (train epoch start to end, from a callback) and the whole ``trainer.fit`` call including the Trainer's
  construction and setup.
* ``lightning, 100 per step``: the same with ``mini_batch_size=10`` and batches of 1,000 from the same order,
  as ``experiments/nielsen_ch1.yaml`` ships: the same SGD updates, Lightning's per-step overhead paid once per 100.
* ``lightning, 100 per step, compiled``: the same with ``compile=True`` (10 steps per compiled call); compiled
  once before the timed epochs, so the compile time is not in the epoch (section 3 reports it).
* ``loop (sgd_step)``: ``Network.sgd_step`` in a plain Python loop: the fused step without Lightning.
* ``loop (Functions)``: the same network, cost and ``torch.optim.SGD`` in a plain Python loop over the
  same batch iterable; the difference to ``lightning`` is Lightning's per-step overhead.
* ``loop (autograd)``: a plain loop with ``F.linear`` + ``torch.sigmoid`` and the cost in plain ops
  (``reference.autograd_cost``); the difference to ``loop (Functions)`` is the custom Functions' cost in training.
* ``book (numpy)``: :class:`torch_manualbp.testing.reference.BookNetwork`, example by example in float64
  (CPU only).

Ratios are to ``loop (autograd)``, and the book's time is divided by each contender's (``x book``). The
``arithmetic floor`` row is no contender: the epoch's floating-point operations (forward, BP2, BP4, BP3 and the
update; about 1 MFLOP a step) at the matrix-multiply rate this machine reaches on one large ``torch.mm``,
measured in the same run. After each epoch the validation accuracy is computed (not timed) as a check that
every contender trained the same network the same way.

To run only this section::

    python -m benchmarks --only epoch [--quick]
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from torch_manualbp import Network
from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule
from torch_manualbp.lightning.datamodule import ShuffledBatches
from torch_manualbp.nn import QuadraticCost
from torch_manualbp.testing.reference import BookNetwork, autograd_cost
from torch_manualbp.testing.timing import alternating, median, synchronizer

__all__ = ["run"]

SIZES, ETA, BATCH_SIZE, SEED = [784, 30, 10], 3.0, 10, 0
BLOCK = 100  # mini-batches per Lightning step in the "blocks" contender


def _quiet_lightning() -> None:
    """Lightning prints its device summary at every fit and warns about the tiny runs used here."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(limit_val_batches|log_every_n_steps|num_workers).*")


class _EpochTimer:
    """A Lightning callback (built lazily so this module imports without touching Lightning's classes)."""

    @staticmethod
    def make(sync):
        import lightning as L

        class EpochTimer(L.Callback):
            def __init__(self):
                self.seconds = None

            def on_train_epoch_start(self, trainer, pl_module):
                sync()
                self._start = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module):
                sync()
                self.seconds = time.perf_counter() - self._start

        return EpochTimer()


class EpochBench:
    """The data, the shared initial weights and the four contenders for one device."""

    def __init__(self, data_dir: Path, examples: int, device: torch.device) -> None:
        self.device = device
        self.sync = synchronizer(device)
        self.steps = -(-examples // BATCH_SIZE)
        self.examples = examples
        self.datamodule = MNISTDataModule(str(data_dir), batch_size=BATCH_SIZE, seed=SEED)
        self.datamodule.setup("fit")
        # Batches of BLOCK × 10 from the same seeded order: split into 10s, exactly the mini-batches above.
        self.block_datamodule = MNISTDataModule(str(data_dir), batch_size=BATCH_SIZE * BLOCK, seed=SEED)
        self.block_datamodule.setup("fit")
        torch.manual_seed(SEED)
        self.initial = Network(SIZES, init="normal").state_dict()
        train = self.datamodule.splits["train"]
        self.train = tuple(t.to(device) for t in train)
        self.val = tuple(t.to(device) for t in self.datamodule.splits["val"])
        self._prepare_book(train)

    def _batches(self, labels: torch.Tensor | None = None) -> ShuffledBatches:
        """The data module's own epoch-0 batches (same class, seed and order as under the Trainer)."""
        x, y, l = self.train
        return ShuffledBatches(x, y, l if labels is None else labels, BATCH_SIZE, seed=SEED, epoch=0)

    def _prepare_book(self, train) -> None:
        """The book's data layout, untimed: a list of (784×1, 10×1) float64 columns per example, and the
        mini-batches' example indices, read off the data module's order by batching the indices themselves."""
        if self.device.type != "cpu":
            self.book_batches = None
            return
        x, y, _ = train
        index_batches = [idx for *_, idx in self._batches(torch.arange(len(x)))][: self.steps]
        used = torch.cat(index_batches)[: self.examples].tolist()
        x64, y64 = x.double().numpy(), y.double().numpy()
        self.book_data = {i: (x64[i].reshape(-1, 1).copy(), y64[i].reshape(-1, 1).copy()) for i in used}
        self.book_batches = [b.tolist() for b in index_batches]

    # -- contenders: each trains one epoch from the initial weights and returns (seconds, extra, network)

    def lightning(self):
        """One mini-batch of 10 per Lightning step."""
        return self._fit(ManualBPClassifier(sizes=SIZES, eta=ETA, init="normal"), self.datamodule, self.steps)

    def lightning_blocks(self, compile: bool = False):
        """The same updates in the same order, ``BLOCK`` mini-batches of 10 per Lightning step (the shipped config)."""
        model = ManualBPClassifier(sizes=SIZES, eta=ETA, init="normal", mini_batch_size=BATCH_SIZE, compile=compile)
        return self._fit(model, self.block_datamodule, -(-self.steps // BLOCK))

    def lightning_compiled(self):
        return self.lightning_blocks(compile=True)

    def warm_up_compiled(self, log=print) -> float:
        """Compile the fused block once (one Lightning batch), so that the timed epochs reuse it; its seconds."""
        import lightning as L

        model = ManualBPClassifier(sizes=SIZES, eta=ETA, init="normal", mini_batch_size=BATCH_SIZE, compile=True)
        start = time.perf_counter()
        L.Trainer(
            accelerator=self.device.type, devices=1, max_steps=BLOCK, limit_val_batches=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ).fit(model, datamodule=self.block_datamodule)  # fmt: skip
        seconds = time.perf_counter() - start
        log(f"  compiled the fused block (and ran {BLOCK} steps) in {seconds:.1f} s")
        return seconds

    def loop_sgd_step(self):
        """``Network.sgd_step`` over the same mini-batches: the fused step, no Lightning."""
        net = self._network()
        self.sync()
        start = time.perf_counter()
        for step, (x, y, _) in enumerate(self._batches()):
            if step == self.steps:
                break
            net.sgd_step(x, y, ETA)
        self.sync()
        return time.perf_counter() - start, {}, net

    def _fit(self, model: ManualBPClassifier, datamodule: MNISTDataModule, batches: int):
        import lightning as L

        model.network.load_state_dict(self.initial)
        timer = _EpochTimer.make(self.sync)
        start = time.perf_counter()
        trainer = L.Trainer(
            accelerator=self.device.type,
            devices=1,
            max_epochs=1,
            limit_train_batches=batches,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(model, datamodule=datamodule)
        self.sync()
        fit_seconds = time.perf_counter() - start
        return timer.seconds, {"fit_s": fit_seconds}, model.network

    def loop_functions(self):
        net = self._network()
        cost_fn = QuadraticCost()
        return self._sgd_loop(net, lambda x, y: cost_fn(net(x), y))

    def loop_autograd(self):
        net = self._network()  # only as a container for the weights
        params = list(net.parameters())
        return self._sgd_loop(net, lambda x, y: autograd_cost(params, x, y))

    def _network(self) -> Network:
        net = Network(SIZES, init="normal", device=self.device)
        net.load_state_dict(self.initial)
        return net

    def _sgd_loop(self, net: Network, cost):
        """``torch.optim.SGD`` over the epoch's mini-batches in a plain Python loop, timed."""
        optimizer = torch.optim.SGD(net.parameters(), lr=ETA)
        self.sync()
        start = time.perf_counter()
        for step, (x, y, _) in enumerate(self._batches()):
            if step == self.steps:
                break
            optimizer.zero_grad()
            cost(x, y).backward()
            optimizer.step()
        self.sync()
        return time.perf_counter() - start, {}, net

    def book(self):
        sd = self.initial
        weights = [sd[f"layers.{i}.weight"].double().numpy() for i in range(len(SIZES) - 1)]
        biases = [sd[f"layers.{i}.bias"].double().numpy() for i in range(len(SIZES) - 1)]
        net = BookNetwork(SIZES, weights=weights, biases=biases)
        start = time.perf_counter()
        # cutting the mini-batches from the shuffled data is part of the book's epoch too
        mini_batches = [[self.book_data[i] for i in batch] for batch in self.book_batches]
        net.train_epoch(mini_batches, ETA)
        return time.perf_counter() - start, {}, net

    def contenders(self) -> dict:
        found = {
            "lightning, 1 per step": self.lightning,
            f"lightning, {BLOCK} per step": self.lightning_blocks,
            f"lightning, {BLOCK} per step, compiled": self.lightning_compiled,
            "loop (sgd_step)": self.loop_sgd_step,
            "loop (Functions)": self.loop_functions,
            "loop (autograd)": self.loop_autograd,
        }
        if self.book_batches is not None:
            found["book (numpy)"] = self.book
        return found

    def val_accuracy(self, net) -> float:
        x, _, labels = self.val
        if isinstance(net, BookNetwork):
            a = x.double().cpu().numpy()
            for w, b in zip(net.weights, net.biases):  # all 10,000 columns at once: this is only a check
                a = 1.0 / (1.0 + np.exp(-(a @ w.T + b.T)))
            return float((a.argmax(1) == labels.cpu().numpy()).mean())
        with torch.no_grad():
            return float((net(x).argmax(1) == labels).float().mean())


def run(data_dir: Path, examples: int, repeats: int, device, log=print) -> list[dict]:
    """Each contender trains ``repeats`` epochs from the same start, in alternating order; one row each."""
    _quiet_lightning()
    bench = EpochBench(data_dir, examples, torch.device(device))
    compile_s = bench.warm_up_compiled(log)
    contenders = bench.contenders()
    seconds = {name: [] for name in contenders}
    extra = {name: [] for name in contenders}
    accuracy = {}
    names = list(contenders)
    for repeat, name in alternating(names, repeats):  # each contender times its own epoch
        s, more, net = contenders[name]()
        seconds[name].append(s)
        extra[name].append(more)
        accuracy[name] = bench.val_accuracy(net)
        log(f"  {name:17s} repeat {repeat}: {s:7.3f} s  val accuracy {accuracy[name]:.4f}")
    reference = median(seconds["loop (autograd)"])
    book = median(seconds["book (numpy)"]) if "book (numpy)" in seconds else None
    rows = []
    for name in names:
        epoch_s = median(seconds[name])
        row = {
            "contender": name,
            "device": str(device),
            "examples": examples,
            "steps": bench.steps,
            "epoch_s": epoch_s,
            "us_per_step": epoch_s / bench.steps * 1e6,
            "ratio": epoch_s / reference,
            "x_book": book / epoch_s if book else None,
            "val_accuracy": accuracy[name],
            "samples_s": seconds[name],
        }
        if name.startswith("lightning"):
            row["fit_s"] = median([m["fit_s"] for m in extra[name]])
        if name.endswith("compiled"):
            row["compile_s"] = compile_s
        rows.append(row)
    floor_s = _epoch_flops(bench.steps) / _gemm_flops_per_s(bench.device, bench.sync)
    rows.append({
        "contender": "arithmetic floor", "device": str(device), "examples": examples, "steps": bench.steps,
        "epoch_s": floor_s, "us_per_step": floor_s / bench.steps * 1e6, "ratio": floor_s / reference,
        "x_book": book / floor_s if book else None, "val_accuracy": None, "samples_s": [],
    })  # fmt: skip
    return rows


def _epoch_flops(steps: int) -> float:
    """Multiply-adds x 2 of one epoch of fused steps: forward, BP2, BP4, BP3 (as a product) and the update."""
    pairs = list(zip(SIZES[:-1], SIZES[1:]))
    forward = sum(2 * BATCH_SIZE * n_in * n_out for n_in, n_out in pairs)
    bp2 = sum(2 * BATCH_SIZE * n_in * n_out for n_in, n_out in pairs[1:])
    bp3_bp4 = sum(2 * BATCH_SIZE * (n_in + 1) * n_out for n_in, n_out in pairs)
    return steps * (forward + bp2 + bp3_bp4)


def _gemm_flops_per_s(device: torch.device, sync) -> float:
    """The rate of one large float32 matrix product on ``device``, best of 5: an optimistic bound for small ones."""
    a = torch.rand(1024, 1024, device=device)
    b = torch.rand(1024, 1024, device=device)
    best = float("inf")
    for _ in range(5):
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / best
