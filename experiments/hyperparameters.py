r"""Chapter 3's hyper-parameter figures as populations: λ, the weight initialisation and the mini-batch size.

Each figure is one command; its members train together as one :class:`~torch_manualbp.Population` (one
``Population.sgd_steps`` call an epoch: the book's ``update_mini_batch``, BP1-BP4 by hand, no autograd, no Lightning)
and are evaluated together (one feedforward of every member), beside the book's numbers where it gives them:

* ``lmbda``: the book's regularisation runs on the full training set (its ``fig/overfitting.py``, results
  ``fig/overfitting_full.json`` for λ = 0 and ``fig/regularized_full.json`` for λ = 5.0): ``[784, 30, 10]``,
  cross-entropy, N(0, 1) weights (``large_weight_initializer``), η = 0.5, mini-batches of 10, the test accuracy after
  every epoch. Members λ = 0, 1 and 5 (the book's advice: start at λ = 0, then 1.0, then by factors of 10).
* ``init``: "Weight initialization" (its ``fig/weight_initialization.py``, results
  ``fig/weight_initialization_30.json``): ``[784, 30, 10]``, cross-entropy, η = 0.1, λ = 5.0, mini-batches of 10,
  the validation accuracy after every epoch, for N(0, 1) weights ("old") against N(0, 1/n_in) ("new"); biases
  N(0, 1) in both.
* ``mini_batch``: the book gives advice, not a figure ("plot the validation accuracy versus time (as in, real
  elapsed time, not epoch!), and choose whichever mini-batch size gives you the most rapid improvement"). Members
  that share a step share its mini-batch, so a population cannot hold two sizes: here one population per size,
  B = 10 and B = 100, each of three members, η = 0.05, 0.5 and 5.0 (so that η scaled with B, 0.5 at B = 10 and 5.0
  at B = 100, is among them), ``[784, 30, 10]``, cross-entropy, scaled initialisation, λ = 5.0; the validation
  accuracy against each population's elapsed training time.

Differences from the book, on purpose: a figure's members start from one and the same network where they differ by
a setting (``lmbda``, ``mini_batch``; for ``init`` the two initialisations are drawn from one seed), so that the
curves differ by that setting alone; one seeded torch permutation per epoch, shared by the members; float32.
``--epochs`` shortens a run (the book's 30 for ``lmbda`` and ``init``); the committed results say what they used.

To run::

    python experiments/hyperparameters.py lmbda [--epochs 30]    # writes experiments/results/hyperparameters_lmbda.*
    python experiments/hyperparameters.py init [--epochs 30]
    python experiments/hyperparameters.py mini_batch [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from torch_manualbp import Network  # noqa: E402
from torch_manualbp.mnist import load_mnist  # noqa: E402
from torch_manualbp.population import Population  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results"
SIZES, COST, TRAIN = [784, 30, 10], "cross_entropy", 50_000
COLORS = ("#2A6EA6", "#FFA933", "#FF7033", "#4CAF50", "#8E44AD", "#7F8C8D")

#: The book's accuracies after each of its 30 epochs, of 10,000 images, rounded to none: the test accuracy of
#: fig/overfitting_full.json (λ = 0) and fig/regularized_full.json (λ = 5.0), and the validation accuracy of
#: fig/weight_initialization_30.json, mnielsen/neural-networks-and-deep-learning, commit 24c21e4.
BOOK = {
    "lmbda": {
        0.0: "9136 9275 9307 9377 9450 9429 9468 9488 9494 9424 9483 9483 9505 9499 9508 9508 9445 9524 9524 9524 "
        "9494 9527 9518 9505 9533 9529 9512 9530 9532 9531",
        5.0: "9212 9341 9375 9424 9532 9537 9504 9541 9578 9538 9579 9530 9590 9543 9607 9597 9576 9546 9600 9634 "
        "9544 9606 9614 9607 9621 9637 9620 9511 9649 9561",
    },
    "init": {
        "normal": "8643 9044 9141 9231 9299 9327 9385 9416 9433 9449 9476 9489 9500 9535 9521 9548 9564 9573 9585 9592 "
        "9596 9615 9607 9605 9606 9622 9637 9648 9635 9637",
        "scaled": "9270 9414 9470 9504 9537 9550 9587 9594 9596 9594 9616 9595 9622 9630 9636 9641 9625 9652 9637 9634 "
        "9642 9639 9649 9646 9646 9653 9646 9653 9640 9650",
    },
}
BOOK = {figure: {k: [int(v) / 100 for v in row.split()] for k, row in rows.items()} for figure, rows in BOOK.items()}


def mnist_sets(data_dir: Path = ROOT / "data" / "mnist") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The book's split: training (the first 50,000 training images), validation (the other 10,000), test."""
    mnist = load_mnist(data_dir)

    def rows(images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), -1).to(torch.float32) / 255.0

    images, labels = rows(mnist["train_images"]), mnist["train_labels"].long()
    return {
        "training": (images[:TRAIN], labels[:TRAIN]),
        "validation": (images[TRAIN:], labels[TRAIN:]),
        "test": (rows(mnist["test_images"]), mnist["test_labels"].long()),
    }


