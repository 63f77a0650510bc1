"""gradient_statistics(): per-example gradient statistics from the book's δ^{x,l}, against three independent
references: the book's per-example backprop, torch.func.vmap(grad(...)) of plain ops, and BackPACK."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from torch_manualbp import Network
from torch_manualbp.functional import quadratic_cost
from torch_manualbp.nn import SigmoidLinear
from torch_manualbp.observe import gradient_statistics, record_errors
from torch_manualbp.testing.reference import BookNetwork

RTOL = 1e-10  # relative, float64, as the issue asks
SIZES = [6, 5, 4, 3]


def network_and_batch(n=9, seed=0):
    torch.manual_seed(seed)
    net = Network(SIZES, init="normal", dtype=torch.float64)
    return net, torch.rand(n, SIZES[0], dtype=torch.float64), torch.randint(0, SIZES[-1], (n,))


def assert_close(actual, expected):
    """Equal to RTOL relative to the reference's largest magnitude (elementwise rtol fails on exact zeros)."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


def reference_statistics(per_example: list[torch.Tensor]):
    """From explicit per-example gradients g_x, one (N, *param shape) tensor per parameter in the order
    W¹, b¹, W², b², ...: everything gradient_statistics claims, by definition."""
    n = per_example[0].shape[0]
    flat = [g.reshape(n, -1) for g in per_example]
    layer_sq_norms = [(w**2).sum(1) + (b**2).sum(1) for w, b in zip(flat[0::2], flat[1::2])]
    params = [(g.mean(0), (g**2).sum(0), g.var(0, correction=0)) for g in per_example]
    everything = torch.cat(flat, dim=1)  # (N, P): only affordable because the test network is tiny
    return (
        torch.stack(layer_sq_norms, 1),
        params,
        _noise_scale(everything),
        [_noise_scale(torch.cat([w, b], 1)) for w, b in zip(flat[0::2], flat[1::2])],
    )


def _noise_scale(g):
    """McCandlish et al.'s appendix-A estimators, written out for the (N, P) matrix of per-example gradients."""
    n = g.shape[0]
    mean_of_sq_norms, sq_norm_of_mean = (g**2).sum(1).mean(), (g.mean(0) ** 2).sum()
    true_sq = (n * sq_norm_of_mean - mean_of_sq_norms) / (n - 1)
    trace = (mean_of_sq_norms - sq_norm_of_mean) / (1 - 1 / n)
    return true_sq, trace, trace / true_sq


def assert_statistics_match(stats, per_example):
    sq_norms, params, total, per_layer = reference_statistics(per_example)
    assert_close(stats.per_example_sq_norm, sq_norms)
    ours = [p for layer in stats.layers for p in (layer.weight, layer.bias)]
    for mine, (mean, sum_sq, variance) in zip(ours, params, strict=True):
        assert_close(mine.mean, mean)
        assert_close(mine.sum_grad_squared, sum_sq)
        assert_close(mine.variance, variance)
    for mine, (true_sq, trace, b_simple) in zip([stats, *stats.layers], [total, *per_layer], strict=True):
        assert_close(mine.true_grad_sq_norm, true_sq)
        assert_close(mine.trace_covariance, trace)
        assert_close(mine.noise_scale, b_simple)


def books_per_example_gradients(net, x, labels):
    book = BookNetwork(
        net.sizes,
        weights=[layer.weight.detach().numpy() for layer in net.layers],
        biases=[layer.bias.detach().numpy() for layer in net.layers],
    )
    y = np.eye(net.sizes[-1])[labels.numpy()]
    per_param = [[] for _ in range(2 * len(net.layers))]
    for i in range(len(x)):
        nabla_b, nabla_w = book.backprop(x[i].numpy().reshape(-1, 1), y[i].reshape(-1, 1))  # C_x's own nabla
        for j, (nw, nb) in enumerate(zip(nabla_w, nabla_b)):
            per_param[2 * j].append(torch.from_numpy(nw))
            per_param[2 * j + 1].append(torch.from_numpy(nb.ravel()))
    return [torch.stack(g) for g in per_param]


