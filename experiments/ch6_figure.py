r"""Chapter 6's ladder as one chart: the validation accuracy after each epoch of every rung that was run, from
``experiments/results/ch6/rung<N>.json`` (written by ``experiments/chapter6.py``), with the book's figure marked.

Each rung is one line (its ``validation_accuracies_percent``; rung 8's line is the mean over its networks of
``member_validation_accuracies_percent``, since the ensemble votes only at the end). The book's figure is a *test*
accuracy at the epoch of best validation accuracy, reported after the chapter's full run (60 epochs, 40 for rungs 7
and 8), so it is marked as a star in the rung's colour at the book's number of epochs: a rung run for fewer epochs
ends well left of its star. The left panel shows every epoch, the right one zooms in on the top. Every JSON
names the command that wrote it; the rungs' per-epoch curves are all in their JSON (no log is parsed). Also prints a
markdown table of the runs (the one in docs/chapter6.md).

To run (after the rungs' runs, see docs/chapter6.md)::

    python experiments/ch6_figure.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch_manualbp.lightning.report import pyplot

BOOK_EPOCHS = {rung: 60 for rung in range(1, 7)} | {7: 40, 8: 40}  # the chapter's epochs, for runs before 2026-12-07
MINI_BATCH_SIZE = 10  # chapter6.py's, for the epoch of the best iteration
ZOOM = (98.0, 99.8)  # the right panel's accuracy range, in percent


def read_runs(folder: Path) -> dict[int, dict]:
    """The rungs' JSON files in ``folder``, by rung number, in the ladder's order."""
    runs = {}
    for path in sorted(folder.glob("rung*.json")):
        result = json.loads(path.read_text())
        if not isinstance(result.get("rung"), int) or not result.get("validation_accuracies_percent"):
            raise ValueError(f"folder: {path} is not a chapter6.py result (no rung or no validation curve)")
        runs[result["rung"]] = result
    if not runs:
        raise ValueError(f"folder: no rung*.json in {folder}")
    return dict(sorted(runs.items()))


def validation_curve(result: dict) -> list[float]:
    """Validation accuracy per epoch, in percent: the network's, or the mean of an ensemble's networks'."""
    members = result.get("member_validation_accuracies_percent")
    if not members:
        return list(result["validation_accuracies_percent"])
    return [sum(epoch) / len(epoch) for epoch in zip(*members, strict=True)]


def book_epochs(result: dict) -> int:
    """The chapter's number of epochs for this rung (recorded in the JSON since the reduced-epoch runs)."""
    return result.get("book_epochs", BOOK_EPOCHS[result["rung"]])


def ours(result: dict) -> float:
    """Our test accuracy as the table reports it: the ensemble's vote for rung 8, otherwise at best validation."""
    return result.get("ensemble_test_accuracy_percent", result["test_accuracy_percent"])


def draw(runs: dict[int, dict], path: Path) -> None:
    """Write the two-panel PNG of validation accuracy per epoch to ``path``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (rung, result) in enumerate(runs.items()):
        colour = colours[i % len(colours)]
        curve = validation_curve(result)
        epochs = range(1, len(curve) + 1)
        label = f"rung {rung}: {len(curve)} of {book_epochs(result)} epochs"
        if result.get("member_validation_accuracies_percent"):
            label += f" (mean of {len(result['member_validation_accuracies_percent'])} networks)"
        for ax in axes:
            ax.plot(epochs, curve, color=colour, marker="o", markersize=3, label=label)
            ax.plot(
                [book_epochs(result)],
                [result["book_test_accuracy_percent"]],
                color=colour,
                marker="*",
                markersize=12,
                linestyle="none",
            )
    axes[1].set_ylim(*ZOOM)
    for ax, title in zip(axes, ("every epoch", f"{ZOOM[0]:g}% to {ZOOM[1]:g}%"), strict=True):
        ax.set_xlabel("epochs trained")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle("Chapter 6's ladder: validation accuracy per epoch (stars: the book's test accuracy, full run)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(runs: dict[int, dict]) -> str:
    """A markdown table: epochs run of the book's, our test accuracy, the book's, best validation, s an epoch."""
    lines = [
        "| rung | epochs (of the book's) | ours (test) | the book's | best validation (epoch) | seconds an epoch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for rung, result in runs.items():
        if result.get("member_validation_accuracies_percent"):
            best = "the vote of the networks' last epochs"
        else:  # network3 counts iterations (mini-batches) from 0 and prints epochs from 0
            epoch = result["best_iteration"] // (result["train_size"] // MINI_BATCH_SIZE)
            best = f"{result['best_validation_accuracy_percent']:.2f}% (epoch {epoch})"
        reduced = ", reduced" if result["epochs"] < book_epochs(result) else ""
        lines.append(
            f"| {rung} | {result['epochs']} of {book_epochs(result)}{reduced} | {ours(result):.2f}% "
            f"| {result['book_test_accuracy_percent']:.2f}% | {best} "
            f"| {result['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("experiments/results/ch6"), help="the rungs' JSON")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/ch6/validation.png"))
    args = parser.parse_args(argv)
    runs = read_runs(args.results)
    draw(runs, args.out)
    print(table(runs))


if __name__ == "__main__":
    main()
