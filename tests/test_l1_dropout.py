"""Chapter 3's L1 regularisation and dropout in the fused step, against the book's per-example update in numpy
(float64, column vectors, one example at a time), plain autograd, and the book's rule for evaluation."""

import itertools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from torch_manualbp import Network
from torch_manualbp.functional import dropout as dropout_layer
from torch_manualbp.network import dropout_evaluation_weights, dropout_masks, update_mini_batch

TOL = dict(rtol=1e-10, atol=1e-10)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def book_backprop(weights, biases, x, y, cost, masks):
    """``network2.py``'s ``backprop`` for one example (column vectors), with the hidden neurons where a mask is 0
    removed, forward and backward, as chapter 3 describes dropout."""
    activation, activations, zs = x, [x], []
    for i, (w, b) in enumerate(zip(weights, biases)):
        z = w @ activation + b[:, None]
        zs.append(z)
        activation = sigmoid(z)
        if i < len(weights) - 1:
            activation = activation * masks[i]  # a removed neuron outputs 0
        activations.append(activation)
    delta = activations[-1] - y  # the cross-entropy's BP1
    if cost == "quadratic":
        delta = delta * sigmoid(zs[-1]) * (1 - sigmoid(zs[-1]))
    nabla_w, nabla_b = [None] * len(weights), [None] * len(weights)
    nabla_w[-1], nabla_b[-1] = delta @ activations[-2].T, delta
    for layer in range(2, len(weights) + 1):
        sp = sigmoid(zs[-layer]) * (1 - sigmoid(zs[-layer]))
        delta = (weights[-layer + 1].T @ delta) * sp * masks[-layer + 1]  # BP2, the removed neurons' δ = 0
        nabla_w[-layer], nabla_b[-layer] = delta @ activations[-layer - 1].T, delta
    return nabla_w, nabla_b


def book_update(weights, biases, xs, ys, eta, lmbda, n, cost, regularization, masks):
    """``network2.py``'s ``update_mini_batch``: per-example nablas summed, then the regularised step."""
    sum_w = [np.zeros_like(w) for w in weights]
    sum_b = [np.zeros_like(b) for b in biases]
    for x, y in zip(xs, ys):
        nabla_w, nabla_b = book_backprop(weights, biases, x[:, None], y[:, None], cost, masks)
        sum_w = [s + d for s, d in zip(sum_w, nabla_w)]
        sum_b = [s + d for s, d in zip(sum_b, nabla_b)]
    m = len(xs)
    if regularization == "l1":
        weights = [w - eta * lmbda / n * np.sign(w) - eta / m * s for w, s in zip(weights, sum_w)]
    else:
        weights = [(1 - eta * lmbda / n) * w - eta / m * s for w, s in zip(weights, sum_w)]
    biases = [b - eta / m * s[:, 0] for b, s in zip(biases, sum_b)]
    return weights, biases


def numpy_parameters(net):
    weights, biases = net.weights_and_biases()
    return [w.detach().numpy().copy() for w in weights], [b.detach().numpy().copy() for b in biases]


def assert_parameters_equal(net, weights, biases):
    got_w, got_b = net.weights_and_biases()
    for got, want in zip(got_w + got_b, weights + biases):
        torch.testing.assert_close(got.detach(), torch.from_numpy(want), **TOL)


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_l1_steps_equal_the_books_per_example_update_float64(cost):
    torch.manual_seed(0)
    net = Network([6, 5, 4, 3], cost=cost, dtype=torch.float64)
    weights, biases = numpy_parameters(net)
    eta, lmbda, n = 0.5, 5.0, 40
    for _step in range(4):
        x, labels = torch.rand(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
        ys = TF.one_hot(labels, 3).double().numpy()
        weights, biases = book_update(weights, biases, x.numpy(), ys, eta, lmbda, n, cost, "l1", [1.0, 1.0])
        net.sgd_step(x, labels, eta=eta, lmbda=lmbda, n=n, regularization="l1")
    assert_parameters_equal(net, weights, biases)


def test_l1_and_l2_differ_as_the_book_says_small_weights_shrink_more_under_l1():
    net = Network([2, 2], dtype=torch.float64)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[0.01, -10.0], [0.0, 2.0]], dtype=torch.float64))
    x, labels = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0])  # x = 0: ∂C₀/∂w = 0, only λ acts
    l1, l2 = Network([2, 2], dtype=torch.float64), Network([2, 2], dtype=torch.float64)
    l1.load_state_dict(net.state_dict())
    l2.load_state_dict(net.state_dict())
    l1.sgd_step(x, labels, eta=1.0, lmbda=0.001, n=1, regularization="l1")
    l2.sgd_step(x, labels, eta=1.0, lmbda=0.001, n=1)
    w = net.layers[0].weight.detach()
    torch.testing.assert_close(l1.layers[0].weight.detach(), w - 0.001 * torch.sign(w), **TOL)  # sgn(0) = 0
    torch.testing.assert_close(l2.layers[0].weight.detach(), 0.999 * w, **TOL)
    torch.testing.assert_close(l1.layers[0].bias, l2.layers[0].bias, **TOL)  # biases: not regularised, either way


