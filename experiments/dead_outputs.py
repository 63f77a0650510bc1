r"""Which output neurons a trained run left dead: per seed, the test accuracy of each digit, the digits never
predicted, and each output neuron's largest activation over the test set.

With N(0, 1) weights an output neuron can start saturated at a ≈ 0 for every input; BP1 for the quadratic cost
then gives it δᴸ = (a − y) σ'(zᴸ) ≈ 0 even on its own digit, so it may never recover: its digit is never predicted,
while the other nine are learnt as usual. For the cross-entropy BP1 is δᴸ = a − y, which is about −1 on its own
digit however saturated the neuron: chapter 3's cure.

To run (after ``experiments/report.py`` or ``experiments/chapter3.py`` has trained the config)::

    python experiments/dead_outputs.py runs/report/nielsen_ch1_100
    python experiments/dead_outputs.py runs/chapter3/nielsen_ch3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torch_manualbp import Network
from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "runs", type=Path, help="a folder with seed_*/last/last.ckpt (report.py) or seed_*/network.pt (chapter3.py)"
    )
    parser.add_argument("--data-dir", default="data/mnist")
    args = parser.parse_args()
    data = MNISTDataModule(data_dir=args.data_dir)
    data.setup("test")
    x, _, labels = data.splits["test"]  # the pixels as training saw them
    print(f"Command: `python experiments/dead_outputs.py {args.runs}` (the trained network of each seed, test set)\n")
    print(
        "| seed | test accuracy per digit 0-9 (%) | digits never predicted | largest activation of each output neuron |"
    )
    print("| --- | --- | --- | --- |")
    for seed_dir in sorted(args.runs.glob("seed_*")):
        if not seed_dir.is_dir():
            continue
        with torch.no_grad():
            a = load_network(seed_dir)(x)
        predicted = a.argmax(1)
        per_digit = [100 * (predicted[labels == d] == d).float().mean().item() for d in range(10)]
        never = sorted(set(range(10)) - set(predicted.tolist()))
        peaks = a.max(0).values.tolist()
        seed = seed_dir.name.removeprefix("seed_")
        print(
            f"| {seed} | {' '.join(f'{v:.0f}' for v in per_digit)} | {never or 'none'} "
            f"| {' '.join(f'{v:.2f}' for v in peaks)} |"
        )


def load_network(seed_dir: Path) -> torch.nn.Module:
    """The trained network of one seed: a Lightning checkpoint's ``ManualBPClassifier`` or a saved ``Network``."""
    if (seed_dir / "network.pt").exists():
        saved = torch.load(seed_dir / "network.pt", map_location="cpu", weights_only=True)
        network = Network(saved["sizes"], cost=saved["cost"])
        network.load_state_dict(saved["state_dict"])
        return network
    return ManualBPClassifier.load_from_checkpoint(seed_dir / "last" / "last.ckpt", map_location="cpu")


if __name__ == "__main__":
    main()
