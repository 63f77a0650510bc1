r"""Why backpropagation is fast: the full gradient by finite differences vs by backprop, as networks grow.

Chapter 2's "In what sense is backpropagation a fast algorithm?": estimating every ∂C/∂w_j by
(C(w + ε e_j) − C(w)) / ε costs one extra forward pass per weight, a million passes for a million weights,
while backpropagation gets all of them from one forward and one backward pass. This script measures both
on networks of growing size (float64, a mini-batch of 10; the two in alternating order through
:mod:`torch_manualbp.testing.timing`, medians of 3 samples), checks that they agree to the precision a
forward difference allows (error of order ε), and plots time against the number of parameters.

To run::

    python experiments/finite_differences.py    # writes experiments/results/finite_differences.{md,png}
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from torch_manualbp import Network  # noqa: E402
from torch_manualbp.functional import quadratic_cost  # noqa: E402
from torch_manualbp.testing.timing import interleaved, median  # noqa: E402

SIZES = [[10, 5, 3], [20, 10, 5], [50, 20, 10], [100, 30, 10], [300, 30, 10], [784, 30, 10]]
EPS = 1e-6  # forward-difference truncation error ~ ε·|C''|/2; float64 rounding ~ 1e-16/ε: both ≲ 1e-6 here


def finite_difference_gradient(
    net: Network, x: torch.Tensor, labels: torch.Tensor, eps: float = EPS
) -> list[torch.Tensor]:
    """∂C/∂p ≈ (C(p + ε) − C(p)) / ε for every weight and bias p, one extra forward pass each."""
    grads = []
    with torch.no_grad():
        base = quadratic_cost(net(x), labels)
        for param in net.parameters():
            grad = torch.empty_like(param)
            for j in range(param.numel()):
                old = param.view(-1)[j].item()
                param.view(-1)[j] = old + eps
                grad.view(-1)[j] = (quadratic_cost(net(x), labels) - base) / eps
                param.view(-1)[j] = old
            grads.append(grad)
    return grads


def backprop_gradient(net: Network, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """All of ∂C/∂p from one forward and one backward pass through the hand-written Functions."""
    net.zero_grad()
    quadratic_cost(net(x), labels).backward()
    return [p.grad.clone() for p in net.parameters()]


def seconds(net: Network, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Median seconds for the whole gradient by finite differences and by backprop, timed in alternating order.

    One finite-difference gradient of the largest network lasts seconds: it is one call per sample, without
    warm-up calls (its first call, in ``main``, warmed it up); backprop's samples hold enough calls to last 10 ms.
    """
    samples, _ = interleaved(
        {"finite differences": lambda: finite_difference_gradient(net, x, labels),
         "backprop": lambda: backprop_gradient(net, x, labels)},
        repeats=3, warmup=0, calls={"finite differences": 1},
    )  # fmt: skip
    return median(samples["finite differences"]), median(samples["backprop"])


def main(out: Path = Path("experiments/results")) -> None:
    # One thread: these tensors are tiny, and a second thread only adds contention noise to the timings.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for sizes in SIZES:
        net = Network(sizes, dtype=torch.float64)
        x = torch.rand(10, sizes[0], dtype=torch.float64)
        labels = torch.randint(0, sizes[-1], (10,))
        fd, bp = finite_difference_gradient(net, x, labels), backprop_gradient(net, x, labels)
        error = max((f - b).abs().max().item() for f, b in zip(fd, bp)) / max(b.abs().max().item() for b in bp)
        params = sum(p.numel() for p in net.parameters())
        fd_time, bp_time = seconds(net, x, labels)
        rows.append((sizes, params, fd_time, bp_time, error))
        print(
            f"{str(sizes):>14} {params:>7} params: finite differences {fd_time:.3f} s, backprop {1e3 * bp_time:.3f} ms"
        )
    out.mkdir(parents=True, exist_ok=True)
    table = [
        "| network | parameters | finite differences | backprop | ratio | max relative difference |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for sizes, params, fd_time, bp_time, error in rows:
        table.append(
            f"| {sizes} | {params:,} | {fd_time:.3f} s | {1e3 * bp_time:.3f} ms | {fd_time / bp_time:,.0f}x "
            f"| {error:.1e} |"
        )
    text = "\n".join(table)
    (out / "finite_differences.md").write_text(
        f"Command: `python experiments/finite_differences.py` (float64, mini-batch of 10, ε = {EPS:g}, one thread)"
        f"\n\n{text}\n"
    )
    plot(rows, out / "finite_differences.png")
    print(text)


def plot(rows, path: Path) -> None:
    params = [r[1] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.loglog(params, [r[2] for r in rows], "o-", label="finite differences: one forward pass per parameter")
    ax.loglog(params, [r[3] for r in rows], "s-", label="backpropagation: one forward + one backward pass")
    for p, fd_time, bp_time in zip(params, [r[2] for r in rows], [r[3] for r in rows]):
        ax.annotate(f"{fd_time / bp_time:,.0f}x", (p, (fd_time * bp_time) ** 0.5), ha="center", fontsize=8)
    ax.set(xlabel="number of weights and biases", ylabel="seconds for the full gradient",
           title="Why backpropagation is fast (mini-batch of 10, float64)")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
