"""The hand-written Functions against finite differences and against plain autograd."""

import warnings

import pytest
import torch
import torch.nn.functional as TF
from conftest import leaves
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap
from torch.utils.flop_counter import FlopCounterMode

from torch_manualbp.functional import quadratic_cost, sigmoid_linear
from torch_manualbp.testing.reference import autograd_output, autograd_quadratic_cost

# float32 tolerance: the two paths differ only in rounding order. A length-K dot product in float32
# carries a relative error of about sqrt(K)·eps ≈ 28 × 1.2e-7 ≈ 3.4e-6 for K = 784, the widest layer
# used here, so 1e-5 relative (and 1e-6 absolute for values near zero) has a margin of ~3x.
F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-10, atol=1e-10)


SHAPES = [(1, 3, 2), (5, 4, 3), (16, 10, 7)]


@pytest.mark.parametrize("n,n_in,n_out", SHAPES)
def test_sigmoid_linear_passes_gradcheck_and_gradgradcheck_float64(n, n_in, n_out):
    x, w, b = leaves((n, n_in), (n_out, n_in), (n_out,))
    assert gradcheck(sigmoid_linear, (x, w, b), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(sigmoid_linear, (x, w, b), check_fwd_over_rev=True)


def test_sigmoid_linear_gradcheck_on_non_contiguous_input_without_bias():
    (x, w) = leaves((7, 4), (3, 7))
    x_t = x.detach().T.requires_grad_()  # (4, 7), a transposed view
    assert not x_t.is_contiguous()
    assert gradcheck(sigmoid_linear, (x_t, w), check_forward_ad=True)
    assert gradgradcheck(sigmoid_linear, (x_t, w))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n", [1, 6])
def test_quadratic_cost_passes_gradcheck_and_gradgradcheck_float64(reduction, n):
    a, y = leaves((n, 4), (n, 4))

    def cost(a, y):
        return quadratic_cost(a, y, reduction)

    assert gradcheck(cost, (a, y), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(cost, (a, y), check_fwd_over_rev=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64), (torch.float32, F32)])
@pytest.mark.parametrize("n,n_in,n_out", [(1, 784, 30), (10, 784, 30), (64, 30, 10)])
def test_layer_and_cost_match_autograd(dtype, tol, n, n_in, n_out):
    x, w, b, y = leaves((n, n_in), (n_out, n_in), (n_out,), (n, n_out), dtype=dtype)
    cost = quadratic_cost(sigmoid_linear(x, w, b), y)
    grads = torch.autograd.grad(cost, (x, w, b, y))
    ref_cost = autograd_quadratic_cost(autograd_output((w, b), x), y)
    ref_grads = torch.autograd.grad(ref_cost, (x, w, b, y))
    torch.testing.assert_close(cost, ref_cost, **tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **tol)


def test_layer_accepts_leading_batch_dims_like_nn_linear():
    x, w, b = leaves((2, 3, 5), (4, 5), (4,))
    a = sigmoid_linear(x, w, b)
    assert a.shape == (2, 3, 4)
    g = torch.autograd.grad(a.sum(), (x, w, b))
    ref = torch.autograd.grad(autograd_output((w, b), x).sum(), (x, w, b))
    for got, want in zip(g, ref):
        torch.testing.assert_close(got, want, **F64)
    single = sigmoid_linear(x[0, 0], w, b)  # one example of shape (in,)
    torch.testing.assert_close(single, autograd_output((w, b), x[0, 0]), **F64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cost_reductions_are_the_books_per_example_costs(reduction):
    a, y = leaves((5, 3), (5, 3))
    per_example = torch.stack([0.5 * sum((y[i, j] - a[i, j]) ** 2 for j in range(3)) for i in range(5)])
    want = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}[reduction]
    torch.testing.assert_close(quadratic_cost(a, y, reduction), want, **F64)


def test_cost_is_not_mse_loss_but_half_its_sum_over_outputs():
    a, y = leaves((5, 10), (5, 10))
    torch.testing.assert_close(quadratic_cost(a, y), TF.mse_loss(a, y) * 10 / 2, **F64)


def test_integer_labels_equal_one_hot_targets():
    (a,) = leaves((4, 10))
    labels = torch.tensor([3, 0, 9, 3])
    one_hot = TF.one_hot(labels, 10).to(torch.float64)
    cost_labels = quadratic_cost(a, labels)
    (g_labels,) = torch.autograd.grad(cost_labels, a)
    cost_one_hot = quadratic_cost(a, one_hot)
    (g_one_hot,) = torch.autograd.grad(cost_one_hot, a)
    assert torch.equal(cost_labels, cost_one_hot) and torch.equal(g_labels, g_one_hot)


def test_no_input_gradient_is_computed_when_input_does_not_need_one():
    x = torch.randn(64, 784)
    w = torch.randn(30, 784, requires_grad=True)
    b = torch.randn(30, requires_grad=True)

    def backward_flops(x):
        a = sigmoid_linear(x, w, b)
        with FlopCounterMode(display=False) as counter:
            a.backward(torch.ones_like(a))
        return counter.get_total_flops()

    without_x = backward_flops(x)
    with_x = backward_flops(x.clone().requires_grad_())
    matmul = 2 * 64 * 784 * 30  # one (64 × 30) by (30 × 784) product
    assert without_x == matmul and with_x == 2 * matmul


