"""Chapter 3's cross-entropy cost and L2 regularisation in every path, against autograd on
binary_cross_entropy_with_logits, the book's per-example formulas, finite differences, and at saturation."""

import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import leaves, network_and_batch, saturated_network
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

from torch_manualbp import Network
from torch_manualbp.functional import sigmoid_cross_entropy, sigmoid_linear
from torch_manualbp.observe import record_errors
from torch_manualbp.testing.reference import autograd_cost, autograd_output

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)  # float32 rounding in another order, as in test_functional.py


def reference_cost(x, weight, bias, y):
    """One output layer's cross-entropy in plain autograd, with ``sigmoid_cross_entropy``'s signature."""
    return autograd_cost([weight, bias], x, y, "cross_entropy")


# --- the Function: sigmoid_cross_entropy -------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("with_bias", [True, False])
def test_sigmoid_cross_entropy_passes_gradcheck_and_gradgradcheck_float64(reduction, n, with_bias):
    x, w, b = leaves((n, 4), (3, 4), (3,))
    y = torch.rand(n, 3, dtype=torch.float64).requires_grad_()  # targets anywhere in [0, 1], with their gradient

    def cost(x, w, b, y):
        return sigmoid_cross_entropy(x, w, b if with_bias else None, y, reduction)

    assert gradcheck(cost, (x, w, b, y), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(cost, (x, w, b, y), check_fwd_over_rev=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64), (torch.float32, F32)])
@pytest.mark.parametrize("n,n_in,n_out", [(1, 30, 10), (10, 100, 10), (64, 30, 10)])
def test_equals_autograd_on_binary_cross_entropy_with_logits(dtype, tol, n, n_in, n_out):
    x, w, b = leaves((n, n_in), (n_out, n_in), (n_out,), dtype=dtype)
    y = torch.rand(n, n_out, dtype=dtype).requires_grad_()
    cost = sigmoid_cross_entropy(x, w, b, y)
    ref = reference_cost(x, w, b, y)
    torch.testing.assert_close(cost, ref, **tol)
    for got, want in zip(torch.autograd.grad(cost, (x, w, b, y)), torch.autograd.grad(ref, (x, w, b, y))):
        torch.testing.assert_close(got, want, **tol)


def test_cost_is_the_books_per_example_formula():
    x, w, b = leaves((5, 4), (3, 4), (3,))
    labels = torch.tensor([0, 2, 1, 1, 0])
    a = torch.sigmoid(x @ w.T + b).detach().numpy()
    y = np.eye(3)[labels.numpy()]
    # C = −(1/n) Σ_x Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)], one example and one output at a time
    book = (
        -sum(y[i, j] * math.log(a[i, j]) + (1 - y[i, j]) * math.log(1 - a[i, j]) for i in range(5) for j in range(3))
        / 5
    )
    assert math.isclose(sigmoid_cross_entropy(x, w, b, labels).item(), book, rel_tol=1e-12)


def test_backward_starts_from_bp1_delta_equal_to_a_minus_y():
    x, w, b = leaves((6, 4), (3, 4), (3,))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with record_errors() as record:
        sigmoid_cross_entropy(x, w, b, labels).backward()
    a = torch.sigmoid(x @ w.T + b).detach()
    # ∂C/∂zᴸ of the mean cost is δ^{x,L}/n with δᴸ = aᴸ − y: no σ'(zᴸ) factor
    torch.testing.assert_close(record.for_weight(w).delta, (a - TF.one_hot(labels, 3)) / 6, **F64)


def test_integer_labels_equal_one_hot_targets_and_leading_dims_work():
    x, w, b = leaves((2, 3, 4), (5, 4), (5,))
    labels = torch.randint(0, 5, (2, 3))
    one_hot = TF.one_hot(labels, 5).double()
    assert torch.equal(sigmoid_cross_entropy(x, w, b, labels), sigmoid_cross_entropy(x, w, b, one_hot))
    per_example = sigmoid_cross_entropy(x, w, b, labels, "none")
    assert per_example.shape == (2, 3)
    want = TF.binary_cross_entropy_with_logits(TF.linear(x, w, b), one_hot, reduction="none").sum(-1)
    torch.testing.assert_close(per_example, want, **F64)
    single = sigmoid_cross_entropy(x[0, 0], w, b, labels[0, 0], "none")  # one example of shape (in,)
    torch.testing.assert_close(single, want[0, 0], **F64)


