"""Hostile inputs with a defined result rather than an error: empty batches, single examples, 3-d inputs, NaN.
The inputs that are errors are the rows of test_bad_input.py; docs/hostile_inputs.md lists both."""

import torch

from torch_manualbp.functional import quadratic_cost, sigmoid_linear


def test_empty_batch_gives_an_empty_output_and_zero_gradients():
    x = torch.rand(0, 3, requires_grad=True)
    w, b = torch.randn(2, 3, requires_grad=True), torch.randn(2, requires_grad=True)
    a = sigmoid_linear(x, w, b)
    assert a.shape == (0, 2)
    cost = quadratic_cost(a, torch.zeros(0, dtype=torch.long), reduction="sum")
    assert cost.item() == 0.0 and quadratic_cost(a, torch.zeros(0, 2), reduction="none").shape == (0,)
    cost.backward()
    assert torch.equal(w.grad, torch.zeros(2, 3)) and torch.equal(b.grad, torch.zeros(2)) and x.grad.shape == (0, 3)


def test_single_example_and_3d_inputs_are_supported_like_nn_linear():
    w, b = torch.randn(2, 3), torch.randn(2)
    x = torch.randn(4, 5, 3)
    assert sigmoid_linear(x[0, 0], w, b).shape == (2,)  # one example, no batch dimension
    torch.testing.assert_close(sigmoid_linear(x, w, b), torch.sigmoid(torch.nn.functional.linear(x, w, b)))
    assert quadratic_cost(torch.rand(4, 5, 2), torch.randint(0, 2, (4, 5)), reduction="none").shape == (4, 5)


def test_nan_in_one_example_stays_in_that_example():
    """NaN is not checked for per call (a host sync); it propagates like torch's own ops, and only where it must."""
    x = torch.rand(3, 4)
    x[1, 2] = torch.nan
    a = sigmoid_linear(x, torch.randn(2, 4), torch.randn(2))
    assert torch.isnan(a[1]).all() and torch.isfinite(a[[0, 2]]).all()
    costs = quadratic_cost(a, torch.tensor([0, 1, 0]), reduction="none")
    assert torch.isnan(costs[1]) and torch.isfinite(costs[[0, 2]]).all()
