"""One engine for a network and a population: ``MiniBatchSGD(population, ...)`` trains K members on shared
mini-batches, each with its own η and λ, and returns each step's costs per member. Checked against plain autograd
SGD of each member alone (float64), and a population of one against the lone network it is."""

import copy

import pytest
import torch

from torch_manualbp import MiniBatchSGD, Network, Population
from torch_manualbp.sgd import build_native
from torch_manualbp.testing.reference import autograd_cost

F64 = dict(rtol=1e-10, atol=1e-12)
BACKENDS = ["eager", pytest.param("native", marks=pytest.mark.skipif(build_native() is not None, reason="no op"))]


def plain_sgd(network: Network, x, y, eta: float, lmbda: float, n: int, m: int):
    """network2.py's SGD in plain autograd on a copy of ``network``'s parameters: its parameters after the steps and
    each step's cost C₀ before its update."""
    params = [p.detach().clone().requires_grad_() for p in network.parameters()]
    costs = []
    for start in range(0, len(x), m):
        cost = autograd_cost(params, x[start : start + m], y[start : start + m], network.cost_name)
        grads = torch.autograd.grad(cost, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if p.ndim == 2:
                    p.mul_(1 - eta * lmbda / n)  # L2: w → (1 − ηλ/n) w, the biases not
                p -= eta * g
        costs.append(cost.detach())
    return [p.detach() for p in params], torch.stack(costs)


def members(k: int, cost: str = "cross_entropy") -> list[Network]:
    torch.manual_seed(11)
    return [Network([12, 7, 5, 4], init="normal", cost=cost, dtype=torch.float64) for _ in range(k)]


def data(rows: int = 47):
    torch.manual_seed(12)
    x = torch.rand(rows, 12, dtype=torch.float64)
    return x, torch.eye(4, dtype=torch.float64)[torch.randint(0, 4, (rows,))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_population_of_one_makes_the_lone_networks_steps_float64(backend):
    (net,) = members(1)
    population = Population([net])
    x, y = data()
    want = MiniBatchSGD(net, 10, 5.0, 1000, backend=backend).run(x, y, 0.5)  # trains net itself
    engine = MiniBatchSGD(population, 10, [5.0], 1000, backend=backend)
    got = engine.run(x, y, [0.5])
    assert got.shape == (5, 1)  # ⌈47/10⌉ steps, one member
    torch.testing.assert_close(got[:, 0], want, **F64)
    for mine, lone in zip(population.network(0).parameters(), net.parameters()):
        torch.testing.assert_close(mine, lone, **F64)
    if backend == "native":
        assert engine.uses_native()


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_member_with_its_own_eta_and_lmbda_makes_plain_sgds_steps_alone_float64(backend):
    nets = members(3)
    population = Population(nets)
    x, y = data()
    etas, lmbdas = [0.025, 0.25, 2.5], [0.0, 5.0, 1.0]  # chapter 3's three η; λ per member too
    costs = MiniBatchSGD(population, 10, lmbdas, 1000, backend=backend).run(x, y, etas)
    assert costs.shape == (5, 3)
    for k, (net, eta, lmbda) in enumerate(zip(nets, etas, lmbdas)):
        params, want_costs = plain_sgd(net, x, y, eta, lmbda, 1000, 10)
        torch.testing.assert_close(costs[:, k], want_costs, **F64)
        for got, want in zip(population.network(k).parameters(), params):
            torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_members_with_l1_and_dropout_take_the_lone_engines_steps(backend):
    # L1 and dropout are the per-member engines' (each member draws its own masks, as a lone run of it would)
    nets = members(2, cost="quadratic")
    lone = copy.deepcopy(nets)
    x, y = data(40)
    torch.manual_seed(5)
    population = Population(nets)
    costs = MiniBatchSGD(population, 10, 2.0, 100, backend, regularization="l1", dropout=0.5).run(x, y, 3.0)
    torch.manual_seed(5)
    engines = [MiniBatchSGD(net, 10, 2.0, 100, backend, regularization="l1", dropout=0.5) for net in lone]
    want = torch.stack([engine.run(x, y, 3.0) for engine in engines], dim=1)
    torch.testing.assert_close(costs, want, **F64)
    for k, net in enumerate(lone):
        torch.testing.assert_close(list(population.network(k).parameters()), list(net.parameters()), **F64)


def test_a_population_run_resumes_its_members_dropout_masks_from_the_generator_state():
    x, y = data(40)
    torch.manual_seed(6)
    whole = MiniBatchSGD(Population(members(2)), 10, dropout=0.5)
    torch.manual_seed(6)
    resumed_population = Population(members(2))
    first = MiniBatchSGD(resumed_population, 10, dropout=0.5)
    uninterrupted = whole.run(x, y, 0.5)
    first.run(x[:20], y[:20], 0.5)
    state = first.generator_state()
    assert state.shape[0] == 2  # one state per member
    second = MiniBatchSGD(resumed_population, 10, dropout=0.5)
    second.set_generator_state(state)
    torch.testing.assert_close(second.run(x[20:], y[20:], 0.5), uninterrupted[2:], **F64)
    torch.testing.assert_close(list(resumed_population.parameters()), list(whole.population.parameters()), **F64)


def test_a_bad_eta_or_lmbda_for_a_population_is_one_error_before_any_member_steps():
    population = Population(members(3))
    before = [p.detach().clone() for p in population.parameters()]
    x, y = data()
    with pytest.raises(ValueError, match=r"eta must be one number or 3 numbers \(one per member\), got 2"):
        MiniBatchSGD(population, 10, backend="native").run(x, y, [0.5, 0.5])
    with pytest.raises(ValueError, match="eta must be"):
        MiniBatchSGD(population, 10, backend="native").run(x, y, [0.5, -1.0, 0.5])
    with pytest.raises(ValueError, match=r"lmbda must be one number or 3 numbers"):
        MiniBatchSGD(population, 10, [1.0, 2.0], 100)
    with pytest.raises(TypeError, match="network must be a Network or a Population, got list"):
        MiniBatchSGD(members(2), 10)
    with pytest.raises(TypeError, match="lmbda must be a real number"):
        MiniBatchSGD(members(1)[0], 10, [1.0], 100)  # one λ per member is a population's, not a network's
    for p, saved in zip(population.parameters(), before):
        assert torch.equal(p, saved)


def test_rewinding_a_stacked_population_restores_its_parameters_before_the_step():
    population = Population(members(3))
    x, y = data(40)
    engine = MiniBatchSGD(population, 10, backend="eager")  # eager: the members step stacked, Population.sgd_steps
    reference = Population(members(3))
    MiniBatchSGD(reference, 10, backend="eager").run(x[:20], y[:20], 0.5)  # steps 0 and 1 only
    engine.run(x, y, 0.5)
    assert engine.rewind(2)
    torch.testing.assert_close(list(population.parameters()), list(reference.parameters()), **F64)
    assert not engine.rewind(4)
