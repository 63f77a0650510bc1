r"""A learning slowdown that BP1 predicts, and chapter 3's cure: a saturated output neuron learns slowly under the
quadratic cost and at once under the cross-entropy.

Chapter 3's opening example, with this package's hand-written backward: one sigmoid neuron, input 1,
desired output 0, trained by gradient descent (η = 0.15). On the quadratic cost C = ½(y − a)², BP1 gives its
error as δ = (a − y) σ'(z): the further wrong the neuron starts, the closer a is to 1 and the smaller σ'(z),
so the badly wrong start (w = b = 2, a ≈ 0.98) barely moves for over a hundred epochs while the mildly
wrong one (w = 0.6, b = 0.9, a ≈ 0.82) learns at once. On the cross-entropy C = −[y ln a + (1 − y) ln(1 − a)]
BP1 is δ = a − y, with no σ'(z): the badly wrong start has the larger error and learns fastest. (The book's
cross-entropy animations use η = 0.005; the same η for both costs here makes the δ of BP1 the only difference.)
The errors δ are read from the backward pass itself with ``torch_manualbp.observe.record_errors``.

To run::

    python experiments/learning_slowdown.py    # writes experiments/results/learning_slowdown.{md,png}
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from torch_manualbp.functional import sigmoid_cross_entropy  # noqa: E402
from torch_manualbp.nn import QuadraticCost, SigmoidLinear  # noqa: E402
from torch_manualbp.observe import record_errors  # noqa: E402

STARTS = {"w = 0.6, b = 0.9": (0.6, 0.9), "w = 2.0, b = 2.0": (2.0, 2.0)}
COSTS = {"quadratic": "δ = (a − y) σ'(z)", "cross_entropy": "δ = a − y"}  # BP1 for each cost
ETA, EPOCHS = 0.15, 300


def train(
    w: float, b: float, cost: str = "quadratic", eta: float = ETA, epochs: int = EPOCHS
) -> dict[str, list[float]]:
    """Gradient descent on the one-neuron problem with ``cost``; the cost, output and error δ before each step."""
    neuron = SigmoidLinear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        neuron.weight.fill_(w)
        neuron.bias.fill_(b)
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    history = {"cost": [], "output": [], "delta": []}
    for _ in range(epochs + 1):
        neuron.zero_grad()
        a = neuron(x)
        if cost == "quadratic":
            c = QuadraticCost()(a, y)
        else:  # the neuron and its cross-entropy as one node, computed from z
            c = sigmoid_cross_entropy(x, neuron.weight, neuron.bias, y)
        with record_errors() as record:
            c.backward()
        history["cost"].append(c.item())
        history["output"].append(a.item())
        history["delta"].append(record.for_weight(neuron.weight).delta.item())  # (BP1) δ of this cost
        with torch.no_grad():
            for p in neuron.parameters():
                p -= eta * p.grad
    return history


def main(out: Path = Path("experiments/results")) -> None:
    histories = {(cost, name): train(*start, cost) for cost in COSTS for name, start in STARTS.items()}
    out.mkdir(parents=True, exist_ok=True)
    marks = [0, 50, 150, 300]
    lines = [
        "| cost | start | " + " | ".join(f"output a at epoch {e}" for e in marks) + " | δ at epoch 0 |",
        "| --- | --- |" + " --- |" * (len(marks) + 1),
    ]
    for (cost, name), h in histories.items():
        outputs = " | ".join(f"{h['output'][e]:.4f}" for e in marks)
        lines.append(f"| {cost} | {name} (a = {h['output'][0]:.2f}) | {outputs} | {h['delta'][0]:.4f} |")
    table = "\n".join(lines)
    (out / "learning_slowdown.md").write_text(
        f"Command: `python experiments/learning_slowdown.py` (η = {ETA}, input 1, desired output 0)\n\n{table}\n"
    )
    fig, (output_ax, delta_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, ((cost, name), h) in enumerate(histories.items()):
        style = dict(
            color=f"C{i % len(STARTS)}", linestyle="-" if cost == "quadratic" else "--", label=f"{cost}, {name}"
        )
        output_ax.plot(h["output"], **style)
        delta_ax.plot(h["delta"], **style)
    output_ax.set(
        xlabel="epoch", ylabel="output a (desired: 0)", title="Output: the quadratic cost's bad start is slow"
    )
    delta_ax.set(xlabel="epoch", ylabel="δ (BP1)", title="Error δ: (a − y) σ'(z) quadratic, a − y cross-entropy")
    for ax in (output_ax, delta_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_slowdown.png", dpi=110)
    plt.close(fig)
    print(table)


if __name__ == "__main__":
    main()