def test_per_example_gradients_by_vmap_grad_equal_a_python_loop():
    w, b = leaves((3, 5), (3,))
    x = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])

    def cost(w, b, x, label):
        return quadratic_cost(sigmoid_linear(x, w, b), label)

    per_example = vmap(grad(cost, argnums=(0, 1)), in_dims=(None, None, 0, 0))(w, b, x, labels)
    for i in range(6):
        a = autograd_output((w, b), x[i : i + 1])
        y = TF.one_hot(labels[i : i + 1], 3).to(x.dtype)
        want = torch.autograd.grad(autograd_quadratic_cost(a, y), (w, b))
        torch.testing.assert_close(per_example[0][i], want[0], **F64)
        torch.testing.assert_close(per_example[1][i], want[1], **F64)


def test_forward_mode_jvp_equals_autograd_reference():
    x, w, b, y = leaves((4, 5), (3, 5), (3,), (4, 3))
    tangents = leaves((4, 5), (3, 5), (3,), (4, 3), seed=1)

    def ours(x, w, b, y):
        return quadratic_cost(sigmoid_linear(x, w, b), y)

    def ref(x, w, b, y):
        return autograd_quadratic_cost(autograd_output((w, b), x), y)

    primals = tuple(t.detach() for t in (x, w, b, y))
    tangents = tuple(t.detach() for t in tangents)
    got = jvp(ours, primals, tangents)
    want = jvp(ref, primals, tangents)
    torch.testing.assert_close(got, want, **F64)


def test_torch_compile_fullgraph_equals_eager():
    torch._dynamo.reset()
    x = torch.randn(10, 784)
    w1, b1, w2, b2 = leaves((30, 784), (30,), (10, 30), (10,), dtype=torch.float32)
    labels = torch.randint(0, 10, (10,))

    def cost(x, labels):
        return quadratic_cost(sigmoid_linear(sigmoid_linear(x, w1, b1), w2, b2), labels)

    # fullgraph: the Functions' forward and backward are traced whole, with no graph break.
    compiled_cost = torch.compile(cost, fullgraph=True)(x, labels)
    compiled_grads = torch.autograd.grad(compiled_cost, (w1, b1, w2, b2))  # runs the compiled backward
    eager_cost = cost(x, labels)
    eager_grads = torch.autograd.grad(eager_cost, (w1, b1, w2, b2))
    torch.testing.assert_close(compiled_cost, eager_cost, **F32)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, **F32)


def test_autocast_bf16_on_cpu_gives_bf16_activations_fp32_cost_and_fp32_gradients():
    x = torch.rand(32, 784)
    w, b = leaves((30, 784), (30,), dtype=torch.float32)
    labels = torch.randint(0, 30, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = sigmoid_linear(x, w, b)
        cost = quadratic_cost(a, labels)
    gw, gb = torch.autograd.grad(cost, (w, b))
    assert a.dtype == torch.bfloat16 and cost.dtype == torch.float32
    assert gw.dtype == torch.float32 and gb.dtype == torch.float32
    assert torch.isfinite(cost) and torch.isfinite(gw).all() and torch.isfinite(gb).all()
    # bf16 keeps 8 bits of mantissa (eps 2^-8 ≈ 0.004): within a few percent of the fp32 result.
    ref_cost = autograd_quadratic_cost(autograd_output((w, b), x), TF.one_hot(labels, 30).float())
    ref_gw, ref_gb = torch.autograd.grad(ref_cost, (w, b))
    torch.testing.assert_close(cost, ref_cost, rtol=2e-2, atol=0)
    torch.testing.assert_close(gb, ref_gb, rtol=5e-2, atol=5e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda_gives_low_precision_activations_and_fp32_gradients(dtype):
    x = torch.rand(32, 784, device="cuda")
    w = torch.randn(30, 784, device="cuda", requires_grad=True)
    b = torch.randn(30, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        a = sigmoid_linear(x, w, b)
        cost = quadratic_cost(a, torch.randint(0, 30, (32,), device="cuda"))
    gw, gb = torch.autograd.grad(cost, (w, b))
    assert a.dtype == dtype and cost.dtype == torch.float32 and gw.dtype == torch.float32
    assert torch.isfinite(gw).all() and torch.isfinite(gb).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_layer_and_cost_match_autograd_on_cuda():
    x, w, b, y = (t.detach().cuda().requires_grad_() for t in leaves((10, 784), (30, 784), (30,), (10, 30)))
    grads = torch.autograd.grad(quadratic_cost(sigmoid_linear(x, w, b), y), (x, w, b))
    ref = torch.autograd.grad(autograd_quadratic_cost(autograd_output((w, b), x), y), (x, w, b))
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_huge_weighted_inputs_give_finite_values_and_no_warnings(scale):
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[scale, 0.0], [0.0, -scale], [scale, scale]], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = sigmoid_linear(x, w, b)  # |z| = scale: σ saturates to exactly 0 or 1
        cost = quadratic_cost(a, torch.tensor([1, 0]))
        grads = torch.autograd.grad(cost, (x, w, b))
    assert torch.isfinite(a).all() and torch.isfinite(cost)
    assert all(torch.isfinite(g).all() for g in grads)
    ref = torch.autograd.grad(
        autograd_quadratic_cost(autograd_output((w, b), x), TF.one_hot(torch.tensor([1, 0]), 3).double()), (x, w, b)
    )
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, **F64)