@pytest.mark.parametrize("regularization, lmbda", [("l2", 0.0), ("l2", 5.0), ("l1", 5.0)])
def test_dropout_steps_with_fixed_masks_equal_the_books_per_example_update_float64(regularization, lmbda):
    torch.manual_seed(1)
    net = Network([6, 5, 4, 3], cost="cross_entropy", dtype=torch.float64)
    weights, biases = numpy_parameters(net)
    eta, n = 0.5, 40
    generator = torch.Generator().manual_seed(2)
    for _step in range(4):
        x, labels = torch.rand(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
        masks = dropout_masks(net.sizes, 0.5, x, generator)  # a new half of each hidden layer every step
        ys = TF.one_hot(labels, 3).double().numpy()
        numpy_masks = [m.numpy()[:, None] for m in masks]
        weights, biases = book_update(
            weights, biases, x.numpy(), ys, eta, lmbda, n, "cross_entropy", regularization, numpy_masks
        )
        ones, y = torch.ones(10, dtype=torch.float64), TF.one_hot(labels, 3).double()
        with torch.no_grad():
            weights_and_biases = net.weights_and_biases()
            update_mini_batch(*weights_and_biases, x, y, eta, ones, "cross_entropy", lmbda / n, regularization, masks)
    assert_parameters_equal(net, weights, biases)


def test_a_removed_neuron_keeps_its_incoming_and_outgoing_weights_and_its_bias():
    torch.manual_seed(3)
    net = Network([6, 8, 3], cost="cross_entropy", dtype=torch.float64)
    before = [p.detach().clone() for p in net.parameters()]
    mask = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.float64)
    x, y = torch.rand(10, 6, dtype=torch.float64), TF.one_hot(torch.randint(0, 3, (10,)), 3).double()
    with torch.no_grad():
        update_mini_batch(*net.weights_and_biases(), x, y, 3.0, torch.ones(10, dtype=torch.float64), masks=[mask])
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    removed, kept = mask == 0, mask == 1
    assert torch.equal(w1[removed], before[0][removed]) and torch.equal(b1[removed], before[1][removed])
    assert torch.equal(w2[:, removed], before[2][:, removed])
    assert not torch.equal(w1[kept], before[0][kept]) and not torch.equal(w2[:, kept], before[2][:, kept])


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy", "log_likelihood"])
def test_layered_cost_through_the_dropout_function_has_the_gradient_of_the_fused_step_float64(cost):
    torch.manual_seed(4)
    net, fused = (
        Network([6, 5, 4, 3], cost=cost, dtype=torch.float64),
        Network([6, 5, 4, 3], cost=cost, dtype=torch.float64),
    )
    fused.load_state_dict(net.state_dict())
    x, labels = torch.rand(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
    masks = dropout_masks(net.sizes, 0.5, x, torch.Generator().manual_seed(5))
    grads = torch.autograd.grad(net.layered_cost(x, labels, masks), list(net.parameters()))
    with torch.no_grad():
        y = TF.one_hot(labels, 3).double()
        update_mini_batch(
            *fused.weights_and_biases(), x, y, 1.0, torch.ones(10, dtype=torch.float64), cost, masks=masks
        )
    for p, q, g in zip(fused.parameters(), net.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - g, **TOL)  # one step of η = 1: the same gradient


def test_sgd_step_dropout_is_reproducible_under_a_seed_and_removes_half_of_each_hidden_layer():
    torch.manual_seed(6)
    nets = [Network([6, 10, 8, 3], cost="cross_entropy", dtype=torch.float64) for _ in range(3)]
    nets[1].load_state_dict(nets[0].state_dict())
    nets[2].load_state_dict(nets[0].state_dict())
    x, labels = torch.rand(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
    for net, seed in zip(nets, (7, 7, 8)):
        generator = torch.Generator().manual_seed(seed)
        for _step in range(3):
            net.sgd_step(x, labels, eta=0.5, dropout=0.5, generator=generator)
    assert all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), nets[1].parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), nets[2].parameters()))
    masks = dropout_masks([6, 10, 8, 3], 0.5, x, torch.Generator().manual_seed(7))
    assert [m.sum().item() for m in masks] == [5.0, 4.0] and all(set(m.tolist()) == {0.0, 1.0} for m in masks)


