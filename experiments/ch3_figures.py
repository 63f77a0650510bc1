r"""Chapter 3's runs on 1,000 images beside the book's: the four figures of its overfitting run, and a table.

Reads the runs that ``experiments/report.py`` trained (``runs/report/<config>/seed_<seed>/metrics.csv``, written by
``manualbp fit`` with :class:`~torch_manualbp.lightning.TrainingSetMonitor`) and draws, per epoch, the book's four
figures of "Overfitting and regularization": the cost on the training data (``train/full_cost``, with the λ term),
the accuracy on the test data, the cost on the test data, and the accuracy on the training data; one line per
config. Writes ``experiments/results/chapter3/<name>.png`` and a markdown table (best test accuracy and its epoch,
the last epoch's test and training accuracy, epochs trained, the book's figure, and the sizes of the final weights
in the run's ``last.ckpt``).

To run (after the configs' runs, see docs/chapter3.md)::

    python experiments/ch3_figures.py ch3_overfitting ch3_overfitting_l2 ch3_overfitting_l1 --name overfitting
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from report import read_history

from torch_manualbp.lightning.report import pyplot

#: The book's figures for these configs (chapter 3, "Overfitting and regularization" and "Regularization"): the peak
#: test accuracy of the 1,000-image runs.
BOOK = {"ch3_overfitting": 82.27, "ch3_overfitting_l2": 87.1}

PANELS = (
    ("train/full_cost", "cost on the training data", "cost", 1),
    ("test/accuracy", "accuracy on the test data", "% correct", 100),
    ("test/cost0", "cost on the test data", "cost", 1),  # C₀ (runs before test/cost0 was logged: test/cost)
    ("train/accuracy", "accuracy on the training data", "% correct", 100),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="config names (experiments/<name>.yaml) whose runs to draw")
    parser.add_argument("--name", required=True, help="the file name of the chart and table, without extension")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/report"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/chapter3"))
    parser.add_argument(
        "--steps", action="store_true", help="draw against SGD steps, not epochs (runs of different data sizes)"
    )
    args = parser.parse_args()
    histories = {name: read_history(args.runs / name / f"seed_{args.seed}") for name in args.configs}
    args.out.mkdir(parents=True, exist_ok=True)
    steps = {name: steps_per_epoch(name) if args.steps else 1 for name in args.configs}
    draw(histories, args.out / f"{args.name}.png", steps)
    command = " ".join(["python", "experiments/ch3_figures.py", *sys.argv[1:]])
    table = results_table(histories, {name: args.runs / name / f"seed_{args.seed}" for name in args.configs})
    (args.out / f"{args.name}.md").write_text(f"Command: `{command}`\n\n{table}\n")
    print(table)


def steps_per_epoch(name: str) -> int:
    """The SGD steps of one epoch of ``experiments/<name>.yaml``: its training images (``data.train_size``, five
    times as many with ``data.expand``) over ``model.mini_batch_size`` (the book's 10 by default)."""
    settings = yaml.safe_load(Path(f"experiments/{name}.yaml").read_text())
    data, model = settings.get("data", {}), settings.get("model", {})
    images = (data.get("train_size") or 50_000) * (5 if data.get("expand") else 1)
    return images // (model.get("mini_batch_size") or 10)


def draw(histories: dict[str, dict[str, dict[int, float]]], path: Path, steps: dict[str, int]) -> None:
    """The book's four figures as a 2 x 2 chart, one line per run, the book's peak test accuracies marked; against
    epochs, or against SGD steps where ``steps`` (per epoch, per run) is not 1."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    by_steps = any(count != 1 for count in steps.values())
    for ax, (key, title, ylabel, scale) in zip(axes.flat, PANELS):
        for name, history in histories.items():
            values = history.get(key) or (history.get("test/cost", {}) if key == "test/cost0" else {})
            x = [(epoch + 1) * steps[name] if by_steps else epoch for epoch in values]
            ax.plot(x, [scale * v for v in values.values()], lw=1, label=name)
            if key == "test/accuracy" and name in BOOK:
                ax.axhline(
                    BOOK[name], ls="--", lw=0.8, color=ax.get_lines()[-1].get_color(), label=f"the book: {BOOK[name]}%"
                )
        ax.set(title=title, xlabel="SGD step" if by_steps else "epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def results_table(histories: dict[str, dict[str, dict[int, float]]], run_dirs: dict[str, Path]) -> str:
    """One row per run: best test accuracy (epoch), last epoch's test and training accuracy, epochs, the book's
    figure, and the final weights (``last.ckpt``): the share near 0 and the L1 and L2 sizes."""
    lines = [
        "| config | best test acc. (epoch) | the book | test acc., last epoch | training acc., last epoch | epochs "
        r"| weights with \|w\| < 0.01 | Σ\|w\| | Σw² |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, history in histories.items():
        test, train = history["test/accuracy"], history.get("train/accuracy", {})
        best = max(test, key=lambda epoch: (test[epoch], -epoch))
        last = max(test)
        book = f"{BOOK[name]}%" if name in BOOK else "-"
        train_last = f"{100 * train[last]:.2f}%" if last in train else "-"
        cells = [name, f"{100 * test[best]:.2f}% ({best})", book, f"{100 * test[last]:.2f}%", train_last, str(last + 1)]
        lines.append(f"| {' | '.join(cells + weight_sizes(run_dirs[name] / 'last' / 'last.ckpt'))} |")
    return "\n".join(lines)


def weight_sizes(checkpoint: Path) -> list[str]:
    """The share of the network's weights with |w| < 0.01, Σ|w| and Σw² in the checkpoint (L1 drives many weights to
    0 and keeps a few large; L2 shrinks all in proportion)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = torch.cat([v.flatten().double() for k, v in state.items() if k.startswith("network.") and "weight" in k])
    small = (weights.abs() < 0.01).double().mean().item()
    return [f"{100 * small:.1f}%", f"{weights.abs().sum().item():.0f}", f"{weights.pow(2).sum().item():.0f}"]


if __name__ == "__main__":
    main()
