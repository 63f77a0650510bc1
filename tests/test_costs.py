"""The costs as objects (torch_manualbp/costs.py), the cross-entropy module for a user's model, and the one target
encoder, each against an independent computation: the book's formulas in float64, plain autograd, nn.BCELoss."""

import math

import pytest
import torch
import torch.nn.functional as TF

from torch_manualbp import Backprop, Gradients, Network
from torch_manualbp.costs import COSTS, Cost, CrossEntropy, Quadratic, get_cost
from torch_manualbp.functional import cross_entropy_cost
from torch_manualbp.network import update_mini_batch
from torch_manualbp.nn import CrossEntropyCost, SigmoidLinear
from torch_manualbp.testing.reference import autograd_cost

F64 = dict(rtol=1e-10, atol=1e-12)


def test_each_cost_value_and_bp1_equal_the_book_per_example_in_float64():
    torch.manual_seed(0)
    z = torch.randn(6, 4, dtype=torch.float64)
    a, y = torch.sigmoid(z), torch.rand(6, 4, dtype=torch.float64)
    for x in range(6):  # one example at a time, as network2.py's fn and delta take them
        ax, yx, zx = a[x], y[x], z[x]
        quadratic = 0.5 * sum((yx[j] - ax[j]) ** 2 for j in range(4))
        ce = -sum(yx[j] * math.log(ax[j]) + (1 - yx[j]) * math.log(1 - ax[j]) for j in range(4))
        assert math.isclose(COSTS["quadratic"].fn(zx, ax - yx, yx).item(), quadratic, rel_tol=1e-12)
        assert math.isclose(COSTS["cross_entropy"].fn(zx, ax - yx, yx).item(), ce, rel_tol=1e-12)
    torch.testing.assert_close(COSTS["quadratic"].delta(a - y, a), (a - y) * a * (1 - a), **F64)
    torch.testing.assert_close(COSTS["cross_entropy"].delta(a - y, a), a - y, **F64)
    for cost in COSTS.values():
        torch.testing.assert_close(cost.mean(z, a - y, y), cost.fn(z, a - y, y).mean(), **F64)


def test_a_copied_network_keeps_the_cost_object_itself():
    import copy

    net = Network([3, 2], cost="cross_entropy")
    assert copy.deepcopy(net).cost_function is COSTS["cross_entropy"] is copy.copy(net).cost_function


def test_names_map_to_cost_objects_and_cost_name_stays_the_name():
    assert isinstance(get_cost("quadratic"), Quadratic) and isinstance(get_cost("cross_entropy"), CrossEntropy)
    for name in COSTS:
        net = Network([3, 2], cost=name)
        assert net.cost_name == name and net.cost_function is COSTS[name]
        assert Network([3, 2], cost=COSTS[name]).cost_name == name
    with pytest.raises(ValueError, match="cost must be one of"):
        Network([3, 2], cost="hinge")
    with pytest.raises(TypeError, match="cost must be the name of a cost"):
        Network([3, 2], cost=3)


class HalfQuadratic(Cost):
    """A user's own cost: C_x = ¼‖y − a‖², half the quadratic cost, so its BP1 is half the quadratic's."""

    name = "half_quadratic"

    def fn(self, z, output_minus_y, y):
        return 0.25 * (output_minus_y * output_minus_y).sum(-1)

    def delta(self, output_minus_y, a):
        return 0.5 * output_minus_y * a * (1 - a)

    def y_gradient(self, z, a, y):
        return -0.5 * (a - y)

    def layered_cost(self, a_prev, layer, y):
        return 0.5 * COSTS["quadratic"].layered_cost(a_prev, layer, y)


