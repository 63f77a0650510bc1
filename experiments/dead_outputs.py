r"""Which output neurons a trained run left dead: per seed, the test accuracy of each digit, the digits never
predicted, and each output neuron's largest activation over the test set.

With N(0, 1) weights an output neuron can start saturated at a ≈ 0 for every input; BP1 then gives it
δᴸ = (a − y) σ'(zᴸ) ≈ 0 even on its own digit, so it may never recover: its digit is never predicted, while
the other nine are learnt as usual.

To run (after ``experiments/report.py`` has trained the config)::

    python experiments/dead_outputs.py runs/report/nielsen_ch1_100
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, help="a report folder with seed_*/last/last.ckpt, e.g. runs/report/nielsen_ch1_100")
    parser.add_argument("--data-dir", default="data/mnist")
    args = parser.parse_args()
    data = MNISTDataModule(data_dir=args.data_dir)
    data.setup("test")
    x, _, labels = data.splits["test"]  # the pixels as training saw them
    print(f"Command: `python experiments/dead_outputs.py {args.runs}` (last checkpoint of each seed, test set)\n")
    print("| seed | test accuracy per digit 0-9 (%) | digits never predicted | largest activation of each output neuron |")
    print("| --- | --- | --- | --- |")
    for checkpoint in sorted(args.runs.glob("seed_*/last/last.ckpt")):
        model = ManualBPClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
        with torch.no_grad():
            a = model(x)
        predicted = a.argmax(1)
        per_digit = [100 * (predicted[labels == d] == d).float().mean().item() for d in range(10)]
        never = sorted(set(range(10)) - set(predicted.tolist()))
        peaks = a.max(0).values.tolist()
        seed = checkpoint.parent.parent.name.removeprefix("seed_")
        print(
            f"| {seed} | {' '.join(f'{v:.0f}' for v in per_digit)} | {never or 'none'} "
            f"| {' '.join(f'{v:.2f}' for v in peaks)} |"
        )


if __name__ == "__main__":
    main()
