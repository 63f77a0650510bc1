"""The chapter's demon (observe.nudge_weighted_input): adding Δz to one neuron's weighted input changes the cost by
δ Δz to first order, and the helper leaves the network as it found it. The truth is a plain-torch forward pass with
the nudge written into it, differentiated by autograd; the package's backward is not used."""

import pytest
import torch

from torch_manualbp import Network
from torch_manualbp.functional import quadratic_cost
from torch_manualbp.observe import nudge_weighted_input

SIZES = [6, 5, 4, 3]
EPS = torch.finfo(torch.float64).eps


def network_and_batch(seed=0, n=7):
    torch.manual_seed(seed)
    net = Network(SIZES, init="normal", dtype=torch.float64)
    x = torch.rand(n, SIZES[0], dtype=torch.float64)
    labels = torch.randint(0, SIZES[-1], (n,))
    return net, x, labels


def plain_costs(net, x, labels, layer, neuron, t):
    """C_x for every example, with t[x] added to z^l_j of example x: plain torch ops, not the package's Functions."""
    a = x
    for i, module in enumerate(net.layers):
        z = a @ module.weight.detach().T + module.bias.detach()
        if i == layer:
            z = z + torch.nn.functional.one_hot(torch.tensor(neuron), z.shape[1]).to(z) * t[:, None]
        a = torch.sigmoid(z)
    y = torch.nn.functional.one_hot(labels, SIZES[-1]).to(a)
    return 0.5 * ((a - y) ** 2).sum(1)


def derivatives(net, x, labels, layer, neuron, t):
    """dC_x/dt, d²C_x/dt² and d³C_x/dt³ at t, per example: C_x depends on t[x] only, so each is a gradient of a sum."""
    t = t.clone().requires_grad_(True)
    orders = []
    value = plain_costs(net, x, labels, layer, neuron, t).sum()
    for _ in range(3):
        (value,) = torch.autograd.grad(value, t, create_graph=True)
        orders.append(value.detach())
        value = value.sum()
    return orders


@pytest.mark.parametrize("h", [1e-3, -1e-3, 1e-2])
def test_cost_change_is_delta_times_delta_z_to_first_order_float64(h):
    # Taylor with Lagrange's remainder: ΔC − δ Δz = ½ C''(ξ) Δz² for some ξ between 0 and Δz. |C''| on that interval is
    # at most its largest value on 5 evenly spaced points plus (|Δz|/8) max |C'''| (between points h/4 apart a function
    # whose slope is at most M rises at most M h/8 above both ends). Each cost is a sum of ~40 rounded operations, so
    # the two costs subtracted carry at most 64 ε (|C| + 1) of rounding.
    net, x, labels = network_and_batch()
    before = quadratic_cost(net(x), labels, reduction="none").detach()
    n = len(x)
    informative = 0
    for layer in range(len(net.layers)):
        for neuron in range(SIZES[layer + 1]):
            with nudge_weighted_input(net.layers[layer], neuron, h) as nudged:
                after = quadratic_cost(net(x), labels, reduction="none").detach()
            assert nudged.count == 1
            delta, _, _ = derivatives(net, x, labels, layer, neuron, torch.zeros(n, dtype=torch.float64))
            grid = [
                derivatives(net, x, labels, layer, neuron, torch.full((n,), s * h, dtype=torch.float64))
                for s in torch.linspace(0, 1, 5).tolist()
            ]
            second = torch.stack([g[1].abs() for g in grid]).amax(0)
            third = torch.stack([g[2].abs() for g in grid]).amax(0)
            bound = 0.5 * h**2 * (second + abs(h) / 8 * third) + 64 * EPS * (before.abs() + 1)
            error = (after - before - delta * h).abs()
            assert (error <= bound).all(), (layer, neuron, error, bound)
            informative += int((bound < 0.01 * (delta * h).abs()).sum())
    # the bound is far below δ Δz for most (neuron, example) pairs: a wrong δ or an unnudged forward would fail it
    assert informative > 0.8 * n * sum(SIZES[1:])


