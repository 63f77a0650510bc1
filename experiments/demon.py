r"""The chapter's demon, measured: add Δz to one neuron's weighted input and watch the cost change by about δ Δz.

Nielsen, chapter 2: "The demon sits at the jth neuron in layer l. As the input to the neuron comes in, the demon
messes with the neuron's operation. It adds a little change Δzˡⱼ to the neuron's weighted input, so that instead of
outputting σ(zˡⱼ), the neuron instead outputs σ(zˡⱼ + Δzˡⱼ). This change propagates through later layers in the
network, finally causing the overall cost to change by an amount ∂C/∂zˡⱼ Δzˡⱼ."

Here the demon is :func:`torch_manualbp.observe.nudge_weighted_input`, a forward hook on the package's layer. A
``Network([784, 30, 10])`` (seed 0, the book's N(0, 1) start, float64) is trained for one pass over the first
10,000 MNIST training images (mini-batches of 10, η = 3) so that its errors are those of a network that has learnt
something; then, on 20 test images, every neuron of both layers is nudged by each Δz, each example's cost change
ΔC_x is measured, and compared with δˣ·ˡⱼ Δz, δ from ``Network.backprop`` (BP1-BP2). The relative error of the linear
approximation grows like |Δz| (the next Taylor term is ½ C'' Δz²) and reaches order 1 at Δz of order 1, where a
sigmoid's σ(z + Δz) is no longer near its tangent.

To run::

    python experiments/demon.py    # writes experiments/results/demon.{md,png}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from torch_manualbp import Network  # noqa: E402
from torch_manualbp.functional import quadratic_cost  # noqa: E402
from torch_manualbp.mnist import load_mnist  # noqa: E402
from torch_manualbp.observe import nudge_weighted_input  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DELTA_ZS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # from well inside the linear regime to well past it
SCATTER_DELTA_Z = 0.1  # the left panel's Δz: small against z's spread of order 1
TRAIN_IMAGES, EXAMPLES = 10_000, 20


def trained_network_and_examples(data_dir: Path) -> tuple[Network, torch.Tensor, torch.Tensor]:
    """The seeded network after one pass over TRAIN_IMAGES training images, and EXAMPLES test images with labels."""
    mnist = load_mnist(data_dir)
    pixels = mnist["train_images"][:TRAIN_IMAGES].reshape(TRAIN_IMAGES, -1).to(torch.float64) / 255.0
    labels = mnist["train_labels"][:TRAIN_IMAGES]
    torch.manual_seed(0)
    net = Network([784, 30, 10], init="normal", dtype=torch.float64)
    for start in range(0, TRAIN_IMAGES, 10):
        net.sgd_step(pixels[start : start + 10], labels[start : start + 10], eta=3.0)
    x = mnist["test_images"][:EXAMPLES].reshape(EXAMPLES, -1).to(torch.float64) / 255.0
    return net, x, mnist["test_labels"][:EXAMPLES]


@torch.no_grad()
def measure(net: Network, x: torch.Tensor, labels: torch.Tensor, delta_z: float) -> list[tuple[torch.Tensor, ...]]:
    """Per layer (input side first): the measured ΔC_x and the prediction δ Δz, each (neurons, examples)."""
    before = quadratic_cost(net(x), labels, reduction="none")  # C_x, (N,)
    deltas = net.backprop(x, labels).delta  # δ^{x,l} per example, (N, H_l) per layer
    per_layer = []
    for layer, delta in zip(net.layers, deltas):
        changes = []
        for neuron in range(layer.out_features):
            with nudge_weighted_input(layer, neuron, delta_z):
                changes.append(quadratic_cost(net(x), labels, reduction="none") - before)
        per_layer.append((torch.stack(changes), delta.T * delta_z))
    return per_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results", help="folder for demon.{md,png}")
    args = parser.parse_args()
    net, x, labels = trained_network_and_examples(args.data_dir)
    results = {dz: measure(net, x, labels, dz) for dz in DELTA_ZS}

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.8))
    for (change, predicted), l, colour in zip(results[SCATTER_DELTA_Z], (2, 3), ("tab:blue", "tab:orange")):
        left.scatter(predicted.flatten(), change.flatten(), s=6, alpha=0.5, color=colour, label=f"layer l = {l}")
    lim = max(abs(v).max().item() for pair in results[SCATTER_DELTA_Z] for v in pair)
    left.plot([-lim, lim], [-lim, lim], "k--", lw=0.8, label="ΔC = δ Δz")
    left.set(xlabel="δˡⱼ Δz (backprop)", ylabel="ΔC measured", title=f"every neuron, {EXAMPLES} test images, Δz = 0.1")
    left.legend()

    rows = []
    for index, l in enumerate((2, 3)):
        medians = []
        for dz in DELTA_ZS:
            change, predicted = results[dz][index]
            medians.append(((change - predicted).abs() / predicted.abs().clamp_min(1e-300)).median().item())
        rows.append(medians)
        middle.loglog(DELTA_ZS, medians, "o-", label=f"layer l = {l}")
    middle.loglog(DELTA_ZS, [rows[0][0] * dz / DELTA_ZS[0] for dz in DELTA_ZS], "k:", lw=0.8, label="∝ Δz")
    middle.axhline(1.0, color="grey", lw=0.6)
    middle.set(xlabel="Δz", ylabel="median |ΔC − δΔz| / |δΔz|", title="where the linear approximation breaks")
    middle.legend()

    # one hidden neuron on one example, over a range of Δz: the cost's curve against its tangent δ Δz
    deltas = net.backprop(x[:1], labels[:1]).delta[0][0]
    neuron = int(deltas.abs().argmax())
    sweep = torch.linspace(-6, 6, 121, dtype=torch.float64)
    with torch.no_grad():
        before = quadratic_cost(net(x[:1]), labels[:1]).item()
        curve = []
        for dz in sweep.tolist():
            with nudge_weighted_input(net.layers[0], neuron, dz):
                curve.append(quadratic_cost(net(x[:1]), labels[:1]).item() - before)
    right.plot(sweep, curve, label="ΔC measured")
    right.plot(sweep, deltas[neuron] * sweep, "k--", lw=0.8, label="δ Δz")
    right.set(xlabel="Δz", ylabel="ΔC", title=f"hidden neuron j = {neuron}, test image 0 (digit {int(labels[0])})")
    right.legend()
    fig.suptitle(
        "Nielsen ch. 2: the demon adds Δzˡⱼ to a neuron's weighted input, "
        '"finally causing the overall cost to change by an amount ∂C/∂zˡⱼ Δzˡⱼ"'
    )
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "demon.png", dpi=100)

    lines = [
        "Command: `python experiments/demon.py` (Network([784, 30, 10]), seed 0, float64, one pass over 10,000",
        f"training images; {EXAMPLES} test images; every neuron of both layers nudged)",
        "",
        "| Δz | " + " | ".join(f"{dz:g}" for dz in DELTA_ZS) + " |",
        "| --- |" + " --- |" * len(DELTA_ZS),
    ]
    for l, medians in zip((2, 3), rows):
        lines.append(f"| median relative error, layer {l} | " + " | ".join(f"{m:.2g}" for m in medians) + " |")
    (args.out / "demon.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