def test_per_example_gradients_by_vmap_grad_equal_a_python_loop():
    w, b = leaves((3, 5), (3,))
    x = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    per_example = vmap(grad(sigmoid_cross_entropy, argnums=(1, 2)), in_dims=(0, None, None, 0))(x, w, b, labels)
    for i in range(6):
        y = TF.one_hot(labels[i : i + 1], 3).double()
        want = torch.autograd.grad(reference_cost(x[i : i + 1], w, b, y), (w, b))
        torch.testing.assert_close(per_example[0][i], want[0], **F64)
        torch.testing.assert_close(per_example[1][i], want[1], **F64)


def test_forward_mode_jvp_equals_autograd_reference():
    primals = tuple(t.detach() for t in leaves((4, 5), (3, 5), (3,)))
    primals += (torch.rand(4, 3, dtype=torch.float64),)
    tangents = tuple(t.detach() for t in leaves((4, 5), (3, 5), (3,), (4, 3), seed=1))
    torch.testing.assert_close(
        jvp(sigmoid_cross_entropy, primals, tangents), jvp(reference_cost, primals, tangents), **F64
    )


def test_torch_compile_fullgraph_equals_eager():
    torch._dynamo.reset()
    x = torch.rand(10, 784)
    w1, b1, w2, b2 = leaves((30, 784), (30,), (10, 30), (10,), dtype=torch.float32)
    labels = torch.randint(0, 10, (10,))

    def cost(x, labels):
        return sigmoid_cross_entropy(sigmoid_linear(x, w1, b1), w2, b2, labels)

    compiled = torch.compile(cost, fullgraph=True)(x, labels)
    compiled_grads = torch.autograd.grad(compiled, (w1, b1, w2, b2))
    eager = cost(x, labels)
    eager_grads = torch.autograd.grad(eager, (w1, b1, w2, b2))
    torch.testing.assert_close(compiled, eager, **F32)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_saturated_outputs_give_finite_costs_and_gradients_equal_to_autograd(dtype, scale):
    # z = ±scale: σ(z) is exactly 0 or 1, right and wrong; the quotient form (a − y)/(a(1 − a)) would be 0·∞ = NaN.
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=dtype, requires_grad=True)
    w = torch.tensor([[scale, 0.0], [0.0, -scale], [scale, scale]], dtype=dtype, requires_grad=True)
    b = torch.zeros(3, dtype=dtype, requires_grad=True)
    y = TF.one_hot(torch.tensor([0, 2]), 3).to(dtype)
    a = torch.sigmoid(x @ w.T).detach()
    assert ((a == 0) | (a == 1)).sum() >= 2  # saturated exactly, one of them wrong (a = 1 where y = 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cost = sigmoid_cross_entropy(x, w, b, y)
        grads = torch.autograd.grad(cost, (x, w, b))
    ref = reference_cost(x, w, b, y)
    assert torch.isfinite(cost) and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(cost, ref, rtol=1e-6, atol=0)  # a wrong output at z = ±scale costs |z|: exact
    for got, want in zip(grads, torch.autograd.grad(ref, (x, w, b))):
        torch.testing.assert_close(got, want, **F64)  # 0, ±1 and ±scale: no rounding at all


# --- Network(cost="cross_entropy"): backprop, cost, layered_cost, sgd_step ----------------------------------------


@pytest.fixture
def net_and_batch():
    return network_and_batch("cross_entropy")


