"""Population: K networks stepped together, each member exactly a lone Network trained with sgd_step on the same
batches (the lone Network's step is itself tested against autograd and the book's per-example algorithm)."""

import io

import pytest
import torch

from torch_manualbp import Network
from torch_manualbp.population import Population

SIZES = [6, 5, 4, 3]  # two hidden layers: the stacked first layer, a batched middle one and the output layer
ETAS = [0.5, 3.0, 1.5]
LMBDAS = [0.0, 5.0, 2.0]


def members(k=3, sizes=SIZES, cost="quadratic", dtype=torch.float64, seed=0) -> list[Network]:
    torch.manual_seed(seed)
    return [Network(sizes, cost=cost, dtype=dtype) for _ in range(k)]


def batches(count, sizes=SIZES, n=7, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(n, sizes[0], dtype=dtype, generator=g), torch.randint(0, sizes[-1], (n,), generator=g))
        for _ in range(count)
    ]


def parameters(pop: Population) -> list[torch.Tensor]:
    return [p.detach().clone() for p in pop.parameters()]


def assert_members_equal(pop: Population, lone: list[Network], atol: float) -> None:
    for k, net in enumerate(lone):
        for mine, theirs in zip(pop.network(k).parameters(), net.parameters()):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=atol)


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
@pytest.mark.parametrize("lmbda", [0.0, LMBDAS], ids=["no_l2", "l2_per_member"])
@pytest.mark.parametrize("sizes", [SIZES, [6, 3]], ids=["three_layers", "one_layer"])
def test_each_member_trains_like_a_lone_network_float64(cost, lmbda, sizes):
    lone = members(sizes=sizes, cost=cost)
    pop = Population(members(sizes=sizes, cost=cost))
    lmbdas = lmbda if isinstance(lmbda, list) else [lmbda] * 3
    for x, y in batches(6, sizes):
        costs = pop.sgd_step(x, y, ETAS, lmbda, n=50)
        lone_costs = torch.stack([net.sgd_step(x, y, eta, lm, n=50) for net, eta, lm in zip(lone, ETAS, lmbdas)])
        torch.testing.assert_close(costs, lone_costs, rtol=0, atol=1e-10)
    assert_members_equal(pop, lone, atol=1e-10)


def test_members_agree_with_lone_networks_in_float32_to_its_rounding():
    sizes = [784, 30, 10]
    lone = members(sizes=sizes, dtype=torch.float32)
    pop = Population(members(sizes=sizes, dtype=torch.float32))
    for x, y in batches(20, sizes, n=10, dtype=torch.float32):
        costs = pop.sgd_step(x, y, ETAS)
        lone_costs = torch.stack([net.sgd_step(x, y, eta) for net, eta in zip(lone, ETAS)])
        torch.testing.assert_close(costs, lone_costs, rtol=0, atol=1e-5)
    # 20 steps of η up to 3 on weights of order 1: float32 rounding (6e-8 relative) accumulates to about 1e-6
    assert_members_equal(pop, lone, atol=1e-5)


def test_one_eta_and_one_lmbda_apply_to_every_member():
    lone = members()
    pop = Population(members())
    for x, y in batches(3):
        pop.sgd_step(x, y, eta=torch.tensor(2.0), lmbda=4.0, n=30)
        for net in lone:
            net.sgd_step(x, y, 2.0, 4.0, n=30)
    assert_members_equal(pop, lone, atol=1e-10)


def test_eta_as_a_1d_tensor_gives_each_member_its_own():
    lone = members()
    pop = Population(members())
    for x, y in batches(3):
        pop.sgd_step(x, y, torch.tensor(ETAS))
        for net, eta in zip(lone, ETAS):
            net.sgd_step(x, y, eta)
    assert_members_equal(pop, lone, atol=1e-10)