def vmap_per_example_gradients(params: dict[str, torch.Tensor], x, y_float):
    """torch.func's per-example gradients of C_x = ½‖y − aᴸ‖² for the network written in plain ops."""

    def cost_x(params, x_i, y_i):
        a = x_i
        for i in range(len(params) // 2):
            a = torch.sigmoid(torch.nn.functional.linear(a, params[f"w{i}"], params[f"b{i}"]))
        return 0.5 * ((a - y_i) ** 2).sum()

    grads = vmap(grad(cost_x), in_dims=(None, 0, 0))(params, x, y_float)
    return [grads[f"{kind}{i}"] for i in range(len(params) // 2) for kind in ("w", "b")]


def plain_parameters(net):
    return {
        f"{kind}{i}": getattr(layer, name).detach()
        for i, layer in enumerate(net.layers)
        for kind, name in (("w", "weight"), ("b", "bias"))
    }


def test_statistics_match_the_books_per_example_algorithm_float64():
    net, x, labels = network_and_batch()
    assert_statistics_match(gradient_statistics(net, x, labels), books_per_example_gradients(net, x, labels))


def test_statistics_match_vmap_of_grad_float64_with_float_targets():
    net, x, _ = network_and_batch()
    y = torch.rand(len(x), SIZES[-1], dtype=torch.float64)  # float targets, not one-hot
    assert_statistics_match(gradient_statistics(net, x, y), vmap_per_example_gradients(plain_parameters(net), x, y))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_statistics_match_backpack_batch_l2_sum_grad_squared_and_variance_float64(reduction):
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import BatchL2Grad, SumGradSquared, Variance

    net, x, labels = network_and_batch(n=11)
    layers = []
    for layer in net.layers:
        linear = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(layer.weight)
            linear.bias.copy_(layer.bias)
        layers += [linear, torch.nn.Sigmoid()]
    model = backpack.extend(torch.nn.Sequential(*layers))
    y = torch.eye(SIZES[-1], dtype=torch.float64)[labels]
    cost_x = 0.5 * ((model(x.requires_grad_()) - y) ** 2).sum(1)  # C_x; an input needing grad quiets a hook warning
    cost = cost_x.sum() if reduction == "sum" else cost_x.mean()
    with backpack.backpack(BatchL2Grad(), SumGradSquared(), Variance()):
        cost.backward()
    stats = gradient_statistics(net, x, labels)
    # BackPACK's per-example gradients are those of the cost's terms: g_x for the sum, g_x/N for the mean
    scale = 1.0 if reduction == "sum" else 1.0 / len(x) ** 2
    linears = model[0::2]
    batch_l2 = torch.stack([m.weight.batch_l2 + m.bias.batch_l2 for m in linears], 1)
    assert_close(stats.per_example_sq_norm * scale, batch_l2)
    for mine, linear in zip(stats.layers, linears, strict=True):
        for ours, theirs in ((mine.weight, linear.weight), (mine.bias, linear.bias)):
            assert_close(ours.mean, theirs.grad / (len(x) if reduction == "sum" else 1))  # ḡ = ∂C/∂θ of the mean
            assert_close(ours.sum_grad_squared * scale, theirs.sum_grad_squared)
            assert_close(ours.variance * scale, theirs.variance)


def test_trace_covariance_is_the_unbiased_sample_variance_and_true_grad_corrects_the_mean_norm():
    # E‖ḡ‖² = |G|² + S/N: the two estimators satisfy ‖ḡ‖² = |G|² + S/N exactly on any batch, and S is the
    # summed unbiased variance of the per-example gradients.
    net, x, labels = network_and_batch(n=13)
    stats = gradient_statistics(net, x, labels)
    n = len(x)
    params = [p for layer in stats.layers for p in (layer.weight, layer.bias)]
    mean_sq = sum((p.mean**2).sum() for p in params)
    assert_close(stats.true_grad_sq_norm + stats.trace_covariance / n, mean_sq)
    per_example = books_per_example_gradients(net, x, labels)
    assert_close(stats.trace_covariance, sum(g.reshape(n, -1).var(0, correction=1).sum() for g in per_example))


def test_statistics_leave_parameters_and_grads_untouched_and_build_no_graph():
    net, x, labels = network_and_batch()
    before = [p.detach().clone() for p in net.parameters()]
    x.requires_grad_()
    stats = gradient_statistics(net, x, labels)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    assert all(p.grad is None for p in net.parameters()) and x.grad is None
    assert not stats.noise_scale.requires_grad and not stats.per_example_sq_norm.requires_grad


class _LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an aten op returns while active."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_as_large_as_n_weight_matrices_is_formed():
    torch.manual_seed(0)
    sizes, n = [20, 30, 25], 64  # weights of 600 and 750 elements; N copies of either would be ≥ 38,400
    net = Network(sizes, dtype=torch.float64)
    x, labels = torch.rand(n, sizes[0], dtype=torch.float64), torch.randint(0, sizes[-1], (n,))
    with _LargestTensor() as mode:
        gradient_statistics(net, x, labels)
    assert mode.largest <= max(n * max(sizes), max(p.numel() for p in net.parameters()))


@pytest.mark.parametrize("path", ["functions", "network_cost"])
def test_statistics_from_a_recorded_mean_cost_backward_equal_those_of_one_pass(path):
    net, x, labels = network_and_batch()
    with record_errors() as record:
        cost = quadratic_cost(net(x), labels) if path == "functions" else net.cost(x, labels)
        cost.backward()
    assert_statistics_match(record.gradient_statistics(net), books_per_example_gradients(net, x, labels))


def test_statistics_from_a_recorded_sum_cost_backward_need_reduction_sum():
    net, x, labels = network_and_batch()
    with record_errors() as record:
        quadratic_cost(net(x), labels, reduction="sum").backward()
    reference = books_per_example_gradients(net, x, labels)
    assert_statistics_match(record.gradient_statistics(net, reduction="sum"), reference)
    # read as a mean, the same record gives each example's gradient N times too large
    assert_close(record.gradient_statistics(net).layers[0].bias.mean, reference[1].mean(0) * len(x))


def test_recorded_statistics_of_a_layer_without_bias_match_vmap():
    torch.manual_seed(0)
    f64 = torch.float64
    model = torch.nn.Sequential(SigmoidLinear(6, 5, bias=False, dtype=f64), SigmoidLinear(5, 3, dtype=f64))
    x, y = torch.rand(8, 6, dtype=torch.float64), torch.rand(8, 3, dtype=torch.float64)
    with record_errors() as record:
        quadratic_cost(model(x), y).backward()
    stats = record.gradient_statistics(model)
    assert stats.layers[0].bias is None

    def cost_x(params, x_i, y_i):
        return 0.5 * ((functional_call(model, params, (x_i.unsqueeze(0),)) - y_i) ** 2).sum()

    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = vmap(grad(cost_x), in_dims=(None, 0, 0))(params, x, y)
    w0, w1, b1 = grads["0.weight"], grads["1.weight"], grads["1.bias"]
    assert_close(stats.per_example_sq_norm[:, 0], (w0**2).sum((1, 2)))
    assert_close(stats.per_example_sq_norm[:, 1], (w1**2).sum((1, 2)) + (b1**2).sum(1))
    assert_close(stats.layers[0].weight.variance, w0.var(0, correction=0))
    assert_close(stats.noise_scale, _noise_scale(torch.cat([g.reshape(8, -1) for g in (w0, w1, b1)], 1))[2])


def test_bad_arguments_are_named():
    net, x, labels = network_and_batch()
    with pytest.raises(TypeError, match="network must be a torch_manualbp.Network"):
        gradient_statistics(torch.nn.Linear(6, 3), x, labels)
    with pytest.raises(ValueError, match="x must hold at least 2 examples"):
        gradient_statistics(net, x[:1], labels[:1])
    with pytest.raises(ValueError, match=r"x must be a non-empty mini-batch of shape \(N, 6\)"):
        gradient_statistics(net, x[:, :5], labels)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        gradient_statistics(net, x.long(), labels)
    with pytest.raises(ValueError, match="integer labels y must have shape"):
        gradient_statistics(net, x, labels[:3])
    with pytest.raises(ValueError, match=r"labels y must lie in 0\.\.2"):
        gradient_statistics(net, x, labels + 5)
    with record_errors() as record:
        quadratic_cost(net(x), labels).backward()
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        record.gradient_statistics(net, reduction="none")
    with pytest.raises(ValueError, match="network has no SigmoidLinear layers"):
        record.gradient_statistics(torch.nn.Linear(6, 3))
    with record_errors() as record:
        quadratic_cost(net(x[:1]), labels[:1]).backward()
    with pytest.raises(ValueError, match="the recorded mini-batch must hold at least 2 examples"):
        record.gradient_statistics(net)


def test_statistics_of_a_cross_entropy_network_are_those_of_its_own_per_example_cost_float64():
    from torch_manualbp import Network
    from torch_manualbp.observe import gradient_statistics

    torch.manual_seed(5)
    net = Network([6, 5, 3], cost="cross_entropy", dtype=torch.float64)
    x, labels = torch.rand(8, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    stats = gradient_statistics(net, x, labels)
    params = list(net.parameters())
    for i in range(len(x)):  # each example's own cross-entropy, differentiated by autograd
        a = x[i : i + 1]
        for layer in net.layers:
            z = torch.nn.functional.linear(a, layer.weight, layer.bias)
            a = torch.sigmoid(z)
        target = torch.nn.functional.one_hot(labels[i : i + 1], 3).double()
        cost = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="sum")
        grads = torch.autograd.grad(cost, params)
        per_layer = [(grads[2 * l] ** 2).sum() + (grads[2 * l + 1] ** 2).sum() for l in range(2)]
        torch.testing.assert_close(stats.per_example_sq_norm[i], torch.stack(per_layer), rtol=1e-10, atol=0)
