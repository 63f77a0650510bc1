"""``Network(sizes, activation=...)``: hidden layers of tanh, ReLU or linear neurons (the output layer stays the
cost's) through every path of the core, each against the same network written in plain torch ops and differentiated
by autograd, in float64: ``backprop``, ``cost`` (the whole-network node), ``layered_cost`` (the per-layer Functions),
``sgd_step`` against autograd + SGD, a ``Population`` of them, ``gradient_statistics`` and ``record_errors``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from torch_manualbp import MiniBatchSGD, Network, Population
from torch_manualbp.observe import gradient_statistics, record_errors

F64 = dict(rtol=1e-10, atol=1e-12)
SIZES = [6, 5, 4, 3]
PLAIN = {"tanh": torch.tanh, "relu": torch.relu, "linear": lambda z: z, "sigmoid": torch.sigmoid}
ACTIVATIONS = ["tanh", "relu", "linear"]
COSTS = ["quadratic", "cross_entropy", "log_likelihood"]


def plain_cost(params, x, labels, cost: str, activation: str) -> torch.Tensor:
    """The network's mean cost in plain torch ops: f for the hidden layers, the cost's own output layer."""
    f, a = PLAIN[activation], x
    *hidden, (w_out, b_out) = list(zip(params[0::2], params[1::2]))
    for w, b in hidden:
        a = f(a @ w.T + b)
    z = a @ w_out.T + b_out
    y = F.one_hot(labels, SIZES[-1]).to(z.dtype)
    if cost == "quadratic":
        return 0.5 * ((torch.sigmoid(z) - y) ** 2).sum(1).mean()
    if cost == "cross_entropy":
        return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(x)
    return F.cross_entropy(z, labels)


def setup(cost: str, activation: str, seed: int = 0):
    torch.manual_seed(seed)
    net = Network(SIZES, cost=cost, activation=activation, dtype=torch.float64)
    x, labels = torch.randn(8, SIZES[0], dtype=torch.float64), torch.randint(0, SIZES[-1], (8,))
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    grads = torch.autograd.grad(plain_cost(params, x, labels, cost, activation), params)
    return net, x, labels, params, grads


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backprop_cost_and_layered_cost_give_autograds_gradients_float64(activation, cost):
    net, x, labels, _, grads = setup(cost, activation)
    result = net.backprop(x, labels)
    mine = [g for pair in zip(result.nabla_w, result.nabla_b) for g in pair]
    for got, want in zip(mine, grads):
        torch.testing.assert_close(got, want, **F64)
    for how in (net.cost, net.layered_cost):
        for got, want in zip(torch.autograd.grad(how(x, labels), list(net.parameters())), grads):
            torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_sgd_step_equals_autograd_and_plain_sgd_float64(activation, cost):
    net, x, labels, params, grads = setup(cost, activation)
    net.sgd_step(x, labels, eta=0.5)
    for got, p, g in zip(net.parameters(), params, grads):
        torch.testing.assert_close(got, p - 0.5 * g, **F64)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_the_engine_and_a_population_make_the_networks_steps_float64(activation):
    net, x, labels, _, _ = setup("cross_entropy", activation)
    lone, engine = copy.deepcopy(net), copy.deepcopy(net)
    for start in range(0, 8, 4):
        lone.sgd_step(x[start : start + 4], labels[start : start + 4], eta=0.5)
    said = []
    MiniBatchSGD(engine, 4, backend="native", on_compile=said.append).run(x, labels, 0.5)
    assert said and f"sigmoid neurons only, not {activation}" in said[0]  # the native loop says it steps eagerly
    population = Population([copy.deepcopy(net), copy.deepcopy(net)])
    MiniBatchSGD(population, 4, backend="eager").run(x, labels, [0.5, 0.5])
    for other in (engine, population.network(0), population.network(1)):
        for got, want in zip(other.parameters(), lone.parameters()):
            torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_statistics_and_record_errors_see_every_layer_of_another_activation(activation):
    net, x, labels, params, _ = setup("quadratic", activation)
    per_example = [
        torch.autograd.grad(plain_cost(params, x[i : i + 1], labels[i : i + 1], "quadratic", activation), params)
        for i in range(len(x))
    ]
    stats = gradient_statistics(net, x, labels)
    for l, layer in enumerate(stats.layers):
        w_grads = torch.stack([grads[2 * l] for grads in per_example])  # each example's ∂C_x/∂Wˡ
        torch.testing.assert_close(layer.weight.mean, w_grads.mean(0), **F64)
        torch.testing.assert_close(layer.weight.variance, w_grads.var(0, unbiased=False), **F64)
    with record_errors() as record:
        net.cost(x, labels).backward()
    assert len(record.for_network(net)) == len(SIZES) - 1  # every layer, the hidden ones of `activation` too


def test_a_network_of_another_activation_starts_from_the_sigmoid_networks_numbers_and_says_its_activation():
    torch.manual_seed(3)
    sigmoid = Network(SIZES, init="normal")
    torch.manual_seed(3)
    relu = Network(SIZES, init="normal", activation="relu")
    for a, b in zip(sigmoid.parameters(), relu.parameters()):
        assert torch.equal(a, b)
    assert "activation='relu'" in repr(relu) and "activation" not in repr(sigmoid)
    with pytest.raises(ValueError, match="^activation must be one of"):
        Network(SIZES, activation="softplus")
    with pytest.raises(ValueError, match="^networks must all have the same activation"):
        Population([Network(SIZES), Network(SIZES, activation="tanh")])