def test_output_is_each_members_network_output():
    nets = members()
    pop = Population(nets)
    x = batches(1)[0][0]
    out = pop(x)
    assert out.shape == (3, 7, SIZES[-1])
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(x), rtol=0, atol=1e-15)


def test_network_k_is_a_standalone_copy_of_member_k():
    nets = members()
    pop = Population(nets)
    x, y = batches(1)[0]
    pop.sgd_step(x, y, ETAS)
    copy = pop.network(1)
    assert copy.sizes == SIZES and copy.cost_name == "quadratic" and len(pop) == 3
    (weights, biases), (member_weights, member_biases) = copy.weights_and_biases(), pop.member_parameters(1)
    for mine, member in zip(weights + biases, member_weights + member_biases):
        assert torch.equal(mine, member)
    before = parameters(pop)
    copy.sgd_step(x, y, 1.0)  # training the copy leaves the population alone
    assert all(torch.equal(a, b) for a, b in zip(before, parameters(pop)))


def test_network_k_draws_no_random_numbers():
    pop = Population(members())
    state = torch.random.get_rng_state()
    pop.network(0)
    assert torch.equal(state, torch.random.get_rng_state())


def test_the_given_networks_are_left_alone():
    nets = members()
    before = [[p.detach().clone() for p in net.parameters()] for net in nets]
    pop = Population(nets)
    for x, y in batches(2):
        pop.sgd_step(x, y, ETAS)
    for net, saved in zip(nets, before):
        assert all(torch.equal(p, q) for p, q in zip(net.parameters(), saved))


@pytest.mark.parametrize(
    "networks, error, match",
    [
        ([], ValueError, "at least one Network"),
        (Network(SIZES), TypeError, "networks must be a list of Networks"),
        ([Network(SIZES), "net"], TypeError, r"networks\[1\] must be a Network"),
        ([Network(SIZES), Network([6, 5, 3])], ValueError, "same sizes"),
        ([Network(SIZES), Network(SIZES, cost="cross_entropy")], ValueError, "same cost"),
        (
            [Network(SIZES), Network(SIZES, dtype=torch.float64)],
            TypeError,
            r"networks\[1\]'s weights must have the dtype",
        ),
    ],
)
def test_members_that_do_not_match_are_refused(networks, error, match):
    with pytest.raises(error, match=match):
        Population(networks)


def _bad_steps():
    x, y = batches(1)[0]
    return [
        ("eta of the wrong length", dict(x=x, y=y, eta=[1.0, 2.0]), ValueError, "eta must be one number or 3 numbers"),
        ("a negative eta", dict(x=x, y=y, eta=[1.0, -2.0, 1.0]), ValueError, "eta must be a positive"),
        ("a NaN eta", dict(x=x, y=y, eta=float("nan")), ValueError, "eta must be a positive"),
        ("eta not a number", dict(x=x, y=y, eta="3"), TypeError, "eta must be a real number"),
        (
            "lmbda of the wrong length",
            dict(x=x, y=y, eta=1.0, lmbda=[1.0] * 4, n=50),
            ValueError,
            "lmbda must be one number or 3 numbers",
        ),
        (
            "a negative lmbda",
            dict(x=x, y=y, eta=1.0, lmbda=[0.0, 1.0, -1.0], n=50),
            ValueError,
            "lmbda must be a finite",
        ),
        (
            "lmbda without n",
            dict(x=x, y=y, eta=1.0, lmbda=[0.0, 1.0, 0.0]),
            TypeError,
            "n must be the training-set size",
        ),
        ("x of the wrong width", dict(x=x[:, :5], y=y, eta=1.0), ValueError, "x must be a non-empty mini-batch of"),
        ("an empty x", dict(x=x[:0], y=y[:0], eta=1.0), ValueError, "x must be a non-empty mini-batch"),
        ("x of another dtype", dict(x=x.float(), y=y, eta=1.0), TypeError, "x must have the dtype"),
        ("integer x", dict(x=(x * 10).long(), y=y, eta=1.0), TypeError, "x must be a floating-point tensor"),
        ("a label out of range", dict(x=x, y=torch.full_like(y, 3), eta=1.0), ValueError, r"labels y must lie in 0..2"),
        ("y of the wrong length", dict(x=x, y=y[:3], eta=1.0), ValueError, "integer labels y must have shape"),
        (
            "float y of the wrong shape",
            dict(x=x, y=torch.zeros(7, 4, dtype=torch.float64), eta=1.0),
            ValueError,
            "a float target y must have the shape",
        ),
    ]


