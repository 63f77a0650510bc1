r"""Chapter 3's runs over several seeds, as one ``Population`` trained with the fused SGD step instead of Lightning.

The same training as ``manualbp fit --config CONFIG`` (the config's network, cost, η, λ, epochs and mini-batches),
without Lightning or autograd, for every seed at once: member k starts from the weights ``torch.manual_seed(seeds[k])``
then ``Network(...)`` draws (as ``manualbp fit --seed_everything seeds[k]``), and every member takes the book's
``update_mini_batch`` (feedforward, BP1-BP4 and the update) on the same mini-batches, one ``Population.sgd_steps``
call per block of 1,000 examples. The members share one shuffled order, the data module's for ``--data-seed``
(default 0), where separate runs would each shuffle by their own seed. After every epoch it measures every member's
validation and test accuracy and cost (one feedforward of all members) and writes, per seed, ``metrics.csv`` in the
layout of Lightning's CSVLogger, so that ``experiments/report.py``'s table and plot read them unchanged, and the
trained network as ``network.pt`` for ``experiments/dead_outputs.py``. The wall-clock column is the population's.

One population is faster than a process per seed on this machine (measured in docs/hyperparameters.md: three seeds
of ``nielsen_ch3.yaml``, two epochs, against the seeds trained one per process, two at a time).

To run::

    python experiments/chapter3.py experiments/nielsen_ch3.yaml --seeds 0 1 2 --book-val 97.92
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from report import plot, read_history, results_table

from torch_manualbp import Network
from torch_manualbp.lightning import MNISTDataModule
from torch_manualbp.lightning.cli import read_config
from torch_manualbp.population import Population

BLOCK = 1_000  # examples per Population.sgd_steps call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="a manualbp YAML config, e.g. experiments/nielsen_ch3.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-seed", type=int, default=0, help="the shuffling every member shares")
    parser.add_argument("--epochs", type=int, help="override the config's trainer.max_epochs")
    parser.add_argument("--book", type=float, help="the book's test accuracy for this config, in percent")
    parser.add_argument("--book-val", type=float, help="the book's validation accuracy, where it reports that instead")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--runs", type=Path, default=Path("runs/chapter3"))
    args = parser.parse_args()
    name = args.config.stem
    settings = read_config(args.config)
    epochs = args.epochs or settings["trainer"]["max_epochs"]
    run_dirs = {seed: args.runs / name / f"seed_{seed}" for seed in args.seeds}
    together = train(settings, run_dirs, epochs, args.data_seed)
    seconds = dict.fromkeys(args.seeds, together)
    histories = {seed: read_history(run_dir) for seed, run_dir in run_dirs.items()}
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


def train(settings: dict, run_dirs: dict[int, Path], epochs: int, data_seed: int) -> float:
    """Train one population, a member per seed; write each seed's ``metrics.csv`` (one row per epoch) and
    ``network.pt``; return the wall-clock seconds."""
    # One thread: a mini-batch of 10 is too small to share, and on a busy machine a second thread that waits for a
    # core made a step 15-200 times slower here (260 µs with one thread).
    torch.set_num_threads(1)
    model, data_settings = settings["model"], settings.get("data", {})
    members = []
    for seed in run_dirs:
        torch.manual_seed(seed)  # the initialisation, as seed_everything(seed) before the model is built
        members.append(Network(model["sizes"], cost=model.get("cost", "quadratic"), init=model.get("init", "normal")))
    population = Population(members)
    lmbda, n = model.get("lmbda", 0.0), model.get("training_set_size", 50_000)
    mini_batch = data_settings["batch_size"]
    block = mini_batch * max(1, BLOCK // mini_batch)  # whole mini-batches: the data module's order, cut in blocks
    data = MNISTDataModule(data_dir=data_settings.get("data_dir", "data/mnist"), batch_size=block, seed=data_seed)
    data.setup("fit")
    batches = data.train_dataloader()  # the shuffled order, epoch after epoch
    # C₀ without the λ term, named as manualbp names it (its val/cost adds network2.py's λ term)
    columns = ["epoch", "step", "train/cost", "val/cost0", "val/accuracy", "test/cost0", "test/accuracy"]
    start = time.perf_counter()
    with ExitStack() as files:
        writers = []
        for run_dir in run_dirs.values():
            run_dir.mkdir(parents=True, exist_ok=True)
            f = files.enter_context(open(run_dir / "metrics.csv", "w", newline=""))
            writers.append((f, csv.DictWriter(f, fieldnames=columns)))
            writers[-1][1].writeheader()
        step = 0
        for epoch in range(epochs):
            costs = torch.cat([population.sgd_steps(x, y, model["eta"], lmbda, n, mini_batch) for x, y, _ in batches])
            step += len(costs)
            rows = [{"epoch": epoch, "step": step, "train/cost": cost} for cost in costs.mean(0).tolist()]
            for split in ("val", "test"):
                for row, cost, accuracy in zip(rows, *evaluate(population, *data.splits[split])):
                    row[f"{split}/cost0"], row[f"{split}/accuracy"] = cost, accuracy
            for (f, writer), row in zip(writers, rows):
                writer.writerow(row)
                f.flush()
    for k, run_dir in enumerate(run_dirs.values()):
        network = population.network(k)
        saved = {"sizes": network.sizes, "cost": network.cost_name, "state_dict": network.state_dict()}
        torch.save(saved, run_dir / "network.pt")
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(population: Population, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor):
    """Each member's mean cost C₀ and accuracy (the output neuron with the highest activation) on a whole split."""
    activations, z = population.feedforward(x)
    a = activations[-1]  # (K, N, 10)
    return population.costs(z, a - y, y).tolist(), (a.argmax(-1) == labels).double().mean(-1).tolist()


if __name__ == "__main__":
    main()