def accuracies(population: Population, x: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Each member's accuracy in % on ``x``, from one feedforward of every member."""
    with torch.no_grad():
        return ((population(x).argmax(-1) == labels).double().mean(-1) * 100).tolist()


def train(population, data, evaluation, etas, lmbdas, epochs: int, batch: int, seed: int = 0) -> dict:
    """``epochs`` of SGD of every member on one seeded shuffle an epoch; each member's accuracy on ``evaluation``
    after every epoch, and the training seconds (evaluation excluded) at each."""
    x, labels = data
    y = torch.nn.functional.one_hot(labels, SIZES[-1]).to(x.dtype)
    order = torch.Generator().manual_seed(seed)
    curves, seconds, trained = [], [], 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        permutation = torch.randperm(len(x), generator=order)
        population.sgd_steps(x[permutation], y[permutation], etas, lmbdas, len(x), mini_batch_size=batch)
        trained += time.perf_counter() - start
        curves.append(accuracies(population, *evaluation))
        seconds.append(trained)
        print(f"epoch {epoch}, {trained:.0f} s: " + ", ".join(f"{a:.2f}%" for a in curves[-1]), flush=True)
    return {"accuracy": [list(member) for member in zip(*curves)], "seconds": seconds}


def lmbda_figure(sets: dict, epochs: int) -> dict:
    lmbdas = [0.0, 1.0, 5.0]
    torch.manual_seed(0)
    start = Network(SIZES, cost=COST, init="normal")  # the book's large_weight_initializer
    result = train(Population([start] * len(lmbdas)), sets["training"], sets["test"], 0.5, lmbdas, epochs, 10)
    return {
        "members": {f"λ = {lm:g}": curve for lm, curve in zip(lmbdas, result["accuracy"])},
        "book_key": lmbdas,
        "seconds": result["seconds"],
    }


def init_figure(sets: dict, epochs: int) -> dict:
    torch.manual_seed(0)
    members = [Network(SIZES, cost=COST, init=init) for init in ("normal", "scaled")]
    result = train(Population(members), sets["training"], sets["validation"], 0.1, 5.0, epochs, 10)
    return {
        "members": dict(zip(("N(0, 1) (old)", "N(0, 1/n_in) (new)"), result["accuracy"])),
        "book_key": ["normal", "scaled"],
        "seconds": result["seconds"],
    }


def mini_batch_figure(sets: dict, epochs: int) -> dict:
    members, seconds = {}, {}
    etas = [0.05, 0.5, 5.0]
    for batch in (10, 100):
        torch.manual_seed(0)
        start = Network(SIZES, cost=COST)
        result = train(Population([start] * 3), sets["training"], sets["validation"], etas, 5.0, epochs, batch)
        for eta, curve in zip(etas, result["accuracy"]):
            members[f"B = {batch}, η = {eta:g}"] = curve
            seconds[f"B = {batch}, η = {eta:g}"] = result["seconds"]
    return {"members": members, "book_key": [], "seconds": seconds}


FIGURES = {
    "lmbda": (lmbda_figure, "test", "[784, 30, 10], cross-entropy, N(0, 1) weights, η = 0.5, mini-batch 10"),
    "init": (init_figure, "validation", "[784, 30, 10], cross-entropy, η = 0.1, λ = 5.0, mini-batch 10"),
    "mini_batch": (mini_batch_figure, "validation", "[784, 30, 10], cross-entropy, scaled init, λ = 5.0"),
}


def draw(figure: str, result: dict, path: Path) -> None:
    _, stage, title = FIGURES[figure]
    fig, ax = plt.subplots(figsize=(8, 5))
    book = BOOK.get(figure, {})
    for (name, curve), key, color in zip(result["members"].items(), result["book_key"] + [None] * len(COLORS), COLORS):
        times = result["seconds"][name] if figure == "mini_batch" else range(1, len(curve) + 1)
        ax.plot(times, curve, "o-", color=color, markersize=3, label=f"{name}, this run")
        if key in book:
            ax.plot(range(1, len(book[key]) + 1), book[key], "--", color=color, alpha=0.7, label=f"{name}, the book")
    xlabel = "Training time, s (this machine)" if figure == "mini_batch" else "Epoch"
    ax.set(xlabel=xlabel, ylabel=f"{stage.capitalize()} accuracy (%)", title=title)
    ax.set_ylim(85, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(figure: str, result: dict, command: str, wall: float) -> str:
    _, stage, title = FIGURES[figure]
    book = BOOK.get(figure, {})
    names = list(result["members"])
    books = [key for key in result["book_key"] if key in book]
    header = [f"{name}" for name in names] + [
        f"book, {name}" for name, key in zip(names, result["book_key"]) if key in book
    ]
    lines = [
        f"# Chapter 3's hyper-parameters: {figure}",
        "",
        f"`{command}`: {title}; one population, {wall:.0f} s on this machine. {stage.capitalize()} accuracy (%) "
        "after each epoch" + (", the book's beside it." if books else "."),
        "",
        "| epoch | " + " | ".join(header) + " |",
        "| ---: |" + " ---: |" * len(header),
    ]
    for epoch in range(len(next(iter(result["members"].values())))):
        cells = [f"{result['members'][name][epoch]:.2f}" for name in names]
        cells += [f"{book[key][epoch]:.2f}" if epoch < len(book[key]) else "" for key in books]
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    if figure == "mini_batch":
        lines += [
            "",
            "Training seconds at each epoch's end: "
            + "; ".join(
                f"{name}: " + ", ".join(f"{s:.0f}" for s in seconds) for name, seconds in result["seconds"].items()
            ),
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=FIGURES)
    parser.add_argument("--epochs", type=int, default=None, help="the book's 30 (10 for mini_batch) by default")
    args = parser.parse_args(argv)
    epochs = args.epochs or (10 if args.figure == "mini_batch" else 30)
    torch.set_num_threads(1)  # mini-batches of 10: one thread is fastest and leaves the other cores free
    sets = mnist_sets()
    start = time.perf_counter()
    result = FIGURES[args.figure][0](sets, epochs)
    wall = time.perf_counter() - start
    command = f"python experiments/hyperparameters.py {args.figure} --epochs {epochs}"
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"hyperparameters_{args.figure}"
    stem.with_suffix(".json").write_text(json.dumps({"command": command, **result}, indent=1))
    stem.with_suffix(".md").write_text(markdown(args.figure, result, command, wall))
    draw(args.figure, result, stem.with_suffix(".png"))
    print(markdown(args.figure, result, command, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