def test_cost_change_error_shrinks_like_delta_z_squared():
    # (ΔC − δ Δz)/Δz² → ½ C''(0): at Δz = 1e-2 and 1e-3 its two values differ by O(C''' Δz), not O(1)
    net, x, labels = network_and_batch(seed=1)
    layer, neuron = 1, 2
    before = quadratic_cost(net(x), labels, reduction="none").detach()
    delta, second, third = derivatives(net, x, labels, layer, neuron, torch.zeros(len(x), dtype=torch.float64))
    for h in (1e-2, 1e-3):
        with nudge_weighted_input(net.layers[layer], neuron, h):
            after = quadratic_cost(net(x), labels, reduction="none").detach()
        scaled = (after - before - delta * h) / h**2
        # |scaled − ½C''(0)| ≤ (|h|/6) sup|C'''|, about |h| |C'''(0)|/6; doubled for sup over [0, h]; plus rounding/h²
        slack = abs(h) / 3 * third.abs() + 64 * EPS * (before.abs() + 1) / h**2
        assert ((scaled - 0.5 * second).abs() <= slack).all(), (h, scaled, 0.5 * second, slack)


def test_nudge_leaves_the_network_unchanged_afterwards():
    net, x, labels = network_and_batch()
    params = {k: v.clone() for k, v in net.state_dict().items()}
    output = net(x).detach()
    with nudge_weighted_input(net.layers[1], 0, 0.5):
        assert not torch.equal(net(x).detach(), output)
    assert all(torch.equal(v, params[k]) for k, v in net.state_dict().items())
    assert torch.equal(net(x).detach(), output)
    assert not any(layer._forward_hooks for layer in net.layers)


def test_nudge_leaves_the_network_unchanged_when_the_block_raises():
    net, x, labels = network_and_batch()
    params = {k: v.clone() for k, v in net.state_dict().items()}
    output = net(x).detach()
    with pytest.raises(RuntimeError, match="inside the block"):
        with nudge_weighted_input(net.layers[0], 4, 2.0):
            net(x)
            raise RuntimeError("inside the block")
    assert all(torch.equal(v, params[k]) for k, v in net.state_dict().items())
    assert torch.equal(net(x).detach(), output)
    assert not any(layer._forward_hooks for layer in net.layers)


def test_nudged_cost_gradient_reaches_the_layer_bias_as_autograd_says():
    # inside the nudge, ∂C/∂b^l_j is δ^l_j at z + Δz: the plain forward's dC/dt at t = Δz, summed over the mean's 1/n
    net, x, labels = network_and_batch()
    h = 0.3
    with nudge_weighted_input(net.layers[1], 3, h):
        quadratic_cost(net(x), labels).backward()
    delta_at_h, _, _ = derivatives(net, x, labels, 1, 3, torch.full((len(x),), h, dtype=torch.float64))
    torch.testing.assert_close(net.layers[1].bias.grad[3], delta_at_h.mean(), rtol=1e-10, atol=1e-14)


def test_network_backprop_is_not_nudged_and_the_count_says_so():
    net, x, labels = network_and_batch()
    with nudge_weighted_input(net.layers[0], 1, 1.0) as nudged:
        net.backprop(x, labels)
        assert nudged.count == 0
        net(x)
        assert nudged.count == 1


@pytest.mark.parametrize(
    "args, error, message",
    [
        (("not a layer", 0, 0.1), TypeError, "layer must be a torch_manualbp.nn.SigmoidLinear"),
        ((None, 5, 0.1), ValueError, r"neuron must be an int in 0\.\.4"),
        ((None, 0, float("nan")), ValueError, "delta_z must be a finite number"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, error, message):
    net, _, _ = network_and_batch()
    layer, neuron, delta_z = args
    with pytest.raises(error, match=message):
        with nudge_weighted_input(net.layers[0] if layer is None else layer, neuron, delta_z):
            pass
