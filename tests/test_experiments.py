"""The experiments' own computations, on small cases (the experiments themselves run from the README)."""

import torch
from conftest import import_experiment

from torch_manualbp import Network
from torch_manualbp.testing.reference import autograd_output, autograd_quadratic_cost


def test_finite_difference_gradient_agrees_with_backprop_to_forward_difference_precision():
    torch.manual_seed(0)
    net = Network([5, 4, 3], dtype=torch.float64)
    x = torch.rand(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    before = [p.detach().clone() for p in net.parameters()]
    finite_differences = import_experiment("finite_differences")
    fd = finite_differences.finite_difference_gradient(net, x, labels, eps=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))  # every nudge was undone
    bp = finite_differences.backprop_gradient(net, x, labels)
    y = torch.eye(3, dtype=torch.float64)[labels]
    cost = autograd_quadratic_cost(autograd_output(net.parameters(), x), y)
    reference = torch.autograd.grad(cost, list(net.parameters()))
    for f, b, r in zip(fd, bp, reference):
        torch.testing.assert_close(b, r, rtol=1e-10, atol=1e-12)
        # a forward difference is off by about ε·C''/2: 1e-6 relative to the gradient's scale is ample
        torch.testing.assert_close(f, b, rtol=0, atol=1e-6 * b.abs().max().item())


def test_learning_slowdown_error_is_bp1_and_the_saturated_start_learns_slower():
    train = import_experiment("learning_slowdown").train

    slow, fast = train(2.0, 2.0, epochs=50), train(0.6, 0.9, epochs=50)
    a = torch.sigmoid(torch.tensor(4.0, dtype=torch.float64)).item()  # z = w·1 + b = 4
    assert abs(slow["delta"][0] - a * a * (1 - a)) < 1e-15  # (BP1) for C = ½(y − a)², one example
    # δ = (a − y) σ'(z) with y = 0: the saturated neuron's error is 7 times smaller, and so is its progress.
    assert slow["delta"][0] < fast["delta"][0] / 5
    assert slow["cost"][0] - slow["cost"][50] < (fast["cost"][0] - fast["cost"][50]) / 10


def test_learning_slowdown_cross_entropy_error_is_a_minus_y_and_the_saturated_start_learns_at_once():
    train = import_experiment("learning_slowdown").train

    cross_entropy, quadratic = train(2.0, 2.0, "cross_entropy", epochs=50), train(2.0, 2.0, "quadratic", epochs=50)
    a = torch.sigmoid(torch.tensor(4.0, dtype=torch.float64)).item()
    assert abs(cross_entropy["delta"][0] - a) < 1e-15  # (BP1) δ = a − y with y = 0: no σ'(z) factor
    # From the same saturated start (a ≈ 0.98), 50 steps: the cross-entropy brings a below 0.15, the quadratic cost
    # has not moved it by 0.01.
    assert cross_entropy["output"][50] < 0.15
    assert quadratic["output"][0] - quadratic["output"][50] < 0.01


def test_batch_size_fit_recovers_s_min_and_b_noise_from_steps_on_the_papers_curve():
    batch_size = import_experiment("batch_size")
    eta_for, fit_both, fit_s_min = batch_size.eta_for, batch_size.fit_both, batch_size.fit_s_min

    batches = [1, 10, 100, 1000]
    steps = [2000 * (1 + 150 / b) for b in batches]  # S = S_min (1 + B_noise/B), S_min = 2,000, B_noise = 150
    s_min, b_noise = fit_both(batches, steps)
    assert abs(s_min / 2000 - 1) < 0.02 and abs(b_noise / 150 - 1) < 0.03  # the B_noise grid is 2.3% apart
    assert abs(fit_s_min(batches, steps, 150.0) - 2000) < 1e-6
    assert [eta_for(b) for b in batches] == [0.3, 3.0, 6.0, 6.0]  # linear from the book's η = 3 at 10, capped
