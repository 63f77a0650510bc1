r"""A learning slowdown that BP1 predicts: a saturated output neuron learns slowly under the quadratic cost.

Chapter 3's opening example, with this package's hand-written backward: one sigmoid neuron, input 1,
desired output 0, trained by gradient descent (η = 0.15) on C = ½(y − a)². BP1 gives its error as
δ = (a − y) σ'(z): the further wrong the neuron starts, the closer a is to 1 and the smaller σ'(z),
so the badly wrong start (w = b = 2, a ≈ 0.98) barely moves for over a hundred epochs while the mildly
wrong one (w = 0.6, b = 0.9, a ≈ 0.82) learns at once. The errors δ are read from the backward pass
itself with ``torch_manualbp.observe.record_errors``.

To run::

    python experiments/learning_slowdown.py    # writes experiments/results/learning_slowdown.{md,png}
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from torch_manualbp.nn import QuadraticCost, SigmoidLinear  # noqa: E402
from torch_manualbp.observe import record_errors  # noqa: E402

STARTS = {"w = 0.6, b = 0.9": (0.6, 0.9), "w = 2.0, b = 2.0": (2.0, 2.0)}
ETA, EPOCHS = 0.15, 300


def train(w: float, b: float, eta: float = ETA, epochs: int = EPOCHS) -> dict[str, list[float]]:
    """Gradient descent on the one-neuron problem; the cost, output and error δ before each step."""
    neuron = SigmoidLinear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        neuron.weight.fill_(w)
        neuron.bias.fill_(b)
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    history = {"cost": [], "output": [], "delta": []}
    for _ in range(epochs + 1):
        neuron.zero_grad()
        a = neuron(x)
        cost = QuadraticCost()(a, y)
        with record_errors() as record:
            cost.backward()
        history["cost"].append(cost.item())
        history["output"].append(a.item())
        history["delta"].append(record.for_weight(neuron.weight).delta.item())  # (BP1) δ = (a − y) σ'(z)
        with torch.no_grad():
            for p in neuron.parameters():
                p -= eta * p.grad
    return history


def main(out: Path = Path("experiments/results")) -> None:
    histories = {name: train(*start) for name, start in STARTS.items()}
    out.mkdir(parents=True, exist_ok=True)
    marks = [0, 50, 150, 300]
    lines = [
        "| start | " + " | ".join(f"cost at epoch {e}" for e in marks) + " | δ at epoch 0 |",
        "| --- |" + " --- |" * (len(marks) + 1),
    ]
    for name, h in histories.items():
        costs = " | ".join(f"{h['cost'][e]:.4f}" for e in marks)
        lines.append(f"| {name} (a = {h['output'][0]:.2f}) | {costs} | {h['delta'][0]:.4f} |")
    table = "\n".join(lines)
    (out / "learning_slowdown.md").write_text(
        f"Command: `python experiments/learning_slowdown.py` (η = {ETA}, input 1, desired output 0)\n\n{table}\n"
    )
    fig, (cost_ax, delta_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, h in histories.items():
        cost_ax.plot(h["cost"], label=name)
        delta_ax.plot(h["delta"], label=name)
    cost_ax.set(xlabel="epoch", ylabel="cost C = ½(y − a)²", title="Cost: the badly wrong start learns slowly")
    delta_ax.set(xlabel="epoch", ylabel="δ = (a − y) σ'(z)", title="Error δ (BP1), read from the backward pass")
    for ax in (cost_ax, delta_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_slowdown.png", dpi=110)
    plt.close(fig)
    print(table)


if __name__ == "__main__":
    main()