def test_backprop_equals_plain_autograd_float64(net_and_batch):
    net, x, labels = net_and_batch
    result = net.backprop(x, labels)
    ref = autograd_cost(net.parameters(), x, TF.one_hot(labels, 3).double(), "cross_entropy")
    torch.testing.assert_close(result.cost, ref.detach(), **F64)
    grads = torch.autograd.grad(ref, list(net.parameters()))
    for got, want in zip([g for pair in zip(result.nabla_w, result.nabla_b) for g in pair], grads):
        torch.testing.assert_close(got, want, **F64)
    a = autograd_output(net.parameters(), x).detach()
    torch.testing.assert_close(result.delta[-1], a - TF.one_hot(labels, 3), **F64)  # (BP1) δᴸ = aᴸ − y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_node_cost_equals_the_per_layer_functions_bit_for_bit(dtype):
    torch.manual_seed(0)
    net = Network([784, 30, 30, 10], cost="cross_entropy", dtype=dtype)
    x, labels = torch.rand(10, 784, dtype=dtype), torch.randint(0, 10, (10,))
    fused = net.cost(x, labels)
    fused.backward()
    fused_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    layered = net.layered_cost(x, labels)
    layered.backward()
    assert torch.equal(fused, layered)
    assert all(torch.equal(g, p.grad) for g, p in zip(fused_grads, net.parameters()))


