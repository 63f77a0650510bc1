r"""Chapter 3's learning-rate comparison, η = 0.025, 0.25 and 2.5, as one run of a ``Population`` of three networks.

The book's settings, from its ``fig/multiple_eta.py`` and ``src/network2.py`` (repository
mnielsen/neural-networks-and-deep-learning): ``network2.Network([784, 30, 10])``, that is network2's default
cross-entropy cost and its default initialisation (weights N(0, 1/n_in), biases N(0, 1), this package's
``init="scaled"``), ``SGD(training_data, 30, 10, eta, lmbda=5.0, ..., monitor_training_cost=True)``: 30 epochs of
mini-batches of 10 over the 50,000 training images, L2 regularisation λ = 5.0, and after every epoch the training
cost as network2's ``total_cost`` computes it, the mean cross-entropy over the 50,000 images plus
:math:`\frac{\lambda}{2n}\sum_w w^2`. The book's three curves (its ``fig/multiple_eta.json``) are drawn beside ours.

Differences, on purpose: the three members start from one and the same network (the book draws three networks one
after the other from one seed), so that the curves differ by η alone; the mini-batches are one seeded torch
permutation per epoch, the same for all three (the book's ``random.shuffle`` draws a new order for each network);
float32. Each epoch is one ``Population.sgd_steps(x, labels, eta=[0.025, 0.25, 2.5], lmbda=5.0, n=50_000)``: every
member takes the book's ``update_mini_batch``, BP1-BP4 by hand, no autograd, no Lightning.

To run::

    python experiments/eta_comparison.py    # writes experiments/results/eta_comparison.{md,png,json}
"""

from __future__ import annotations

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
SIZES, COST = [784, 30, 10], "cross_entropy"
ETAS = (0.025, 0.25, 2.5)
EPOCHS, BATCH, LMBDA, TRAIN_SIZE = 30, 10, 5.0, 50_000
COLORS = ("#2A6EA6", "#FFCD33", "#FF7033")  # the book's figure's colours, one per η

#: The book's training cost after each of its 30 epochs, per η: fig/multiple_eta.json of
#: mnielsen/neural-networks-and-deep-learning (commit 24c21e4), rounded to 4 digits.
_BOOK_ROWS = (  # one string of 30 values per η, in ETAS' order
    "0.8781 0.6741 0.5980 0.5553 0.5175 0.4942 0.4726 0.4607 0.4430 0.4310 0.4231 0.4141 0.4057 0.4011 0.3916 "
    "0.3871 0.3812 0.3760 0.3730 0.3706 0.3655 0.3634 0.3575 0.3554 0.3537 0.3501 0.3495 0.3460 0.3439 0.3392",
    "0.4950 0.4063 0.4048 0.3716 0.3738 0.3715 0.3537 0.3557 0.3432 0.3434 0.3368 0.3453 0.3351 0.3476 0.3492 "
    "0.3385 0.3284 0.3318 0.3313 0.3302 0.3274 0.3260 0.3200 0.3342 0.3388 0.3252 0.3268 0.3249 0.3306 0.3388",
    "0.9249 0.8392 0.8875 0.7963 0.7812 1.1366 0.7879 0.7678 0.7369 0.8013 0.7443 0.7373 0.8025 0.8519 0.7987 "
    "0.8024 0.8065 0.8147 0.8253 0.7504 0.9366 0.8824 0.8612 0.7249 0.8041 0.8396 0.8339 0.8828 0.8858 0.8607",
)
BOOK_COST = {eta: [float(value) for value in row.split()] for eta, row in zip(ETAS, _BOOK_ROWS)}


def training_set(data_dir: Path = ROOT / "data" / "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    """The book's training data: the first 50,000 MNIST training images as rows of pixels in [0, 1], and labels."""
    mnist = load_mnist(data_dir)
    images = mnist["train_images"][:TRAIN_SIZE]
    return images.reshape(len(images), -1).to(torch.float32) / 255.0, mnist["train_labels"][:TRAIN_SIZE].long()


def training_cost(network: Network, x: torch.Tensor, labels: torch.Tensor, lmbda: float) -> float:
    r"""network2's ``total_cost``: the mean cost over the data plus :math:`\frac{\lambda}{2n}\sum_w w^2`."""
    _, mean_cost = network.output_and_cost(x, labels)
    weights, _ = network.weights_and_biases()
    l2 = 0.5 * (lmbda / len(x)) * sum(float(w.detach().square().sum()) for w in weights)
    return float(mean_cost) + l2


def run(x: torch.Tensor, labels: torch.Tensor, etas=ETAS, epochs: int = EPOCHS, seed: int = 0) -> dict[float, list]:
    """Train one population, a member per η, from one initial network; each member's training cost after every
    epoch."""
    torch.manual_seed(seed)
    start = Network(SIZES, cost=COST)  # the scaled initialisation, network2's default
    population = Population([start] * len(etas))
    order = torch.Generator().manual_seed(seed)
    n = len(x)
    costs: dict[float, list] = {eta: [] for eta in etas}
    for epoch in range(epochs):
        permutation = torch.randperm(n, generator=order)  # the epoch's mini-batches: rows 0-9, 10-19, ... of it
        population.sgd_steps(x[permutation], labels[permutation], list(etas), LMBDA, n, mini_batch_size=BATCH)
        for k, eta in enumerate(etas):
            costs[eta].append(training_cost(population.network(k), x, labels, LMBDA))
        print(f"epoch {epoch}: " + ", ".join(f"η = {eta}: {c[-1]:.4f}" for eta, c in costs.items()), flush=True)
    return costs


def draw(costs: dict[float, list], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for (eta, ours), color in zip(costs.items(), COLORS):
        ax.plot(range(len(ours)), ours, "o-", color=color, markersize=4, label=f"η = {eta}, this run")
        ax.plot(range(len(BOOK_COST[eta])), BOOK_COST[eta], "--", color=color, alpha=0.7, label=f"η = {eta}, the book")
    ax.set(
        xlim=(0, EPOCHS),
        xlabel="Epoch",
        ylabel="Cost on the training data",
        title="[784, 30, 10], cross-entropy, λ = 5.0, mini-batch 10: one Population of three members",
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(costs: dict[float, list], seconds: float) -> str:
    command = "python experiments/eta_comparison.py"
    lines = [
        "# Chapter 3's learning rates, η = 0.025, 0.25, 2.5, as one Population",
        "",
        f"`{command}`: one run of three members, {seconds:.0f} s on this machine. Training cost (network2's "
        "`total_cost`, with the L2 term) after each epoch; the book's from its `fig/multiple_eta.json`.",
        "",
        "| epoch | " + " | ".join(f"η = {eta} | book" for eta in costs) + " |",
        "| ---: | " + " | ".join("---: | ---:" for _ in costs) + " |",
    ]
    for epoch in range(len(next(iter(costs.values())))):
        cells = [f"{costs[eta][epoch]:.4f} | {BOOK_COST[eta][epoch]:.4f}" for eta in costs]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    torch.set_num_threads(1)  # mini-batches of 10: one thread is fastest and leaves the other cores free
    x, labels = training_set()
    start = time.perf_counter()
    costs = run(x, labels)
    seconds = time.perf_counter() - start
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "eta_comparison.json").write_text(json.dumps({str(eta): c for eta, c in costs.items()}, indent=1))
    (OUT / "eta_comparison.md").write_text(markdown(costs, seconds))
    draw(costs, OUT / "eta_comparison.png")
    print(markdown(costs, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