def test_a_users_own_cost_object_trains_every_path_like_plain_autograd_of_its_value():
    torch.manual_seed(1)
    net = Network([5, 4, 3], cost=HalfQuadratic(), dtype=torch.float64)
    x, labels = torch.rand(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    y = TF.one_hot(labels, 3).double()
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    want_cost = 0.5 * autograd_cost(params, x, y, "quadratic")
    want = torch.autograd.grad(want_cost, params)
    result = net.backprop(x, labels)
    torch.testing.assert_close(result.cost, want_cost.detach(), **F64)
    for got, expected in zip([g for pair in zip(result.nabla_w, result.nabla_b) for g in pair], want):
        torch.testing.assert_close(got, expected, **F64)
    for cost in (net.cost(x, labels), net.layered_cost(x, labels)):
        torch.testing.assert_close(cost.detach(), want_cost.detach(), **F64)
        for got, expected in zip(torch.autograd.grad(cost, list(net.parameters())), want):
            torch.testing.assert_close(got, expected, **F64)


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_compiled_update_mini_batch_takes_a_cost_object_or_its_name_like_eager(cost):
    torch._dynamo.reset()
    torch.manual_seed(2)
    eager, compiled = Network([6, 5, 3], cost=cost), Network([6, 5, 3], cost=cost)
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(update_mini_batch, fullgraph=True)
    ones = torch.ones(4)
    with torch.no_grad():
        for how in (cost, COSTS[cost]):
            x, y = torch.rand(4, 6), TF.one_hot(torch.randint(0, 3, (4,)), 3).float()
            want = update_mini_batch(*eager.weights_and_biases(), x, y, 0.5, ones, how)
            got = step(*compiled.weights_and_biases(), x, y, 0.5, ones, how)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_is_the_result_type_and_backprop_its_old_name():
    assert Backprop is Gradients
    assert isinstance(Network([3, 2]).backprop(torch.rand(2, 3), torch.tensor([0, 1])), Gradients)


def test_integer_labels_are_encoded_as_one_hot_rows_in_the_network_dtype():
    from torch_manualbp.checks import targets

    for dtype in (torch.int64, torch.int32, torch.uint8):
        labels = torch.tensor([2, 0, 1, 2], dtype=dtype)
        got = targets(labels, (4, 3), torch.rand(4, 3, dtype=torch.float64))
        assert got.dtype == torch.float64 and torch.equal(got, TF.one_hot(labels.long(), 3).double())
    with pytest.raises(ValueError, match=r"labels y must lie in 0\.\.2 .* got \[-1, 3\]"):
        targets(torch.tensor([0, 3, -1]), (3, 3), torch.rand(3, 3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_module_equals_autograd_of_bce_summed_over_outputs(reduction):
    torch.manual_seed(3)
    model = torch.nn.Sequential(SigmoidLinear(6, 5, dtype=torch.float64), SigmoidLinear(5, 4, dtype=torch.float64))
    x, y = torch.rand(7, 6, dtype=torch.float64), torch.rand(7, 4, dtype=torch.float64)
    got = CrossEntropyCost(reduction)(model(x), y)
    got_grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    a = torch.sigmoid(torch.sigmoid(x @ model[0].weight.T + model[0].bias) @ model[1].weight.T + model[1].bias)
    per_example = TF.binary_cross_entropy(a, y, reduction="none").sum(-1)
    want = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}[reduction]
    torch.testing.assert_close(got, want, **F64)
    for g, w in zip(got_grads, torch.autograd.grad(want.sum(), list(model.parameters()))):
        torch.testing.assert_close(g, w, **F64)


def test_cross_entropy_module_passes_gradcheck_and_gradgradcheck_in_float64():
    a = (0.05 + 0.9 * torch.rand(5, 4, dtype=torch.float64)).requires_grad_()
    y = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cross_entropy_cost, (a, y), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(cross_entropy_cost, (a, y))


def test_cross_entropy_module_is_finite_where_outputs_saturate_and_equals_bce_there():
    a = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 0.25]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    got = CrossEntropyCost()(a, y)
    (grad,) = torch.autograd.grad(got, a)
    b = a.detach().clone().requires_grad_()
    want = TF.binary_cross_entropy(b, y, reduction="none").sum(-1).mean()
    (want_grad,) = torch.autograd.grad(want, b)
    assert torch.isfinite(got) and torch.isfinite(grad).all()
    torch.testing.assert_close(got, want, **F64)
    torch.testing.assert_close(grad, want_grad, rtol=1e-8, atol=0)  # ~5e11 where a(1 − a) is clamped: rounding


def test_the_log_likelihood_value_and_bp1_equal_the_book_per_example_in_float64():
    torch.manual_seed(1)
    cost = get_cost("log_likelihood")
    z, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 3, 1, 2, 2, 1])
    a, y = cost.activation(z), TF.one_hot(labels, 4).double()
    for x in range(6):  # aᴸ_j = e^{zᴸ_j} / Σ_k e^{zᴸ_k}, C_x = −ln aᴸ_{y(x)}, one example at a time
        softmax = [math.exp(z[x, j].item()) / sum(math.exp(z[x, k].item()) for k in range(4)) for j in range(4)]
        assert all(math.isclose(a[x, j].item(), softmax[j], rel_tol=1e-12) for j in range(4))
        assert math.isclose(cost.fn(z[x], a[x] - y[x], y[x]).item(), -math.log(softmax[labels[x]]), rel_tol=1e-12)
    torch.testing.assert_close(cost.delta(a - y, a), a - y, **F64)  # (BP1) δᴸ = aᴸ − y
    (by_autograd,) = torch.autograd.grad(-torch.log_softmax(z.requires_grad_(), -1)[range(6), labels].sum(), z)
    torch.testing.assert_close(cost.delta(a - y, a), by_autograd, **F64)
