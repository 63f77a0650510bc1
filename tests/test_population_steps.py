"""Population.sgd_steps (a block of mini-batches, checked once) and the checks a repeated step skips: each member of a
block equals a lone Network stepped with sgd_step on the same mini-batches, and a setting that changes is checked
again. Real MNIST runs of experiments/hyperparameters.py and experiments/chapter3.py against lone networks."""

import csv

import pytest
import torch

from torch_manualbp import Network
from torch_manualbp.population import Population

SIZES = [6, 5, 4, 3]
ETAS = [0.5, 3.0, 1.5]
LMBDAS = [0.0, 5.0, 2.0]


def members(k=3, sizes=SIZES, cost="quadratic", dtype=torch.float64, seed=0) -> list[Network]:
    torch.manual_seed(seed)
    return [Network(sizes, cost=cost, dtype=dtype) for _ in range(k)]


def block(rows, sizes=SIZES, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, sizes[0], dtype=dtype, generator=g), torch.randint(0, sizes[-1], (rows,), generator=g)


def parameters(pop: Population) -> list[torch.Tensor]:
    return [p.detach().clone() for p in pop.parameters()]


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy", "log_likelihood"])
@pytest.mark.parametrize("lmbda", [0.0, LMBDAS], ids=["no_l2", "l2_per_member"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "one_hot"])
def test_a_block_steps_each_member_like_a_lone_network_on_each_mini_batch_float64(cost, lmbda, labels):
    lone = members(cost=cost)
    pop = Population(members(cost=cost))
    lmbdas = lmbda if isinstance(lmbda, list) else [lmbda] * 3
    x, y = block(23)  # two mini-batches of 10, then one of 3
    y = y if labels else torch.nn.functional.one_hot(y, SIZES[-1]).double()
    costs = pop.sgd_steps(x, y, ETAS, lmbda, n=50, mini_batch_size=10)
    assert costs.shape == (3, 3)
    for step, rows in enumerate([slice(0, 10), slice(10, 20), slice(20, 23)]):
        lone_costs = [net.sgd_step(x[rows], y[rows], eta, lm, n=50) for net, eta, lm in zip(lone, ETAS, lmbdas)]
        torch.testing.assert_close(costs[step], torch.stack(lone_costs), rtol=0, atol=1e-10)
    for k, net in enumerate(lone):
        for mine, theirs in zip(pop.network(k).parameters(), net.parameters()):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)


def test_a_block_smaller_than_one_mini_batch_is_one_step():
    lone = members()
    pop = Population(members())
    x, y = block(7)
    costs = pop.sgd_steps(x, y, ETAS, mini_batch_size=10)
    lone_costs = torch.stack([net.sgd_step(x, y, eta) for net, eta in zip(lone, ETAS)])
    torch.testing.assert_close(costs, lone_costs[None], rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mini_batch_size=0), ValueError, "mini_batch_size must be a positive int"),
        (dict(mini_batch_size=2.5), ValueError, "mini_batch_size must be a positive int"),
        (dict(mini_batch_size=True), ValueError, "mini_batch_size must be a positive int"),
        (dict(eta=[1.0, 2.0]), ValueError, "eta must be one number or 3 numbers"),
        (dict(y=torch.full((23,), 3)), ValueError, r"labels y must lie in 0..2"),
    ],
)
def test_a_refused_block_leaves_every_member_untouched(kwargs, error, match):
    pop = Population(members())
    x, y = block(23)
    arguments = dict(x=x, y=y, eta=ETAS, mini_batch_size=10) | kwargs
    before = parameters(pop)
    with pytest.raises(error, match=match):
        pop.sgd_steps(**arguments)
    assert all(torch.equal(a, b) for a, b in zip(before, parameters(pop)))


@pytest.mark.parametrize(
    "first, then, error, match",
    [
        (1, True, TypeError, "eta must be a real number"),  # True == 1, but a bool is refused
        (1.0, float("nan"), ValueError, "eta must be a positive"),
        ([1.0, 2.0, 3.0], [1.0, 2.0, -3.0], ValueError, "eta must be a positive"),
    ],
)
def test_a_setting_that_changes_after_a_valid_step_is_checked_again(first, then, error, match):
    pop = Population(members())
    x, y = block(7)
    pop.sgd_step(x, y, first)
    before = parameters(pop)
    with pytest.raises(error, match=match):
        pop.sgd_step(x, y, then)
    assert all(torch.equal(a, b) for a, b in zip(before, parameters(pop)))


