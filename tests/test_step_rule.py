"""The step rule (``torch_manualbp.StepRule``): a step's settings checked once, where the rule is made, immutable,
and the step it gives equal to plain autograd SGD with network2.py's L2 (float64); ``Network.sgd_step`` remakes it
whenever its settings change, so a kept rule never stands for other settings."""

import dataclasses

import pytest
import torch

from torch_manualbp import Network, StepRule
from torch_manualbp.testing.reference import autograd_cost


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (dict(lmbda=-1.0, n=10), ValueError, "lmbda must be a finite number >= 0, got -1.0"),
        (dict(lmbda=5.0), TypeError, "n must be the training-set size, an int, when lmbda is given; got NoneType"),
        (dict(regularization="l3"), ValueError, "regularization"),
        (dict(dropout=1.0), ValueError, r"dropout must be a fraction in \[0, 1\)"),
        (dict(cost="hinge"), ValueError, "hinge"),
        (dict(lmbda=True, n=10), TypeError, "lmbda must be a real number"),
    ],
)
def test_a_bad_setting_is_refused_where_the_rule_is_made_naming_it(settings, error, message):
    with pytest.raises(error, match=message):
        StepRule(**settings)


def test_a_rule_is_immutable_and_holds_its_checked_settings():
    rule = StepRule("cross_entropy", lmbda=5, n=50_000, regularization="l1", dropout=0.5)
    assert (rule.cost.name, rule.weight_decay, rule.regularization, rule.dropout) == ("cross_entropy", 1e-4, "l1", 0.5)
    assert isinstance(rule.dropout, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.lmbda = 0.0
    assert rule == StepRule("cross_entropy", 5, 50_000, "l1", 0.5)


def test_a_rules_step_is_plain_autograd_sgd_with_network2s_l2_float64():
    torch.manual_seed(3)
    net = Network([6, 5, 3], cost="cross_entropy", dtype=torch.float64)
    x, y = torch.rand(8, 6, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[torch.randint(0, 3, (8,))]
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    eta, lmbda, n = 0.5, 2.0, 100
    cost = autograd_cost(params, x, y, "cross_entropy")
    grads = torch.autograd.grad(cost, params)
    rule = StepRule("cross_entropy", lmbda, n)
    with torch.no_grad():
        got = rule.step(*net.weights_and_biases(), x, y, eta, torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(got, cost.detach(), rtol=1e-12, atol=1e-14)
    for p, want, g in zip(net.parameters(), params, grads):
        decay = (1 - eta * lmbda / n) if p.ndim == 2 else 1.0  # the weights decay, the biases not
        torch.testing.assert_close(p.detach(), decay * want.detach() - eta * g, rtol=1e-12, atol=1e-14)


def test_sgd_step_remakes_its_rule_when_the_settings_change():
    torch.manual_seed(4)
    net = Network([6, 5, 3], dtype=torch.float64)
    twin = Network([6, 5, 3], dtype=torch.float64)
    twin.load_state_dict(net.state_dict())
    x, labels = torch.rand(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    net.sgd_step(x, labels, 0.5, lmbda=5.0, n=10)
    net.sgd_step(x, labels, 0.5)  # no regularisation now: the kept rule must not decay the weights
    twin.sgd_step(x, labels, 0.5, lmbda=5.0, n=10)
    params = [p.detach().clone().requires_grad_() for p in twin.parameters()]
    grads = torch.autograd.grad(autograd_cost(params, x, torch.eye(3, dtype=torch.float64)[labels]), params)
    for p, want, g in zip(net.parameters(), params, grads):
        torch.testing.assert_close(p.detach(), want.detach() - 0.5 * g, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="lmbda must be a real number"):
        net.sgd_step(x, labels, 0.5, lmbda=True, n=10)  # True == 1 but is not a λ: compared with its type