@pytest.mark.parametrize("case", _bad_steps(), ids=[case[0] for case in _bad_steps()])
def test_a_refused_step_leaves_every_member_untouched(case):
    _, kwargs, error, match = case
    pop = Population(members())
    x, y = batches(1, seed=5)[0]
    pop.sgd_step(x, y, ETAS)  # a step first, so that the cached step tensors of a valid call exist
    before = parameters(pop)
    with pytest.raises(error, match=match):
        pop.sgd_step(**kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, parameters(pop)))


@pytest.mark.parametrize("k, error", [(3, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_network_of_a_missing_member_is_refused(k, error):
    with pytest.raises(error, match="k must be"):
        Population(members()).network(k)


def test_a_state_dict_round_trip_continues_bit_identically():
    data = batches(6)
    pop = Population(members(cost="cross_entropy"))
    for x, y in data[:3]:
        pop.sgd_step(x, y, ETAS, LMBDAS, n=50)
    buffer = io.BytesIO()
    torch.save(pop.state_dict(), buffer)
    resumed = Population(members(cost="cross_entropy", seed=9))  # other parameters, overwritten by the load
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for x, y in data[3:]:
        costs = pop.sgd_step(x, y, ETAS, LMBDAS, n=50)
        assert torch.equal(resumed.sgd_step(x, y, ETAS, LMBDAS, n=50), costs)
    assert all(torch.equal(a, b) for a, b in zip(parameters(pop), parameters(resumed)))


def test_a_state_dict_of_another_cost_is_refused():
    state = Population(members(cost="cross_entropy")).state_dict()
    with pytest.raises(ValueError, match="the state dict is of a population with"):
        Population(members()).load_state_dict(state)


def test_eta_comparison_members_equal_three_lone_networks_on_real_mnist():
    # the script's run() on the first 200 real training images, 2 epochs: each member's training cost equals a lone
    # Network given the same start, the same mini-batches and its η, with network2's total_cost computed here
    from conftest import DATA_DIR, import_experiment

    eta_comparison = import_experiment("eta_comparison")
    x, labels = eta_comparison.training_set(DATA_DIR)
    x, labels = x[:200], labels[:200]
    costs = eta_comparison.run(x, labels, epochs=2, seed=3)

    torch.manual_seed(3)
    start = Network([784, 30, 10], cost="cross_entropy")
    lone = {eta: Network([784, 30, 10], cost="cross_entropy") for eta in eta_comparison.ETAS}
    for net in lone.values():
        net.load_state_dict(start.state_dict())
    order = torch.Generator().manual_seed(3)
    for epoch in range(2):
        permutation = torch.randperm(200, generator=order)
        for i in range(0, 200, 10):
            batch = permutation[i : i + 10]
            for eta, net in lone.items():
                net.sgd_step(x[batch], labels[batch], eta, lmbda=5.0, n=200)
        for eta, net in lone.items():
            with torch.no_grad():
                cross_entropy = torch.nn.functional.binary_cross_entropy(net(x), torch.eye(10)[labels], reduction="sum")
                l2 = 0.5 * 5.0 / 200 * sum(layer.weight.square().sum() for layer in net.layers)
            assert costs[eta][epoch] == pytest.approx(float(cross_entropy / 200 + l2), rel=1e-4)
    assert costs[2.5][1] != costs[0.025][1]  # the members did train apart