def test_evaluation_with_halved_outgoing_weights_is_the_mean_over_every_mask_of_the_output_weighted_input():
    # The book halves the weights outgoing from the hidden neurons: then zᴸ is the average of zᴸ over every way
    # of removing half the hidden neurons (each is kept in half of them), here all C(4, 2) = 6 of them.
    torch.manual_seed(9)
    net = Network([3, 4, 2], dtype=torch.float64)
    (w1, w2), (b1, b2) = numpy_parameters(net)
    x = np.random.default_rng(0).random((5, 3))
    hidden = sigmoid(x @ w1.T + b1)
    masks = [np.isin(np.arange(4), kept).astype(float) for kept in itertools.combinations(range(4), 2)]
    mean_z = np.mean([(hidden * m) @ w2.T + b2 for m in masks], axis=0)
    halved_w1, halved_w2 = dropout_evaluation_weights(net.weights_and_biases()[0], 0.5)
    assert halved_w1 is net.layers[0].weight  # the input neurons are never removed: their weights are not scaled
    np.testing.assert_allclose(sigmoid(hidden @ halved_w2.detach().numpy().T + b2), sigmoid(mean_z), rtol=1e-12)
    labels = torch.tensor([0, 1, 1, 0, 1])
    output, cost = net.output_and_cost(torch.from_numpy(x), labels, dropout=0.5)
    np.testing.assert_allclose(output.numpy(), sigmoid(mean_z), rtol=1e-12)
    assert torch.equal(net.layers[1].weight, torch.from_numpy(w2))  # the parameters themselves are unchanged


def test_update_mini_batch_with_l1_and_dropout_compiles_to_one_graph_equal_to_eager():
    torch._dynamo.reset()
    torch.manual_seed(10)
    eager, compiled = Network([20, 8, 4], cost="cross_entropy"), Network([20, 8, 4], cost="cross_entropy")
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(update_mini_batch, fullgraph=True, dynamic=False)
    x, y = torch.rand(10, 20), TF.one_hot(torch.randint(0, 4, (10,)), 4).float()
    masks = dropout_masks(eager.sizes, 0.5, x, torch.Generator().manual_seed(11))
    ones = torch.ones(10)
    with torch.no_grad():
        got = step(*compiled.weights_and_biases(), x, y, torch.tensor(0.5), ones, "cross_entropy", 0.1, "l1", masks)
        want = update_mini_batch(*eager.weights_and_biases(), x, y, 0.5, ones, "cross_entropy", 0.1, "l1", masks)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "settings, error, words",
    [
        (dict(regularization="l3"), ValueError, "regularization must be one of ('l2', 'l1'), got 'l3'"),
        (dict(regularization=None), TypeError, "regularization must be one of"),
        (dict(dropout=1.0), ValueError, "dropout must be a fraction in [0, 1)"),
        (dict(dropout=-0.1), ValueError, "dropout must be a fraction in [0, 1)"),
        (dict(dropout="half"), TypeError, "dropout must be a real number"),
    ],
)
def test_bad_regularization_or_dropout_raises_before_any_parameter_changes(settings, error, words):
    net = Network([5, 4, 3])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=re.escape(words)):
        net.sgd_step(torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), 0.5, lmbda=1.0, n=10, **settings)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    if "dropout" in settings:
        with pytest.raises(error, match=re.escape(words)):
            net.output_and_cost(torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), **settings)


def test_dropout_function_rejects_a_mask_that_is_not_one_value_per_neuron():
    a = torch.rand(4, 6)
    with pytest.raises(ValueError, match=re.escape("mask must have shape (H,), one value per neuron of a (4, 6)")):
        dropout_layer(a, torch.ones(4, 6))
    with pytest.raises(TypeError, match="mask must be a floating-point tensor"):
        dropout_layer(a, torch.ones(6, dtype=torch.int64))
    torch.testing.assert_close(dropout_layer(a, torch.ones(6)), a)  # a mask of ones removes nothing
