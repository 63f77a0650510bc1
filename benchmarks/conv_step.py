r"""One training step of chapter 6's first convolutional network, the hand-written backward against plain autograd.

The network (``network3.py``'s first conv net): ``ConvPool2d(1, 20, 5, pool_size=2)`` on 28 x 28 inputs, a
fully-connected layer of 100 sigmoid neurons, and a 10-way softmax output with the log-likelihood cost; a mini-batch
of 10, one intra-op thread. One step is: the gradients set to ``None``, forward, cost, backward,
``torch.optim.SGD(lr=0.1).step()``.

- ``ours``: ``torch_manualbp.nn.ConvPool2d`` + ``nn.Flatten`` + ``FullyConnected(2880, 100)`` +
  ``FullyConnected(100, 10, activation="linear")`` + ``LogLikelihoodCost`` (every backward hand-written);
- ``fused``: the same layers stepped by :func:`torch_manualbp.sequential.sgd_step`: the same equations with no
  autograd graph and no optimizer;
- ``autograd``: ``nn.Conv2d`` + ``F.max_pool2d`` + ``torch.sigmoid`` + ``nn.Linear`` + ``torch.sigmoid`` +
  ``nn.Linear`` + ``F.cross_entropy``, with the same parameters.

The two run in turns (``torch_manualbp.testing.timing.interleaved``), so that drift of the machine falls on both; the
median seconds per step of each and their ratio are printed. The gradients of one step are compared first.

To run::

    python -m benchmarks.conv_step [--repeats 21]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

from torch_manualbp.nn import ConvPool2d, FullyConnected, LogLikelihoodCost
from torch_manualbp.sequential import sgd_step
from torch_manualbp.testing.timing import interleaved, machine_info, median

MINI_BATCH_SIZE, ETA = 10, 0.1  # chapter 6's mini-batch size and learning rate


class PlainConvNet(nn.Module):
    """The same network from torch's own layers, differentiated by autograd."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 20, 5)
        self.hidden = nn.Linear(20 * 12 * 12, 100)
        self.output = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(F.max_pool2d(self.conv(x), 2)).flatten(1)  # (N, 2880)
        return self.output(torch.sigmoid(self.hidden(a)))  # the logits z, (N, 10)


def networks() -> tuple[nn.Module, nn.Module]:
    """Chapter 6's network twice, ours and the plain one, with the same parameters."""
    ours = nn.Sequential(
        ConvPool2d(1, 20, 5, pool_size=2),
        nn.Flatten(),
        FullyConnected(20 * 12 * 12, 100),
        FullyConnected(100, 10, activation="linear"),
    )
    plain = PlainConvNet()
    with torch.no_grad():
        for theirs, mine in zip(plain.parameters(), ours.parameters(), strict=True):
            theirs.copy_(mine)
    return ours, plain


def step_function(model: nn.Module, cost, x: torch.Tensor, y: torch.Tensor):
    """One SGD step of ``model`` on ``(x, y)``, as a function of no arguments."""
    optimizer = torch.optim.SGD(model.parameters(), lr=ETA)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        cost(model(x), y).backward()
        optimizer.step()

    return step


def check_gradients(ours: nn.Module, plain: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The largest difference between the two networks' gradients on one mini-batch (float32)."""
    mine = torch.autograd.grad(LogLikelihoodCost()(ours(x), y), list(ours.parameters()))
    theirs = torch.autograd.grad(F.cross_entropy(plain(x), y), list(plain.parameters()))
    return max((a - b).abs().max().item() for a, b in zip(mine, theirs, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv_step", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed samples of each contender")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ours, plain = networks()
    x, y = torch.rand(MINI_BATCH_SIZE, 1, 28, 28), torch.randint(0, 10, (MINI_BATCH_SIZE,))
    print(f"largest gradient difference, ours - autograd (float32): {check_gradients(ours, plain, x, y):.2e}")
    fused = copy.deepcopy(ours)
    contenders = {
        "fused": lambda: sgd_step(fused, x, y, ETA),
        "ours": step_function(ours, LogLikelihoodCost(), x, y),
        "autograd": step_function(plain, F.cross_entropy, x, y),
    }
    samples, calls = interleaved(contenders, repeats=args.repeats)
    info = machine_info()
    print(
        f"torch {info['torch']}, {info['cpu']}, {torch.get_num_threads()} thread, mini-batch {MINI_BATCH_SIZE}, "
        f"load average {info['load_average']}"
    )
    for name, times in samples.items():
        print(
            f"{name:>8}: median {median(times) * 1e3:.3f} ms per step ({args.repeats} samples of {calls[name]} steps)"
        )
    for name in ("fused", "ours"):
        print(f"ratio {name} / autograd: {median(samples[name]) / median(samples['autograd']):.3f}")


if __name__ == "__main__":
    main()
