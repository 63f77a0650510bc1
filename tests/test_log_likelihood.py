"""Chapter 3's softmax output layer with the log-likelihood cost, in every path, against plain autograd on
torch.nn.functional.cross_entropy of zᴸ in float64, and at saturation."""

import re

import pytest
import torch
import torch.nn.functional as TF
from conftest import leaves, manualbp, saturated_network, write_config
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

from torch_manualbp import Network
from torch_manualbp.functional import log_likelihood_cost, sigmoid_linear, softmax_log_likelihood
from torch_manualbp.network import update_mini_batch
from torch_manualbp.nn import LogLikelihoodCost, SigmoidLinear
from torch_manualbp.observe import record_errors

F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=1e-5, atol=1e-6)


def reference_cost(x, weight, bias, y, reduction="mean"):
    """The softmax output layer's log-likelihood in plain autograd: F.cross_entropy on zᴸ."""
    return TF.cross_entropy(TF.linear(x, weight, bias), y, reduction=reduction)


def network_reference(net, x, labels):
    """The whole network's cost in plain autograd: sigmoid hidden layers by torch ops, cross_entropy on zᴸ."""
    a = x
    for layer in net.layers[:-1]:
        a = torch.sigmoid(TF.linear(a, layer.weight, layer.bias))
    return TF.cross_entropy(TF.linear(a, net.layers[-1].weight, net.layers[-1].bias), labels)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_log_likelihood_equals_cross_entropy_on_z_forward_and_backward_float64(reduction):
    x, w, b = leaves((7, 5), (4, 5), (4,))
    labels = torch.tensor([0, 3, 1, 2, 2, 0, 3])
    got, want = softmax_log_likelihood(x, w, b, labels, reduction), reference_cost(x, w, b, labels, reduction)
    torch.testing.assert_close(got, want, **F64)
    seed = torch.rand_like(got)
    for g, r in zip(torch.autograd.grad(got, (x, w, b), seed), torch.autograd.grad(want, (x, w, b), seed)):
        torch.testing.assert_close(g, r, **F64)


def test_float_targets_that_sum_to_one_equal_cross_entropy_with_probabilities_float64():
    x, w, b = leaves((6, 3), (4, 3), (4,))
    y = torch.softmax(torch.randn(6, 4, dtype=torch.float64), -1).requires_grad_()
    got, want = softmax_log_likelihood(x, w, b, y), reference_cost(x, w, b, y)
    torch.testing.assert_close(got, want, **F64)
    got_grads, want_grads = torch.autograd.grad(got, (x, w, b, y)), torch.autograd.grad(want, (x, w, b, y))
    for g, r in zip(got_grads[:3], want_grads[:3]):
        torch.testing.assert_close(g, r, **F64)
    # ∂C/∂y: −zᴸ_j/n here, −ln aᴸ_j/n = (ln Σ_k e^{zᴸ_k} − zᴸ_j)/n there; the same along every change of y that keeps
    # its rows summing to 1 (they differ by a constant in each row)
    difference = got_grads[3] - want_grads[3]
    torch.testing.assert_close(difference, difference[:, :1].expand(6, 4), **F64)


def test_backward_starts_from_bp1_delta_equal_to_a_minus_y():
    net = Network([5, 4, 3], cost="log_likelihood", dtype=torch.float64)
    x, labels = torch.rand(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])
    hidden = torch.sigmoid(TF.linear(x, net.layers[0].weight, net.layers[0].bias))
    a = torch.softmax(TF.linear(hidden, net.layers[1].weight, net.layers[1].bias), -1).detach()
    want = (a - TF.one_hot(labels, 3).double()) / 6  # δᴸ of the mean cost: (aᴸ − y)/n
    torch.testing.assert_close(net.backprop(x, labels).delta[-1], want * 6, **F64)  # per example, unscaled
    for run in (
        lambda: net.layered_cost(x, labels).backward(),
        lambda: net.cost(x, labels).backward(),
        lambda: net.sgd_step(x, labels, eta=1e-9),  # the last run: it moves the parameters
    ):
        with record_errors() as record:
            run()
        output = record.for_network(net)[-1]
        torch.testing.assert_close(output.delta, want, **F64)
        torch.testing.assert_close(output.sigmoid_prime, a * (1 - a), **F64)  # the softmax Jacobian's diagonal


