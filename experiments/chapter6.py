r"""Chapter 6's ladder of networks, one rung a command, through ``torch_manualbp.book.network3`` with the chapter's
layers and settings; the book's test accuracy is printed beside ours and both are written to
``experiments/results/ch6/rung<N>.json``.

The rungs, in the chapter's order (mini-batches of 10 throughout; ours is the test accuracy at the epoch of best
validation accuracy, as the chapter reports; the chapter's own figure is the best of three runs, ours one run):

1. a fully-connected layer of 100 sigmoid neurons and a softmax layer of 10, η = 0.1, 60 epochs (97.80%);
2. a convolutional-pooling layer (20 maps, 5 × 5 fields, 2 × 2 pools) below it (98.78%);
3. a second one, 40 maps on the first's 20 × 12 × 12 (99.06%);
4. ReLU everywhere, η = 0.03, λ = 0.1 (99.23%; the chapter's prose says λ = 0.01, its code 0.1);
5. the training data expanded by one-pixel shifts, 250,000 images (99.37%), shuffled once by ``--seed`` as the
   book's ``expand_mnist.py`` shuffles them (network3 takes them in that order every epoch);
6. a second fully-connected layer of 100 ReLUs (99.43%);
7. two fully-connected layers of 1,000 ReLUs and the softmax, each with dropout p = 0.5 on its input, no λ,
   40 epochs (99.60%);
8. five rung-7 networks, seeds ``--seed`` to ``--seed + 4``, voting on each test image (99.67%).

To run::

    python experiments/chapter6.py --rung 1
    python experiments/chapter6.py --rung 2 --epochs 40 --seed 0
    python experiments/chapter6.py --rung 7 --train-size 100 --epochs 1 --eval-size 1000  # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from torch_manualbp.book import network3
from torch_manualbp.book.network3 import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer, sigmoid
from torch_manualbp.mnist import MNIST_SIZE, expand_by_shifts

MINI_BATCH_SIZE = 10  # the chapter's, "mostly for consistency with the experiments in earlier chapters"
ENSEMBLE = 5  # rung 8's networks


def conv_layers(m: int, activation_fn) -> list:
    """The two convolutional-pooling layers of rungs 3-8: 20 maps of 28 x 28 -> 20 x 12 x 12, then 40 -> 40 x 4 x 4."""
    return [
        ConvPoolLayer(
            image_shape=(m, 1, 28, 28), filter_shape=(20, 1, 5, 5), poolsize=(2, 2), activation_fn=activation_fn
        ),
        ConvPoolLayer(
            image_shape=(m, 20, 12, 12), filter_shape=(40, 20, 5, 5), poolsize=(2, 2), activation_fn=activation_fn
        ),
    ]


def relu_net(m: int) -> list:
    """Rungs 4 and 5: two ReLU conv-pool layers, 100 ReLUs, softmax."""
    return [
        *conv_layers(m, ReLU),
        FullyConnectedLayer(n_in=40 * 4 * 4, n_out=100, activation_fn=ReLU),
        SoftmaxLayer(100, 10),
    ]


def dropout_net(m: int) -> list:
    """Rungs 7 and 8: two ReLU conv-pool layers, two dropout layers of 1,000 ReLUs, a dropout softmax."""
    return [
        *conv_layers(m, ReLU),
        FullyConnectedLayer(n_in=40 * 4 * 4, n_out=1000, activation_fn=ReLU, p_dropout=0.5),
        FullyConnectedLayer(n_in=1000, n_out=1000, activation_fn=ReLU, p_dropout=0.5),
        SoftmaxLayer(n_in=1000, n_out=10, p_dropout=0.5),
    ]


@dataclass(frozen=True)
class Rung:
    title: str
    book: float  # the chapter's test accuracy, in percent
    layers: Callable[[int], list]  # the network's layers for a mini-batch size
    eta: float
    epochs: int
    lmbda: float = 0.0
    expanded: bool = False
    networks: int = 1  # more than one: an ensemble that votes


RUNGS = {
    1: Rung(
        "FC 100 sigmoid + softmax",
        97.80,
        lambda m: [FullyConnectedLayer(n_in=784, n_out=100), SoftmaxLayer(n_in=100, n_out=10)],
        0.1,
        60,
    ),
    2: Rung(
        "conv-pool 20 + FC 100 + softmax",
        98.78,
        lambda m: [
            ConvPoolLayer(image_shape=(m, 1, 28, 28), filter_shape=(20, 1, 5, 5), poolsize=(2, 2)),
            FullyConnectedLayer(n_in=20 * 12 * 12, n_out=100),
            SoftmaxLayer(n_in=100, n_out=10),
        ],
        0.1,
        60,
    ),
    3: Rung(
        "conv-pool 20, conv-pool 40 + FC 100 + softmax",
        99.06,
        lambda m: [*conv_layers(m, sigmoid), FullyConnectedLayer(n_in=40 * 4 * 4, n_out=100), SoftmaxLayer(100, 10)],
        0.1,
        60,
    ),
    4: Rung("rung 3 with ReLU, eta 0.03, lambda 0.1", 99.23, relu_net, 0.03, 60, lmbda=0.1),
    5: Rung("rung 4 on the expanded data", 99.37, relu_net, 0.03, 60, lmbda=0.1, expanded=True),
    6: Rung(
        "rung 5 with a second FC 100",
        99.43,
        lambda m: [
            *relu_net(m)[:-1],
            FullyConnectedLayer(n_in=100, n_out=100, activation_fn=ReLU),
            SoftmaxLayer(100, 10),
        ],
        0.03,
        60,
        lmbda=0.1,
        expanded=True,
    ),
    7: Rung("two FC 1000 ReLU with dropout 0.5, 40 epochs", 99.60, dropout_net, 0.03, 40, expanded=True),
    8: Rung("an ensemble of five rung-7 networks", 99.67, dropout_net, 0.03, 40, expanded=True, networks=ENSEMBLE),
}


def expanded(data: tuple[torch.Tensor, torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` and its one-pixel shifts (five images an image, :func:`expand_by_shifts`), shuffled once by ``seed``."""
    x, y = data
    images, labels = expand_by_shifts(x.reshape(-1, MNIST_SIZE, MNIST_SIZE), y)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return images.reshape(len(labels), -1)[order], labels[order]


