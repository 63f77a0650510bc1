r"""A first look: train a small Network with the hand-written backward, then gradcheck every Function.

The toy problem: points in the unit square, labelled by whether they lie inside a circle.
Network([2, 16, 2]) learns it by mini-batch SGD on the quadratic cost, the gradients coming from
``cost.backward()`` through the custom Functions; every few epochs it prints the cost, and how far
those gradients are from ``Network.backprop``'s matrix-form BP1-BP4 on the same batch.

To run::

    python experiments/toy_demo.py
"""

import torch

from torch_manualbp import Network
from torch_manualbp.functional import quadratic_cost
from torch_manualbp.gradcheck import default_cases, format_table, run_checks


def main(epochs: int = 300, batch_size: int = 16, eta: float = 3.0, seed: int = 0) -> None:
    torch.manual_seed(seed)
    x = torch.rand(512, 2)
    labels = ((x - 0.5).norm(dim=1) < 0.35).long()  # 1 inside the circle, 0 outside
    net = Network([2, 16, 2])
    print("epoch | cost C | accuracy | max |autograd-through-Functions − backprop|")
    for epoch in range(epochs + 1):
        if epoch % 50 == 0:
            report(epoch, net, x, labels)
        for batch in torch.randperm(len(x)).split(batch_size):
            net.zero_grad()
            quadratic_cost(net(x[batch]), labels[batch]).backward()  # BP1-BP4, written by hand
            with torch.no_grad():
                for p in net.parameters():
                    p -= eta * p.grad  # w → w − η ∂C/∂w, b → b − η ∂C/∂b
    print()
    print(format_table(run_checks(default_cases())))


def report(epoch: int, net: Network, x: torch.Tensor, labels: torch.Tensor) -> None:
    net.zero_grad()
    cost = quadratic_cost(net(x), labels)
    cost.backward()
    result = net.backprop(x, labels)
    autograd_grads = [g for layer in net.layers for g in (layer.weight.grad, layer.bias.grad)]
    backprop_grads = [g for pair in zip(result.nabla_w, result.nabla_b) for g in pair]
    gap = max((a - b).abs().max().item() for a, b in zip(autograd_grads, backprop_grads))
    accuracy = (net(x).argmax(1) == labels).float().mean().item()
    print(f"{epoch:5d} | {cost.item():.4f} | {accuracy:8.1%} | {gap:.1e}")


if __name__ == "__main__":
    main()
