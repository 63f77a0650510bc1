r"""Section ``book``: one epoch of the book's chapter-1 session, ``torch_manualbp.book.network.Network.SGD``, beside
the book's own algorithm.

``[784, 30, 10]``, η = 3, mini-batches of 10, float64 as the book computes, the book's data as
:func:`torch_manualbp.book.mnist_loader.load_data_wrapper` gives it (the first 50,000 training pairs; ``--quick``: the
first 2,000), the same initial weights (``np.random.seed(0)``) and the same order (``random.seed(0)``, then the book's
``random.shuffle`` of the list) for both. Contenders, timed in one interleaved run
(:func:`torch_manualbp.testing.timing.interleaved`, one epoch a call, each from the initial weights):

* ``book (numpy)``: :class:`torch_manualbp.testing.reference.BookNetwork`, the book's ``network.py`` algorithm
  example by example (its ``update_mini_batch`` and ``backprop``), on mini-batches cut from the shuffled list.
* ``book.network.SGD``: the same call as the book's session, ``net.SGD(training_data, 1, 10, 3.0)``, which copies
  each chunk of the shuffled examples into rows and steps them by :class:`torch_manualbp.MiniBatchSGD` (the native
  loop where it builds); its ``Epoch 0 complete`` line is not shown.

Ratio: ``x book`` is the book's time over the contender's. Untimed, after the epoch: each contender's count on the
10,000 validation images (by the book's per-example ``evaluate``), and the largest difference between the two
contenders' parameters. Each step is the book's to rounding (1e-14 after the first 2,000 examples), but at η = 3
rounding differences grow through the epoch: two runs of the book's own code whose initial weights differ by one part
in 10^15 end this epoch about 0.4 apart (measured on this seed), as the two contenders do. The validation counts show
that both trained an equally good network.

To run only this section::

    python -m benchmarks --only book [--quick]
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np

from torch_manualbp.book import mnist_loader, network
from torch_manualbp.testing.reference import BookNetwork
from torch_manualbp.testing.timing import interleaved, median

__all__ = ["run", "markdown"]

SIZES, ETA, MINI_BATCH, SEED = [784, 30, 10], 3.0, 10, 0


def run(data_dir: Path, examples: int, repeats: int, log=print) -> dict:
    """Both contenders' epoch, interleaved; one row each, with the ratio to the book."""
    training_data, validation_data, _ = mnist_loader.load_data_wrapper(data_dir)
    training_data = training_data[:examples]
    np.random.seed(SEED)
    initial = network.Network(SIZES)
    weights, biases = initial.weights, initial.biases
    trained: dict[str, list[np.ndarray]] = {}

    def book() -> None:
        random.seed(SEED)
        data = list(training_data)
        random.shuffle(data)
        net = BookNetwork(SIZES, weights=weights, biases=biases)
        net.train_epoch([data[k : k + MINI_BATCH] for k in range(0, len(data), MINI_BATCH)], ETA)
        trained["book (numpy)"] = [*net.weights, *net.biases]

    def book_network_sgd() -> None:
        random.seed(SEED)
        net = network.Network(SIZES)  # its own draws replaced by the shared initial weights
        net.weights, net.biases = [w.copy() for w in weights], [b.copy() for b in biases]
        with contextlib.redirect_stdout(io.StringIO()):  # "Epoch 0 complete"
            net.SGD(list(training_data), 1, MINI_BATCH, ETA)
        trained["book.network.SGD"] = [*net.weights, *net.biases]

    contenders = {"book (numpy)": book, "book.network.SGD": book_network_sgd}
    log(f"  {len(training_data):,} examples, {len(contenders)} contenders, {repeats} epochs each")
    samples, _ = interleaved(contenders, repeats, warmup=1, calls={name: 1 for name in contenders})
    seconds = {name: median(s) for name, s in samples.items()}
    difference = max(float(np.abs(a - b).max()) for a, b in zip(*trained.values()))
    layers = len(SIZES) - 1
    correct = {
        name: BookNetwork(SIZES, weights=p[:layers], biases=p[layers:]).evaluate(validation_data)
        for name, p in trained.items()
    }
    rows = []
    for name, s in seconds.items():
        rows.append(
            {
                "contender": name,
                "examples": len(training_data),
                "epoch_s": s,
                "x_book": seconds["book (numpy)"] / s,
                "validation_correct": correct[name],
                "samples_s": samples[name],
            }
        )
        log(f"  {name:18s} {s:7.3f} s/epoch  x book {rows[-1]['x_book']:5.1f}  validation {correct[name]} / 10000")
    log(f"  max |Δ parameter| between them after the epoch: {difference:.1e}")
    return {"rows": rows, "max_parameter_difference": difference}


def markdown(section: dict) -> str:
    """The section as a markdown table."""
    lines = [
        "| contender | examples | s / epoch | x book | validation correct |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[
            f"| {r['contender']} | {r['examples']:,} | {r['epoch_s']:.3f} | {r['x_book']:.1f} "
            f"| {r['validation_correct']} |"
            for r in section["rows"]
        ],
    ]
    return "\n".join(lines) + (
        f"\n\nLargest parameter difference after the epoch: {section['max_parameter_difference']:.1e} (rounding "
        "differences grown through the epoch, as between two runs of the book's own code: see its docstring)."
    )