@torch.no_grad()
def predictions(net: Network, x: torch.Tensor) -> torch.Tensor:
    """The network's most active output for each row of ``x`` (whole mini-batches, as its accuracy counts them)."""
    rows = len(x) // net.mini_batch_size * net.mini_batch_size
    out = []
    for start in range(0, rows, network3.EVAL_ROWS):
        inpt = x[start : min(start + network3.EVAL_ROWS, rows)]
        for layer in net.layers:
            inpt = layer(inpt)
        out.append(inpt.argmax(1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rung", type=int, required=True, choices=sorted(RUNGS))
    parser.add_argument("--epochs", type=int, help="instead of the chapter's (60, or 40 for rungs 7 and 8)")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed before the network is drawn")
    parser.add_argument("--train-size", type=int, help="train on the first N training images (before expansion)")
    parser.add_argument("--eval-size", type=int, help="validate and test on the first N images of each")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/ch6"))
    args = parser.parse_args(argv)
    rung = RUNGS[args.rung]
    epochs = rung.epochs if args.epochs is None else args.epochs

    training_data, validation_data, test_data = network3.load_data_shared()
    if args.train_size:
        training_data = tuple(t[: args.train_size] for t in training_data)
    if args.eval_size:
        validation_data, test_data = (tuple(t[: args.eval_size] for t in d) for d in (validation_data, test_data))
    if rung.expanded:
        training_data = expanded(training_data, args.seed)

    start = time.perf_counter()
    nets, votes = [], torch.zeros(len(test_data[1]) // MINI_BATCH_SIZE * MINI_BATCH_SIZE, 10, dtype=torch.int64)
    for k in range(rung.networks):
        torch.manual_seed(args.seed + k)
        net = Network(rung.layers(MINI_BATCH_SIZE), MINI_BATCH_SIZE)
        net.SGD(training_data, epochs, MINI_BATCH_SIZE, rung.eta, validation_data, test_data, lmbda=rung.lmbda)
        votes[torch.arange(len(votes)), predictions(net, test_data[0])] += 1
        nets.append(net)
    seconds_per_epoch = (time.perf_counter() - start) / (epochs * rung.networks)

    result = {
        "rung": args.rung,
        "title": rung.title,
        "command": shlex.join(["python", "experiments/chapter6.py", *(sys.argv[1:] if argv is None else argv)]),
        "epochs": epochs,
        "book_epochs": rung.epochs,
        "reduced_epochs": epochs < rung.epochs,  # True: fewer epochs than the chapter's, the figure not comparable
        "book_test_accuracy_percent": rung.book,
        "test_accuracy_percent": round(100 * nets[0].test_accuracy, 2),
        "best_validation_accuracy_percent": round(100 * nets[0].best_validation_accuracy, 2),
        "best_iteration": nets[0].best_iteration,
        "validation_accuracies_percent": [round(100 * a, 2) for a in nets[0].validation_accuracies],
        "seconds_per_epoch": round(seconds_per_epoch, 2),
        "train_size": len(training_data[1]),
        "eval_size": len(test_data[1]),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if rung.networks > 1:  # the vote of the networks' final states (the book does not say which epoch's)
        labels = test_data[1][: len(votes)]
        result["ensemble_test_accuracy_percent"] = round(100 * float((votes.argmax(1) == labels).double().mean()), 2)
        result["member_test_accuracies_percent"] = [round(100 * net.test_accuracy, 2) for net in nets]
        result["member_validation_accuracies_percent"] = [
            [round(100 * a, 2) for a in net.validation_accuracies] for net in nets
        ]
    ours = result.get("ensemble_test_accuracy_percent", result["test_accuracy_percent"])
    reduced = f" (reduced from the book's {rung.epochs})" if epochs < rung.epochs else ""
    print(
        f"rung {args.rung} ({rung.title}): ours {ours:.2f}% test accuracy, the book's {rung.book:.2f}%; "
        f"{epochs} epochs{reduced} on {result['train_size']} images, {seconds_per_epoch:.1f} s an epoch"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rung{args.rung}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
