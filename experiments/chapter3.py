r"""Chapter 3's runs over several seeds with the fused SGD step, ``Network.sgd_step``, instead of Lightning.

The same training as ``manualbp fit --config CONFIG`` (the config's network, cost, η, λ, epochs and mini-batches,
the data module's shuffled order for each seed), without Lightning or autograd: each mini-batch is one
``Network.sgd_step(x, y, eta, lmbda=..., n=...)``, feedforward, BP1-BP4 and the book's update, which makes an
epoch several times faster on a CPU. After every epoch it measures the validation and test accuracy and cost, and
writes them as ``metrics.csv`` in the layout of Lightning's CSVLogger, so that ``experiments/report.py``'s table
and plot read them unchanged; the trained network is saved as ``network.pt`` for ``experiments/dead_outputs.py``.

To run::

    python experiments/chapter3.py experiments/nielsen_ch3.yaml --seeds 0 1 2 --book-val 97.92
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import torch
import yaml
from report import plot, read_history, results_table

from torch_manualbp import Network
from torch_manualbp.lightning import MNISTDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="a manualbp YAML config, e.g. experiments/nielsen_ch3.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, in processes of one thread each")
    parser.add_argument("--epochs", type=int, help="override the config's trainer.max_epochs")
    parser.add_argument("--book", type=float, help="the book's test accuracy for this config, in percent")
    parser.add_argument("--book-val", type=float, help="the book's validation accuracy, where it reports that instead")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--runs", type=Path, default=Path("runs/chapter3"))
    args = parser.parse_args()
    name = args.config.stem
    settings = yaml.safe_load(args.config.read_text())
    epochs = args.epochs or settings["trainer"]["max_epochs"]
    jobs = [(settings, seed, epochs, args.runs / name / f"seed_{seed}") for seed in args.seeds]
    if args.jobs > 1:
        with Pool(args.jobs) as pool:
            seconds = dict(zip(args.seeds, pool.starmap(train, jobs)))
    else:
        seconds = {seed: train(*job) for seed, job in zip(args.seeds, jobs)}
    histories = {seed: read_history(args.runs / name / f"seed_{seed}") for seed in args.seeds}
    table = results_table(name, histories, seconds, args.book)
    if args.book_val is not None:
        median_val = statistics.median(100 * max(h["val/accuracy"].values()) for h in histories.values())
        table += (
            f"\n\nMedian best validation accuracy {median_val:.2f}%; "
            f"the book reports {args.book_val:.2f}% on the validation data."
        )
    command = " ".join(["python", "experiments/chapter3.py", *sys.argv[1:]])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text(f"Command: `{command}`\n\n{table}\n")
    plot(name, histories, args.out / f"{name}.png", settings["model"].get("cost", "quadratic"))
    print(table)


def train(settings: dict, seed: int, epochs: int, run_dir: Path) -> float:
    """Train one seed; write ``metrics.csv`` (one row per epoch) and ``network.pt``; return the wall-clock seconds."""
    # One thread: a mini-batch of 10 is too small to share, and on a busy machine a second thread that waits for a
    # core made a step 15-200 times slower here (260 µs with one thread).
    torch.set_num_threads(1)
    model, data_settings = settings["model"], settings.get("data", {})
    torch.manual_seed(seed)  # the initialisation, as seed_everything(seed) before the model is built
    network = Network(model["sizes"], cost=model.get("cost", "quadratic"), init=model.get("init", "normal"))
    lmbda, n = model.get("lmbda", 0.0), model.get("training_set_size", 50_000)
    data = MNISTDataModule(
        data_dir=data_settings.get("data_dir", "data/mnist"), batch_size=data_settings["batch_size"], seed=seed
    )
    data.setup("fit")
    batches = data.train_dataloader()  # the seed's shuffled order, epoch after epoch
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        columns = ["epoch", "step", "train/cost", "val/cost", "val/accuracy", "test/cost", "test/accuracy"]
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        step = 0
        for epoch in range(epochs):
            costs = []
            for x, y, _ in batches:
                costs.append(network.sgd_step(x, y, model["eta"], lmbda=lmbda, n=n))
            step += len(costs)
            row = {"epoch": epoch, "step": step, "train/cost": torch.stack(costs).mean().item()}
            for split in ("val", "test"):
                row[f"{split}/cost"], row[f"{split}/accuracy"] = evaluate(network, *data.splits[split])
            writer.writerow(row)
            f.flush()
    torch.save(
        {"sizes": network.sizes, "cost": network.cost_name, "state_dict": network.state_dict()}, run_dir / "network.pt"
    )
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(network: Network, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The mean cost C₀ and the accuracy (the output neuron with the highest activation) on a whole split."""
    accuracy = (network(x).argmax(1) == labels).double().mean().item()
    return network.cost(x, y).item(), accuracy


if __name__ == "__main__":
    main()
