r"""What mini-batch size does the book's network want? The gradient noise scale, measured, against training runs.

McCandlish et al. (2018, "An Empirical Model of Large-Batch Training") predict that the SGD steps needed to reach a
given loss fall with the mini-batch size B as :math:`S = S_\min (1 + B_\text{noise}/B)`, and the epochs rise as
:math:`E = E_\min (1 + B/B_\text{noise})`: below the noise scale :math:`B_\text{noise}` a larger batch saves steps
almost in proportion, above it hardly at all. :math:`B_\text{simple} = \operatorname{tr}\Sigma/\lvert G\rvert^2`,
which ``torch_manualbp.observe.gradient_statistics`` computes from the book's per-example errors, estimates it.

1. B_simple along two runs of ``[784, 30, 10]`` at η = 3, mini-batch 10: chapter 1's N(0, 1) initialisation
   (``experiments/nielsen_ch1.yaml``) and chapter 3's scaled one. Every 10,000 examples it is measured on a fixed
   10,000 training examples in one call (N = 10,000, so |G|² and S are nearly exact for those parameters).
2. Training at B = 1, 10, 100, 1,000 with the scaled initialisation to 95% validation accuracy (checked every
   1,000 examples, or 5 steps if more), two seeds each; steps and epochs to get there, beside the prediction with
   :math:`B_\text{noise}` from part 1's scaled run near 95% (summed S over summed |G|² of the measurements at
   ≥ 93%, the paper's smoothing) and :math:`S_\min` fitted, and beside the best fit of both.

The learning rate: :math:`\eta(B) = \min(3 \cdot B/10,\ 6)`. The book's η = 3 at B = 10, scaled linearly with B, up
to a cap: in a pilot at B = 1,000, η = 10 left half the network saturated after 4 epochs (55% accuracy) and η = 30
diverged to chance, while η = 6 trained. This is the shape of the paper's optimal learning rate,
:math:`\epsilon_\text{opt}(B) = \epsilon_\max / (1 + B_\text{noise}/B)`: linear in B below the noise scale,
constant above it; the prediction assumes a well-tuned rate at every B. The scaled initialisation in part 2: with
N(0, 1) weights some seeds stall below 95% (a dead output neuron, see docs), which is not a batch-size effect.
Epochs are capped (B = 1: 3, 10: 10, 100: 20, 1,000: 100) to bound the script's time (the committed run took 2
minutes on 2 busy CPU cores); a run that hits its cap is reported as not reaching 95%.

The training loop is ``Network.sgd_step`` (the book's ``update_mini_batch``), no Lightning, for speed.

To run::

    python experiments/batch_size.py    # writes experiments/results/batch_size.{md,png,json}
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from torch_manualbp import Network  # noqa: E402
from torch_manualbp.lightning import MNISTDataModule  # noqa: E402
from torch_manualbp.observe import gradient_statistics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results"
SIZES = [784, 30, 10]
BOOK_ETA, BOOK_BATCH, ETA_CAP = 3.0, 10, 6.0  # the book's η at its mini-batch; the cap from the pilot above
BATCH_SIZES = (1, 10, 100, 1000)
MAX_EPOCHS = {1: 3, 10: 10, 100: 20, 1000: 100}
SEEDS = (0, 1)
TARGET = 0.95
CHECK_EVERY = 1000  # examples between validation checks in part 2, at least 5 steps (B = 1000 takes thousands)
NOISE_EPOCHS, NOISE_EVERY, PROBE = 5, 10_000, 10_000  # part 1: epochs, examples between measurements, probe size
NOISE_WINDOW = 0.02  # B_noise for the prediction: from part 1's measurements at accuracies ≥ TARGET − this
TRAIN_SIZE = 50_000


def eta_for(batch: int) -> float:
    """The learning rate at mini-batch ``batch``: the book's, scaled linearly with the batch, capped."""
    return min(BOOK_ETA * batch / BOOK_BATCH, ETA_CAP)