def test_one_node_cost_gives_the_input_and_target_gradients_of_plain_autograd():
    torch.manual_seed(0)
    net = Network([5, 4, 3], cost="cross_entropy", dtype=torch.float64)
    x = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.rand(6, 3, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(net.cost(x, y), (x, y))
    want = torch.autograd.grad(autograd_cost(net.parameters(), x, y, "cross_entropy"), (x, y))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


def test_layered_cost_supports_double_backward_and_the_one_node_cost_says_it_does_not():
    torch.manual_seed(0)
    net = Network([4, 3, 2], cost="cross_entropy", dtype=torch.float64)
    x, labels = torch.rand(5, 4, dtype=torch.float64, requires_grad=True), torch.tensor([0, 1, 1, 0, 1])
    assert gradgradcheck(lambda x: net.layered_cost(x, labels), (x,))
    with pytest.raises(RuntimeError, match="not differentiable.*layered_cost"):
        torch.autograd.grad(net.cost(x, labels), x, create_graph=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_path_is_finite_and_right_with_outputs_saturated_at_z_of_1e4(dtype):
    net, x, labels = saturated_network("cross_entropy", dtype)
    # both outputs saturated on the wrong neuron: a = 1 where y = 0, a = 0 where y = 1
    y = TF.one_hot(labels, 3).to(dtype)
    params = list(net.parameters())
    ref = autograd_cost(net.parameters(), x, y, "cross_entropy")
    ref_grads = torch.autograd.grad(ref, params)
    assert ref.item() > 1e4  # badly wrong, and finite
    result = net.backprop(x, labels)
    torch.testing.assert_close(result.cost, ref.detach(), rtol=1e-6, atol=0)
    for got, want in zip([g for pair in zip(result.nabla_w, result.nabla_b) for g in pair], ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for cost in (net.cost(x, labels), net.layered_cost(x, labels)):
        torch.testing.assert_close(cost, ref, rtol=1e-6, atol=0)
        for got, want in zip(torch.autograd.grad(cost, params), ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    before = [p.detach().clone() for p in params]
    step_cost = net.sgd_step(x, labels, eta=0.5)
    torch.testing.assert_close(step_cost, ref.detach(), rtol=1e-6, atol=0)
    for p, old, g in zip(params, before, ref_grads):
        torch.testing.assert_close(p.detach(), old - 0.5 * g, rtol=1e-6, atol=1e-6)


def network2_update(weights, biases, xs, ys, eta, lmbda, n):
    """The book's chapter-3 step, one example at a time in column vectors, written from its equations:
    δᴸ = aᴸ − y (BP1 for the cross-entropy), δˡ = (Wˡ⁺¹ᵀ δˡ⁺¹) ⊙ σ'(zˡ) (BP2), ∂C_x/∂b = δ,
    ∂C_x/∂W = δ aˡ⁻¹ᵀ; then W → (1 − ηλ/n) W − (η/m) Σ_x ∂C_x/∂W and b → b − (η/m) Σ_x ∂C_x/∂b.
    Returns the mean cost before the step."""
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    sum_w = [np.zeros_like(w) for w in weights]
    sum_b = [np.zeros_like(b) for b in biases]
    cost = 0.0
    for x, y in zip(xs, ys):
        a, activations, zs = x.reshape(-1, 1), [x.reshape(-1, 1)], []
        for w, b in zip(weights, biases):
            zs.append(w @ a + b)
            a = sigmoid(zs[-1])
            activations.append(a)
        y = y.reshape(-1, 1)
        cost -= float(np.sum(y * np.log(a) + (1 - y) * np.log(1 - a)))
        delta = a - y
        for l in range(len(weights) - 1, -1, -1):
            sum_b[l] += delta
            sum_w[l] += delta @ activations[l].T
            if l:
                s = sigmoid(zs[l - 1])
                delta = (weights[l].T @ delta) * s * (1 - s)
    m = len(xs)
    new_weights = [(1 - eta * lmbda / n) * w - (eta / m) * nw for w, nw in zip(weights, sum_w)]
    new_biases = [b - (eta / m) * nb for b, nb in zip(biases, sum_b)]
    return new_weights, new_biases, cost / m


@pytest.mark.parametrize("sizes", [[6, 4], [6, 5, 3], [8, 6, 5, 4]], ids=["2-layers", "3", "4"])
@pytest.mark.parametrize("lmbda", [0.0, 5.0])
def test_sgd_steps_equal_the_books_regularised_cross_entropy_update_float64(sizes, lmbda):
    torch.manual_seed(1)
    net = Network(sizes, cost="cross_entropy", init="normal", dtype=torch.float64)
    weights = [layer.weight.detach().numpy().copy() for layer in net.layers]
    biases = [layer.bias.detach().numpy().reshape(-1, 1).copy() for layer in net.layers]
    classes, eta, n = sizes[-1], 0.5, 50  # a small n, so that the decay 1 − ηλ/n = 0.95 shows
    for step in range(5):
        x = torch.rand(7, sizes[0], dtype=torch.float64)
        labels = torch.randint(0, classes, (7,))
        y = np.eye(classes)[labels.numpy()]
        weights, biases, expected_cost = network2_update(weights, biases, x.numpy(), y, eta, lmbda, n)
        cost = net.sgd_step(x, labels, eta, lmbda=lmbda, n=n)
        assert math.isclose(cost.item(), expected_cost, rel_tol=1e-12), step
        for layer, w, b in zip(net.layers, weights, biases):
            torch.testing.assert_close(layer.weight.detach(), torch.from_numpy(w), **F64)
            torch.testing.assert_close(layer.bias.detach(), torch.from_numpy(b.ravel()), **F64)


def test_regularised_sgd_steps_equal_autograd_and_torch_sgd_weight_decay_on_weights_only_float32():
    # Each of 20 steps from the same float32 parameters on both sides: over many steps at η = 0.5 the two float32
    # trajectories drift apart by more than one step's rounding (how far depends on the thread count, which changes
    # the summation order), so the steps are compared one at a time; float64 over many steps is test_sgd_step.py's.
    torch.manual_seed(0)
    net = Network([784, 30, 10], cost="cross_entropy", init="normal")
    eta, lmbda, n = 0.5, 5.0, 1000
    for _ in range(20):
        reference = [p.detach().clone().requires_grad_() for p in net.parameters()]
        optimizer = torch.optim.SGD(
            [{"params": reference[0::2], "weight_decay": lmbda / n}, {"params": reference[1::2], "weight_decay": 0.0}],
            lr=eta,
        )
        x, labels = torch.rand(10, 784), torch.randint(0, 10, (10,))
        cost = net.sgd_step(x, labels, eta, lmbda=lmbda, n=n)
        expected = autograd_cost(reference, x, TF.one_hot(labels, 10).float(), "cross_entropy")
        expected.backward()
        optimizer.step()
        torch.testing.assert_close(cost, expected.detach(), rtol=1e-5, atol=1e-6)
        for mine, theirs in zip(net.parameters(), reference):
            torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-4, atol=1e-5)


def test_cross_entropy_learns_a_saturated_wrong_output_that_the_quadratic_cost_does_not():
    # BP1's point: at z = 10 with y = 0, the quadratic δ = (a − y) σ'(z) ≈ 4.5e-5, the cross-entropy's δ = a − y ≈ 1.
    deltas = {}
    for cost in ("quadratic", "cross_entropy"):
        net = Network([1, 1], cost=cost, dtype=torch.float64)
        with torch.no_grad():
            net.layers[0].weight.fill_(5.0)
            net.layers[0].bias.fill_(5.0)
        deltas[cost] = (
            net.backprop(torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)).delta[0].item()
        )
    a = 1 / (1 + math.exp(-10))
    assert math.isclose(deltas["cross_entropy"], a, rel_tol=1e-12)
    assert math.isclose(deltas["quadratic"], a * a * (1 - a), rel_tol=1e-12)


def test_repr_names_the_cost():
    assert repr(Network([3, 2], cost="cross_entropy")).startswith("Network(\n  sizes=[3, 2], cost='cross_entropy'")


# --- bad input ------------------------------------------------------------------------------------------------------


X, W = torch.rand(2, 3), torch.rand(4, 3)  # two examples into an output layer of 4 neurons


@pytest.mark.parametrize(
    "make, error, words",
    [
        (
            lambda: Network([3, 2], cost="crossentropy"),
            ValueError,
            "cost must be one of ('quadratic', 'cross_entropy', 'log_likelihood'), got 'crossentropy'",
        ),
        (lambda: Network([3, 2], cost=None), TypeError, "cost must be the name of a cost"),
        (lambda: sigmoid_cross_entropy(X, W, None, torch.tensor([0, 5])), ValueError, "labels y must lie in 0..3"),
        (
            lambda: sigmoid_cross_entropy(X, W.T, None, torch.tensor([0, 1])),
            ValueError,
            "x must have shape (*, in_features)",
        ),
        (
            lambda: sigmoid_cross_entropy(X, W, torch.rand(3), torch.tensor([0, 1])),
            ValueError,
            "bias must have shape (4,)",
        ),
        (lambda: sigmoid_cross_entropy(X, W, None, torch.rand(2, 4), "avg"), ValueError, "reduction must be one of"),
        (lambda: sigmoid_cross_entropy(X, W, None, torch.rand(2, 4).double()), TypeError, "y must have the dtype"),
        (lambda: sigmoid_cross_entropy(X[:0], W, None, torch.rand(0, 4)), ValueError, "mean cost of zero examples"),
        (
            lambda: sigmoid_cross_entropy(X.long(), W, None, torch.tensor([0, 1])),
            TypeError,
            "x must be a floating-point",
        ),
    ],
)
def test_bad_arguments_raise_errors_naming_them(make, error, words):
    with pytest.raises(error, match=re.escape(words)):
        make()


@pytest.mark.parametrize(
    "lmbda, n, error, words",
    [
        (-1.0, 100, ValueError, "lmbda must be a finite number >= 0"),
        (float("nan"), 100, ValueError, "lmbda must be a finite number >= 0"),
        (True, 100, TypeError, "lmbda must be a real number"),
        ("5", 100, TypeError, "lmbda must be a real number"),
        (5.0, None, TypeError, "n must be the training-set size"),
        (5.0, 0, ValueError, "n must be the training-set size, a positive number"),
        (5.0, 1e4, TypeError, "n must be the training-set size"),
    ],
)
def test_sgd_step_rejects_bad_lmbda_or_n_before_changing_any_parameter(lmbda, n, error, words):
    net = Network([5, 4, 3], cost="cross_entropy")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=words):
        net.sgd_step(torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), 0.5, lmbda=lmbda, n=n)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_update_mini_batch_with_cross_entropy_and_l2_compiles_to_one_graph_equal_to_eager():
    # update_mini_batch is what ManualBPClassifier(compile=True) unrolls; η is a 0-d tensor there.
    from torch_manualbp.network import update_mini_batch

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager, compiled = Network([20, 8, 4], cost="cross_entropy"), Network([20, 8, 4], cost="cross_entropy")
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(update_mini_batch, fullgraph=True, dynamic=False)
    eta, ones = torch.tensor(0.5), torch.ones(5)
    for _ in range(3):
        x, y = torch.rand(5, 20), TF.one_hot(torch.randint(0, 4, (5,)), 4).float()
        with torch.no_grad():
            want = update_mini_batch(*eager.weights_and_biases(), x, y, eta, ones, "cross_entropy", 5.0 / 50)
            got = step(*compiled.weights_and_biases(), x, y, eta, ones, "cross_entropy", 5.0 / 50)
        torch.testing.assert_close(got, want, **F32)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), **F32)