def test_every_network_path_equals_autograd_on_cross_entropy_float64():
    torch.manual_seed(0)
    net = Network([6, 5, 4, 3], cost="log_likelihood", dtype=torch.float64)
    x, labels = torch.rand(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    params = list(net.parameters())
    ref = network_reference(net, x, labels)
    ref_grads = torch.autograd.grad(ref, params)
    result = net.backprop(x, labels)
    torch.testing.assert_close(result.cost, ref.detach(), **F64)
    for got, want in zip([g for pair in zip(result.nabla_w, result.nabla_b) for g in pair], ref_grads):
        torch.testing.assert_close(got, want, **F64)
    for cost in (net.cost(x, labels), net.layered_cost(x, labels)):
        torch.testing.assert_close(cost, ref, **F64)
        for got, want in zip(torch.autograd.grad(cost, params), ref_grads):
            torch.testing.assert_close(got, want, **F64)
    output, cost = net.output_and_cost(x, labels)
    torch.testing.assert_close(cost, ref.detach(), **F64)
    torch.testing.assert_close(output, net(x).detach(), **F64)
    torch.testing.assert_close(output.sum(-1), torch.ones(8, dtype=torch.float64), **F64)  # a distribution


@pytest.mark.parametrize("lmbda", [0.0, 5.0])
def test_sgd_steps_equal_autograd_and_the_books_l2_update_float64(lmbda):
    torch.manual_seed(1)
    net = Network([6, 5, 3], cost="log_likelihood", dtype=torch.float64)
    ref = Network([6, 5, 3], cost="log_likelihood", dtype=torch.float64)
    ref.load_state_dict(net.state_dict())
    eta, n = 0.5, 100
    for _step in range(3):
        x, labels = torch.rand(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
        want_cost = network_reference(ref, x, labels)
        grads = torch.autograd.grad(want_cost, list(ref.parameters()))
        with torch.no_grad():
            for (name, p), g in zip(ref.named_parameters(), grads):
                decay = 1 - eta * lmbda / n if name.endswith("weight") else 1.0
                p.copy_(decay * p - eta * g)  # w → (1 − ηλ/n) w − η ∂C₀/∂w; b → b − η ∂C₀/∂b
        got_cost = net.sgd_step(x, labels, eta=eta, lmbda=lmbda, n=n)
        torch.testing.assert_close(got_cost, want_cost.detach(), **F64)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_softmax_gives_finite_costs_and_gradients_equal_to_autograd(dtype):
    net, x, labels = saturated_network("log_likelihood", dtype)
    # the softmax puts all its mass on a wrong class: aᴸ_{y(x)} rounds to 0
    params = list(net.parameters())
    assert (net(x).gather(1, labels[:, None]) == 0).all()
    ref = network_reference(net, x, labels)
    ref_grads = torch.autograd.grad(ref, params)
    assert torch.isfinite(ref) and ref.item() > 1e3
    for cost in (net.cost(x, labels), net.layered_cost(x, labels), net.backprop(x, labels).cost):
        torch.testing.assert_close(cost.detach(), ref.detach(), rtol=1e-6, atol=0)
    for cost in (net.cost(x, labels), net.layered_cost(x, labels)):
        for got, want in zip(torch.autograd.grad(cost, params), ref_grads):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    z = torch.tensor([[1e4, -1e4, 0.0]], dtype=dtype, requires_grad=True)
    cost = LogLikelihoodCost()(z, torch.tensor([1]))
    torch.testing.assert_close(cost.detach(), torch.tensor(2e4, dtype=dtype))
    (g,) = torch.autograd.grad(cost, z)
    torch.testing.assert_close(g, torch.tensor([[1.0, -1.0, 0.0]], dtype=dtype))  # aᴸ − y, exactly


def test_gradcheck_and_gradgradcheck_float64_of_both_functions():
    x, w, b = leaves((5, 3), (4, 3), (4,))
    labels = torch.tensor([0, 3, 2, 1, 1])
    assert gradcheck(lambda *t: softmax_log_likelihood(*t, labels), (x, w, b), check_forward_ad=True)
    assert gradgradcheck(lambda *t: softmax_log_likelihood(*t, labels), (x, w, b))
    (z,) = leaves((5, 4))
    assert gradcheck(lambda z: log_likelihood_cost(z, labels, "none"), (z,), check_forward_ad=True)
    assert gradgradcheck(lambda z: log_likelihood_cost(z, labels, "none"), (z,))


def test_log_likelihood_cost_module_equals_cross_entropy_loss_in_a_users_model_float64():
    torch.manual_seed(2)
    model = torch.nn.Sequential(SigmoidLinear(6, 5, dtype=torch.float64), torch.nn.Linear(5, 3, dtype=torch.float64))
    x, labels = torch.rand(4, 6, dtype=torch.float64), torch.tensor([2, 0, 1, 2])
    params = list(model.parameters())
    got, want = LogLikelihoodCost()(model(x), labels), torch.nn.CrossEntropyLoss()(model(x), labels)
    torch.testing.assert_close(got, want, **F64)
    for g, r in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, r, **F64)
    assert repr(LogLikelihoodCost("sum")) == "LogLikelihoodCost(reduction='sum')"


def test_per_example_gradients_by_vmap_grad_equal_a_python_loop():
    w, b = leaves((3, 5), (3,))
    x, labels = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0, 2])
    per_example = vmap(grad(softmax_log_likelihood, argnums=(1, 2)), in_dims=(0, None, None, 0))(x, w, b, labels)
    for i in range(6):
        want = torch.autograd.grad(reference_cost(x[i : i + 1], w, b, labels[i : i + 1]), (w, b))
        torch.testing.assert_close(per_example[0][i], want[0], **F64)
        torch.testing.assert_close(per_example[1][i], want[1], **F64)