def accuracy(network: Network, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (network(x).argmax(1) == labels).float().mean().item()


def train(splits, init: str, batch: int, eta: float, seed: int, max_epochs: int, every: int, check) -> int:
    """Mini-batch SGD from a seeded initialisation; ``check(network, step)`` runs before the first step and every
    ``every`` examples, and training stops when it returns True. Returns the number of steps taken."""
    torch.manual_seed(seed)
    network = Network(SIZES, init=init)
    x, y, _ = splits["train"]
    order = torch.Generator().manual_seed(seed)
    steps_per_check = max(1, every // batch)
    step = 0
    if check(network, step):
        return step
    for _ in range(max_epochs):
        permutation = torch.randperm(len(x), generator=order)
        for start in range(0, len(x) - batch + 1, batch):  # whole mini-batches only (all sizes here divide 50,000)
            index = permutation[start : start + batch]
            network.sgd_step(x[index], y[index], eta)  # w → w − η ∂C/∂w
            step += 1
            if step % steps_per_check == 0 and check(network, step):
                return step
    return step


def noise_along_a_run(splits, init: str) -> list[dict]:
    """Part 1: B_simple (all parameters, and per layer) and validation accuracy every NOISE_EVERY examples."""
    probe_x, probe_y, _ = (t[:PROBE] for t in splits["train"])
    val_x, _, val_labels = splits["val"]
    history = []

    def measure(network, step):
        stats = gradient_statistics(network, probe_x, probe_y)
        history.append(
            {
                "step": step,
                "val_accuracy": accuracy(network, val_x, val_labels),
                "b_simple": stats.noise_scale.item(),
                "b_simple_layers": [layer.noise_scale.item() for layer in stats.layers],
                "true_grad_sq_norm": stats.true_grad_sq_norm.item(),
                "trace_covariance": stats.trace_covariance.item(),
            }
        )
        return False

    train(splits, init, BOOK_BATCH, BOOK_ETA, 0, NOISE_EPOCHS, NOISE_EVERY, measure)
    return history


def steps_to_target(splits, batch: int, seed: int) -> dict:
    """Part 2: steps until the validation accuracy first reaches TARGET, or None within the epoch cap."""
    val_x, _, val_labels = splits["val"]
    test_x, _, test_labels = splits["test"]
    reached = {}

    def check(network, step):
        if accuracy(network, val_x, val_labels) >= TARGET:
            reached.update(step=step, test_accuracy=accuracy(network, test_x, test_labels))
            return True
        return False

    start = time.perf_counter()
    every = max(CHECK_EVERY, 5 * batch)
    steps = train(splits, "scaled", batch, eta_for(batch), seed, MAX_EPOCHS[batch], every, check)
    return {
        "batch": batch, "seed": seed, "eta": eta_for(batch), "steps": reached.get("step"),
        "epochs": reached["step"] * batch / TRAIN_SIZE if reached else None, "steps_run": steps,
        "test_accuracy": reached.get("test_accuracy"), "seconds": time.perf_counter() - start,
    }  # fmt: skip


def fit_s_min(batches: list[int], steps: list[float], b_noise: float) -> float:
    """Least squares in log space of S = S_min (1 + B_noise/B) for a given B_noise: a closed form."""
    return math.exp(sum(math.log(s / (1 + b_noise / b)) for b, s in zip(batches, steps)) / len(steps))


def fit_both(batches: list[int], steps: list[float]) -> tuple[float, float]:
    """S_min and B_noise by least squares in log space (a grid over B_noise, S_min in closed form)."""

    def loss(b_noise):
        s_min = fit_s_min(batches, steps, b_noise)
        return sum((math.log(s) - math.log(s_min * (1 + b_noise / b))) ** 2 for b, s in zip(batches, steps))

    grid = [10 ** (k / 100) for k in range(-100, 501)]  # B_noise from 0.1 to 100,000
    b_noise = min(grid, key=loss)
    return fit_s_min(batches, steps, b_noise), b_noise


def noise_near_target(history: list[dict]) -> tuple[float, list[dict]]:
    """B_noise near the target accuracy: the ratio of the summed S to the summed |G|² over the measurements at
    validation accuracies ≥ TARGET − NOISE_WINDOW (the paper's smoothing: average both, then divide)."""
    window = [h for h in history if h["val_accuracy"] >= TARGET - NOISE_WINDOW]
    return sum(h["trace_covariance"] for h in window) / sum(h["true_grad_sq_norm"] for h in window), window


def report(noise: dict[str, list[dict]], runs: list[dict], seconds: float) -> dict:
    """The fits and the markdown, from the measurements."""
    b_noise_measured, window = noise_near_target(noise["scaled"])
    reached = [r for r in runs if r["steps"]]
    batches, steps = [r["batch"] for r in reached], [r["steps"] for r in reached]
    s_min_measured = fit_s_min(batches, steps, b_noise_measured)
    s_min_free, b_noise_free = fit_both(batches, steps)
    fits = {"b_noise_measured": b_noise_measured, "s_min_measured": s_min_measured,
            "s_min_free": s_min_free, "b_noise_free": b_noise_free}  # fmt: skip
    lines = [
        "# What mini-batch size does the book's network want?",
        "",
        f"Command: `python experiments/batch_size.py` ({seconds / 60:.1f} min). See `docs/batch_size.md`.",
        "",
        "## B_simple along a run ([784, 30, 10], η = 3, mini-batch 10; measured on 10,000 training examples)",
        "",
        "| init | step | validation accuracy | B_simple | layer 1 | layer 2 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for init, history in noise.items():
        every = max(1, len(history) // 8)
        for h in [h for i, h in enumerate(history) if i % every == 0 or i == len(history) - 1]:
            layers = " | ".join(f"{b:,.1f}" for b in h["b_simple_layers"])
            lines.append(f"| {init} | {h['step']:,} | {h['val_accuracy']:.4f} | {h['b_simple']:,.1f} | {layers} |")
    lines += [
        "",
        f"Scaled init, the {len(window)} measurements at ≥ {TARGET - NOISE_WINDOW:.0%} validation accuracy (steps "
        f"{window[0]['step']:,}-{window[-1]['step']:,}): B_simple from 1 batch ranges "
        f"{min(h['b_simple'] for h in window):,.0f}-{max(h['b_simple'] for h in window):,.0f}; "
        f"Σ S / Σ |G|² = **{b_noise_measured:,.0f}**, the B_noise of the prediction below.",
        "",
        f"## Steps and epochs to {TARGET:.0%} validation accuracy (scaled init, η = min(0.3·B, {ETA_CAP:g}))",
        "",
        "| B | η | seed | steps | epochs | test accuracy then | predicted steps (B_simple) | best-fit steps | s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        predicted = s_min_measured * (1 + b_noise_measured / r["batch"])
        fitted = s_min_free * (1 + b_noise_free / r["batch"])
        if r["steps"] is None:
            lines.append(f"| {r['batch']:,} | {r['eta']:g} | {r['seed']} | not within {r['steps_run']:,} | – | – | "
                         f"{predicted:,.0f} | {fitted:,.0f} | {r['seconds']:.0f} |")  # fmt: skip
            continue
        lines.append(
            f"| {r['batch']:,} | {r['eta']:g} | {r['seed']} | {r['steps']:,} | {r['epochs']:.2f} | "
            f"{r['test_accuracy']:.4f} | {predicted:,.0f} | {fitted:,.0f} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        f"Prediction S = S_min (1 + B_noise/B) with B_noise = B_simple = {b_noise_measured:,.1f} and S_min = "
        f"{s_min_measured:,.0f} fitted; best fit of both: S_min = {s_min_free:,.0f}, B_noise = {b_noise_free:,.1f}.",
    ]
    return {"fits": fits, "markdown": "\n".join(lines) + "\n"}


def draw(noise: dict[str, list[dict]], runs: list[dict], fits: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for (init, history), color in zip(noise.items(), ("tab:red", "tab:blue")):
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["b_simple"] for h in history], color=color, label=f"{init} init, all parameters")
        for l, style in ((0, ":"), (1, "--")):
            ax.plot(steps, [h["b_simple_layers"][l] for h in history], color=color, linestyle=style,
                    label=f"{init} init, layer {l + 1}")  # fmt: skip
    ax.set(title="B_simple along a run (η = 3, mini-batch 10)", xlabel="step", ylabel="B_simple (examples)",
           yscale="log")  # fmt: skip
    ax.legend(fontsize=7)
    reached = [r for r in runs if r["steps"]]
    curve = [10 ** (k / 20) for k in range(0, 61)]  # B from 1 to 1,000
    for ax, per_epoch in ((axes[1], False), (axes[2], True)):
        scale = (lambda b: b / TRAIN_SIZE) if per_epoch else (lambda b: 1.0)
        ax.scatter([r["batch"] for r in reached], [r["steps"] * scale(r["batch"]) for r in reached], color="black",
                   zorder=3, label="measured (each seed)")  # fmt: skip
        for s_min, b_noise, style, label in (
            (fits["s_min_measured"], fits["b_noise_measured"], "-", f"S_min(1 + B_noise/B), B_noise = B_simple = "
             f"{fits['b_noise_measured']:,.0f}"),
            (fits["s_min_free"], fits["b_noise_free"], "--", f"best fit, B_noise = {fits['b_noise_free']:,.0f}"),
        ):  # fmt: skip
            ax.plot(curve, [s_min * (1 + b_noise / b) * scale(b) for b in curve], style, label=label)
        ax.set(xscale="log", yscale="log", xlabel="mini-batch size B",
               title=f"{'epochs' if per_epoch else 'steps'} to {TARGET:.0%} validation accuracy")  # fmt: skip
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    torch.set_num_threads(1)  # the mini-batches are small: one thread is fastest and leaves the other core free
    start = time.perf_counter()
    data = MNISTDataModule(str(ROOT / "data" / "mnist"))
    data.setup()
    noise = {}
    for init in ("normal", "scaled"):
        print(f"[B_simple] {init} init", flush=True)
        noise[init] = noise_along_a_run(data.splits, init)
    runs = []
    for batch in BATCH_SIZES:
        for seed in SEEDS:
            runs.append(steps_to_target(data.splits, batch, seed))
            print(f"[B = {batch}, seed {seed}] {runs[-1]}", flush=True)
    result = report(noise, runs, time.perf_counter() - start)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "batch_size.md").write_text(result["markdown"])
    (OUT / "batch_size.json").write_text(json.dumps({"noise": noise, "runs": runs, "fits": result["fits"]}, indent=1))
    draw(noise, runs, result["fits"], OUT / "batch_size.png")
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