def test_a_list_of_etas_changed_in_place_is_checked_again():
    pop = Population(members())
    x, y = block(7)
    etas = [1.0, 2.0, 3.0]
    pop.sgd_step(x, y, etas)
    etas[1] = -2.0
    with pytest.raises(ValueError, match="eta must be a positive"):
        pop.sgd_step(x, y, etas)


def test_lmbda_with_n_then_without_n_is_refused():
    pop = Population(members())
    x, y = block(7)
    pop.sgd_step(x, y, 1.0, lmbda=2.0, n=50)
    with pytest.raises(TypeError, match="n must be the training-set size"):
        pop.sgd_step(x, y, 1.0, lmbda=2.0)


def test_hyperparameters_train_equals_lone_networks_on_real_mnist():
    # experiments/hyperparameters.py's train() on the first 200 real training images, 2 epochs, members λ = 0 and 5
    # from one start: each member's test accuracy after each epoch equals a lone Network's, stepped by sgd_step on
    # the same shuffled mini-batches
    from conftest import DATA_DIR, import_experiment

    hyperparameters = import_experiment("hyperparameters")
    sets = hyperparameters.mnist_sets(DATA_DIR)
    x, labels = (t[:200] for t in sets["training"])
    test_x, test_labels = (t[:1000] for t in sets["test"])
    torch.manual_seed(4)
    start = Network([784, 30, 10], cost="cross_entropy", init="normal")
    lone = [Network([784, 30, 10], cost="cross_entropy") for _ in range(2)]
    for net in lone:
        net.load_state_dict(start.state_dict())
    result = hyperparameters.train(Population([start] * 2), (x, labels), (test_x, test_labels), 0.5, [0.0, 5.0], 2, 10)
    order = torch.Generator().manual_seed(0)
    for epoch in range(2):
        permutation = torch.randperm(200, generator=order)
        for i in range(0, 200, 10):
            batch = permutation[i : i + 10]
            for net, lmbda in zip(lone, (0.0, 5.0)):
                net.sgd_step(x[batch], labels[batch], 0.5, lmbda=lmbda, n=200)
        for k, net in enumerate(lone):
            with torch.no_grad():
                accuracy = 100 * (net(test_x).argmax(1) == test_labels).double().mean().item()
            assert result["accuracy"][k][epoch] == pytest.approx(accuracy, abs=0.1 + 1e-9)  # one image in 1,000
    assert result["accuracy"][0] != result["accuracy"][1]  # λ made a difference


def test_chapter3_population_members_equal_lone_networks_on_the_same_order(tmp_path):
    # experiments/chapter3.py's train(): two seeds of a small config, one epoch on the real data; each member's
    # network.pt equals a lone Network built from its seed and stepped by sgd_step on the data module's order
    from conftest import DATA_DIR, import_experiment

    from torch_manualbp.lightning import MNISTDataModule

    chapter3 = import_experiment("chapter3")
    settings = {
        "model": {"sizes": [784, 20, 10], "cost": "cross_entropy", "eta": 0.5, "lmbda": 5.0, "init": "scaled"},
        "data": {"data_dir": str(DATA_DIR), "batch_size": 10},
    }
    run_dirs = {seed: tmp_path / f"seed_{seed}" for seed in (3, 5)}
    chapter3.train(settings, run_dirs, 1, data_seed=2)
    data = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=10, seed=2)
    data.setup("fit")
    for seed, run_dir in run_dirs.items():
        torch.manual_seed(seed)
        net = Network([784, 20, 10], cost="cross_entropy", init="scaled")
        for x, y, _ in data.train_dataloader():
            net.sgd_step(x, y, 0.5, lmbda=5.0, n=50_000)
        saved = torch.load(run_dir / "network.pt", weights_only=True)
        # float32, 5,000 steps, with the members' products in other shapes than the lone network's: rounding apart
        # (4e-5 at most when this was written), not more
        for name, value in net.state_dict().items():
            torch.testing.assert_close(saved["state_dict"][name], value, rtol=0, atol=2e-4)
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and int(rows[0]["step"]) == 5_000