def test_forward_mode_jvp_equals_autograd_reference():
    primals = tuple(t.detach() for t in leaves((4, 5), (3, 5), (3,)))
    primals += (torch.softmax(torch.randn(4, 3, dtype=torch.float64), -1),)
    tangents = tuple(t.detach() for t in leaves((4, 5), (3, 5), (3,), (4, 3), seed=1))
    tangents = (*tangents[:3], tangents[3] - tangents[3].mean(-1, keepdim=True))  # y's rows keep summing to 1
    torch.testing.assert_close(
        jvp(softmax_log_likelihood, primals, tangents), jvp(reference_cost, primals, tangents), **F64
    )


def test_torch_compile_fullgraph_equals_eager():
    torch._dynamo.reset()
    x, labels = torch.rand(10, 784), torch.randint(0, 10, (10,))
    w1, b1, w2, b2 = leaves((30, 784), (30,), (10, 30), (10,), dtype=torch.float32)

    def cost(x, labels):
        return softmax_log_likelihood(sigmoid_linear(x, w1, b1), w2, b2, labels)

    compiled = torch.compile(cost, fullgraph=True)(x, labels)
    eager = cost(x, labels)
    torch.testing.assert_close(compiled, eager, **F32)
    for got, want in zip(torch.autograd.grad(compiled, (w1, b1, w2, b2)), torch.autograd.grad(eager, (w1, b1, w2, b2))):
        torch.testing.assert_close(got, want, **F32)


def test_update_mini_batch_with_log_likelihood_compiles_to_one_graph_equal_to_eager():
    torch._dynamo.reset()
    torch.manual_seed(3)
    eager, compiled = Network([20, 8, 4], cost="log_likelihood"), Network([20, 8, 4], cost="log_likelihood")
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(update_mini_batch, fullgraph=True, dynamic=False)
    x, y = torch.rand(10, 20), TF.one_hot(torch.randint(0, 4, (10,)), 4).float()
    ones, eta = torch.ones(10), torch.tensor(0.5)
    with torch.no_grad():
        got = step(*compiled.weights_and_biases(), x, y, eta, ones, "log_likelihood", 0.1)
        want = update_mini_batch(*eager.weights_and_biases(), x, y, 0.5, ones, "log_likelihood", 0.1)
    torch.testing.assert_close(got, want, **F32)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, **F32)


def test_network_names_the_cost_and_rejects_a_bad_z():
    assert "cost='log_likelihood'" in repr(Network([3, 2], cost="log_likelihood"))
    with pytest.raises(TypeError, match="z must be a floating-point tensor"):
        log_likelihood_cost(torch.tensor([[1, 2]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="cost must be one of .*'log_likelihood'"):
        Network([3, 2], cost="loglikelihood")


def test_manualbp_trains_a_softmax_network_with_the_log_likelihood_and_says_which_step(tmp_path):
    config = write_config(
        tmp_path, model={"cost": "log_likelihood", "eta": 0.5}, trainer={"max_epochs": 1, "limit_train_batches": 10}
    )
    result = manualbp("fit", "--config", config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the native SGD step cannot be used (it has no LogLikelihood() cost)" in result.stdout + result.stderr
    correct = int(re.search(r"^Epoch 0: (\d+) / 10000 test images", result.stdout, re.MULTILINE)[1])
    assert correct > 8000  # 1,000 of the book's steps on real MNIST (N(0, 1) init): far above chance, 1,000
