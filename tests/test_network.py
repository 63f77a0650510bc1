"""Network.backprop (BP1-BP4 in matrix form) against autograd and against the book's per-example loop."""

import numpy as np
import pytest
import torch
from conftest import network_and_batch

from torch_manualbp import Network
from torch_manualbp.functional import quadratic_cost
from torch_manualbp.nn import QuadraticCost, SigmoidLinear
from torch_manualbp.testing.reference import BookNetwork, autograd_cost, autograd_output, autograd_quadratic_cost

F64 = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture
def net_and_batch():
    return network_and_batch()


def test_backprop_equals_backward_through_the_functions(net_and_batch):
    net, x, labels = net_and_batch
    result = net.backprop(x, labels)
    cost = quadratic_cost(net(x), labels)
    cost.backward()
    torch.testing.assert_close(result.cost, cost.detach(), **F64)
    for layer, nabla_w, nabla_b in zip(net.layers, result.nabla_w, result.nabla_b):
        torch.testing.assert_close(nabla_w, layer.weight.grad, **F64)
        torch.testing.assert_close(nabla_b, layer.bias.grad, **F64)


def test_backprop_equals_plain_autograd(net_and_batch):
    net, x, labels = net_and_batch
    result = net.backprop(x, labels)
    params = [p for layer in net.layers for p in (layer.weight, layer.bias)]
    y = torch.nn.functional.one_hot(labels, 3).double()
    grads = torch.autograd.grad(autograd_quadratic_cost(autograd_output(params, x), y), params)
    for got, want in zip([g for pair in zip(result.nabla_w, result.nabla_b) for g in pair], grads):
        torch.testing.assert_close(got, want, **F64)


def test_batched_matrix_form_equals_the_books_per_example_loop(net_and_batch):
    net, x, labels = net_and_batch
    result = net.backprop(x, labels)
    book = BookNetwork(
        net.sizes,
        weights=[layer.weight.detach().numpy() for layer in net.layers],
        biases=[layer.bias.detach().numpy() for layer in net.layers],
    )
    y = np.eye(3)[labels.numpy()]
    # network.py's backprop, one column-vector example at a time: (nabla_b, nabla_w), and nabla_b is δ (BP3)
    per_example = [book.backprop(x[i].numpy().reshape(-1, 1), y[i].reshape(-1, 1)) for i in range(len(x))]
    for l in range(len(net.layers)):
        # update_mini_batch averages the per-example gradients over the mini-batch
        mean_b = sum(nabla_b[l] for nabla_b, _ in per_example).ravel() / len(x)
        mean_w = sum(nabla_w[l] for _, nabla_w in per_example) / len(x)
        torch.testing.assert_close(result.nabla_w[l], torch.from_numpy(mean_w), **F64)
        torch.testing.assert_close(result.nabla_b[l], torch.from_numpy(mean_b), **F64)
        deltas = torch.from_numpy(np.stack([nabla_b[l].ravel() for nabla_b, _ in per_example]))
        torch.testing.assert_close(result.delta[l], deltas, **F64)


def test_backprop_accepts_one_hot_float_targets(net_and_batch):
    net, x, labels = net_and_batch
    one_hot = torch.nn.functional.one_hot(labels, 3).double()
    by_labels, by_one_hot = net.backprop(x, labels), net.backprop(x, one_hot)
    for got, want in zip(by_one_hot.nabla_w + [by_one_hot.cost], by_labels.nabla_w + [by_labels.cost]):
        assert torch.equal(got, want)


def test_backprop_uses_no_autograd(net_and_batch):
    net, x, labels = net_and_batch
    result = net.backprop(x, labels)
    assert not any(t.requires_grad for t in result.nabla_w + result.nabla_b + result.delta + [result.cost])


def test_network_trains_on_a_toy_problem_with_sgd():
    torch.manual_seed(0)
    net = Network([2, 16, 2])
    x = torch.rand(256, 2)
    labels = ((x - 0.5).norm(dim=1) < 0.35).long()  # inside or outside a circle
    cost_fn = QuadraticCost()
    before = cost_fn(net(x), labels).item()
    for _ in range(3000):
        result = net.backprop(x, labels)
        with torch.no_grad():
            for layer, nabla_w, nabla_b in zip(net.layers, result.nabla_w, result.nabla_b):
                layer.weight -= 3.0 * nabla_w
                layer.bias -= 3.0 * nabla_b
    after = cost_fn(net(x), labels).item()
    accuracy = (net(x).argmax(1) == labels).float().mean().item()
    assert after < 0.5 * before and accuracy > 0.9


@pytest.mark.parametrize("init,weight_std", [("normal", 1.0), ("scaled", 1 / 20)])
def test_init_schemes_draw_the_books_distributions(init, weight_std):
    torch.manual_seed(0)
    layer = SigmoidLinear(400, 300, init=init)
    # 120,000 draws: the sample std is within 1% of the true one with overwhelming probability.
    assert layer.weight.std().item() == pytest.approx(weight_std, rel=0.01)
    assert layer.weight.mean().item() == pytest.approx(0.0, abs=0.01 * weight_std)
    assert layer.bias.std().item() == pytest.approx(1.0, rel=0.15)  # 300 draws


def test_modules_repr_and_state_dict_are_nn_linear_like():
    net = Network([784, 30, 10], init="normal")
    assert "SigmoidLinear(in_features=784, out_features=30, bias=True, init='normal')" in repr(net)
    assert list(net.state_dict()) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert net.layers[0].weight.shape == (30, 784)
    assert SigmoidLinear(3, 2, bias=False).bias is None
    assert repr(QuadraticCost("sum")) == "QuadraticCost(reduction='sum')"


def test_sigmoid_linear_drops_into_an_ordinary_pytorch_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), SigmoidLinear(16, 8), torch.nn.Dropout(0.0), SigmoidLinear(8, 4))
    images = torch.rand(5, 1, 4, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    QuadraticCost()(model(images), labels).backward()
    first, second = model[1], model[3]
    a = autograd_output([first.weight, first.bias, second.weight, second.bias], images.flatten(1))
    ref = torch.autograd.grad(autograd_quadratic_cost(a, torch.eye(4)[labels]), [first.weight, second.bias])
    torch.testing.assert_close(first.weight.grad, ref[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(second.bias.grad, ref[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_output_and_cost_equal_plain_autograd_and_the_forward_and_cost_they_replace(cost):
    net, x, labels = network_and_batch(cost)
    a, c = net.output_and_cost(x, labels)
    y = torch.nn.functional.one_hot(labels, 3).double()
    torch.testing.assert_close(a, autograd_output(net.parameters(), x).detach(), **F64)
    torch.testing.assert_close(c, autograd_cost(net.parameters(), x, y, cost).detach(), **F64)
    # the same operations as network(x) and network.layered_cost(x, y), run once instead of twice
    assert torch.equal(a, net(x).detach()) and torch.equal(c, net.layered_cost(x, y).detach())
    assert not a.requires_grad and not c.requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_network_cost_equals_the_per_layer_functions_bit_for_bit(dtype):
    torch.manual_seed(0)
    net = Network([784, 30, 30, 10], dtype=dtype)
    x, labels = torch.rand(10, 784, dtype=dtype), torch.randint(0, 10, (10,))
    fused = net.cost(x, labels)
    fused.backward()
    fused_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    layered = quadratic_cost(net(x), labels)
    layered.backward()
    # the same operations in the same order, one autograd node instead of one per layer
    assert torch.equal(fused, layered)
    assert all(torch.equal(g, p.grad) for g, p in zip(fused_grads, net.parameters()))


def test_fused_network_cost_gives_the_input_and_target_gradients_of_plain_autograd():
    torch.manual_seed(0)
    net = Network([5, 4, 3], dtype=torch.float64)
    x = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.rand(6, 3, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(net.cost(x, y), (x, y))
    want = torch.autograd.grad(autograd_quadratic_cost(autograd_output(net.parameters(), x), y), (x, y))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


def test_fused_network_cost_refuses_autocast_and_double_backward_clearly():
    net = Network([5, 4, 3])
    x, labels = torch.rand(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="autocast"):
        net.cost(x, labels)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(net.cost(x, labels), net.layers[0].weight, create_graph=True)
