r"""Property-based tests (hypothesis): the hand-written Functions against plain autograd, over random shapes,
dtypes and magnitudes.

Every case draws the leading batch dimensions (none, one or two; sizes 0 to 3, so single examples, batch 1 and
empty batches all occur), the layer's widths, float32 or float64, bias or none, and values whose scale ranges from
1 to 10^6, so that the weighted inputs z run from order 1 to |z| ~ 10^13, where every sigmoid saturates.
Outputs and gradients must be finite and equal autograd's to within a bound on the rounding error.

The tolerance (see :func:`rounding_bound`) is the classical forward-error bound for sums of products
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5): a computed sum of k products
differs from the exact one by at most :math:`\gamma_k \sum |a_i b_i|` with :math:`\gamma_k = k u / (1 - k u)`
and u the unit roundoff (2^-24 for float32, 2^-53 for float64). Ours and autograd's computations are two such
computations of the same quantity, so they differ by at most twice the bound, plus the few roundings in which
the elementwise factors differ (autograd computes :math:`g (1 - a) a`, the Function :math:`g \cdot a (1 - a)`).
The bound is per element and scales with :math:`\sum |a_i b_i|`, so it stays tight where values are small and
does not fail where cancellation makes a result tiny. A wrong term in any of BP1-BP4 makes errors of the order
of the values themselves, far beyond it.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_manualbp.functional import quadratic_cost, sigmoid_linear

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from([torch.float32, torch.float64])
leading = st.lists(st.integers(0, 3), min_size=0, max_size=2).map(tuple)  # (), (n,), (m, n); 0 and 1 included
widths = st.integers(1, 8)
scales = st.sampled_from([1.0, 10.0, 1e3, 1e6])  # 1e6 * 1e6 * 8 inputs: |z| up to ~1e13, finite in float32
seeds = st.integers(0, 2**31 - 1)


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def gamma(k: int, dtype: torch.dtype) -> float:
    r""":math:`\gamma_k = k u / (1 - k u)`, the relative error bound of a sum of k products."""
    u = unit_roundoff(dtype)
    return k * u / (1 - k * u)


def rounding_bound(scale: torch.Tensor, k: int, dtype: torch.dtype, extra: torch.Tensor | float = 0.0) -> torch.Tensor:
    r"""Largest difference allowed between two computations of sums of ``k`` products whose absolute values sum to
    ``scale``: :math:`2 \gamma_{k+4}` times ``scale`` (the +4 covers the elementwise factors computed in a different
    order), plus ``extra`` (differences propagated from the inputs of the sums), plus the smallest normal number
    (a result that underflows)."""
    return 2 * gamma(k + 4, dtype) * scale + extra + torch.finfo(dtype).tiny


def assert_within(ours: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, what
    assert torch.isfinite(ours).all(), f"{what} is not finite"
    excess = (ours - ref).abs() - bound
    assert (excess <= 0).all(), (
        f"{what}: differs from autograd by more than the rounding bound ({excess.max().item():.3g} over)"
    )


def draw(generator: torch.Generator, shape, dtype, scale: float, requires_grad: bool = True) -> torch.Tensor:
    t = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    return t.requires_grad_(requires_grad)


@SETTINGS
@given(
    dtype=dtypes,
    batch=leading,
    n_in=widths,
    n_out=widths,
    has_bias=st.booleans(),
    x_scale=scales,
    w_scale=scales,
    seed=seeds,
)
def test_sigmoid_linear_equals_autograd_for_any_shape_dtype_and_magnitude(
    dtype, batch, n_in, n_out, has_bias, x_scale, w_scale, seed
):
    g = torch.Generator().manual_seed(seed)
    x = draw(g, (*batch, n_in), dtype, x_scale)
    w = draw(g, (n_out, n_in), dtype, w_scale)
    b = draw(g, (n_out,), dtype, w_scale) if has_bias else None
    upstream = draw(g, (*batch, n_out), dtype, 1.0, requires_grad=False)
    inputs = [t for t in (x, w, b) if t is not None]

    a = sigmoid_linear(x, w, b)
    ours = torch.autograd.grad(a, inputs, upstream, allow_unused=True)
    a_ref = torch.sigmoid(torch.nn.functional.linear(x, w, b))
    ref = torch.autograd.grad(a_ref, inputs, upstream, allow_unused=True)

    # z = x Wᵀ + b: a sum of n_in + 1 products; σ is ¼-Lipschitz and rounds once more.
    z_scale = x.detach().abs() @ w.detach().abs().T + (b.detach().abs() if has_bias else 0)
    a_bound = 0.25 * rounding_bound(z_scale, n_in + 1, dtype) + 2 * unit_roundoff(dtype)
    assert_within(a.detach(), a_ref.detach(), a_bound, "a")

    # δ = g ⊙ a(1 − a): |∂δ/∂a| = |g (1 − 2a)| <= |g|, so a's difference reaches δ times |g|.
    a_ref_ = a_ref.detach()
    delta = (upstream * a_ref_ * (1 - a_ref_)).reshape(-1, n_out).abs()
    delta_diff = (upstream.abs() * a_bound).reshape(-1, n_out)
    x2 = x.detach().reshape(-1, n_in).abs()
    n = x2.shape[0]
    grad_x_bound = rounding_bound(delta @ w.detach().abs(), n_out, dtype, delta_diff @ w.detach().abs())
    assert_within(ours[0], ref[0], grad_x_bound.reshape(x.shape), "grad x (BP2's δW)")
    grad_w_bound = rounding_bound(delta.T @ x2, n, dtype, delta_diff.T @ x2)
    assert_within(ours[1], ref[1], grad_w_bound, "grad weight (BP4)")
    if has_bias:
        assert_within(ours[2], ref[2], rounding_bound(delta.sum(0), n, dtype, delta_diff.sum(0)), "grad bias (BP3)")


@SETTINGS
@given(
    dtype=dtypes,
    batch=leading,
    classes=widths,
    labels=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    scale=scales,
    seed=seeds,
)
def test_quadratic_cost_equals_autograd_for_any_shape_dtype_and_magnitude(
    dtype, batch, classes, labels, reduction, scale, seed
):
    g = torch.Generator().manual_seed(seed)
    a = draw(g, (*batch, classes), dtype, scale)
    if labels:
        y = torch.randint(0, classes, batch, generator=g)
        y_float = torch.nn.functional.one_hot(y, classes).to(dtype)
    else:
        y = y_float = draw(g, (*batch, classes), dtype, scale)
    examples = math.prod(batch)
    if reduction == "mean" and examples == 0:
        with pytest.raises(ValueError, match="zero examples"):
            quadratic_cost(a, y, reduction)
        return
    inputs = [a] if labels else [a, y]

    cost = quadratic_cost(a, y, reduction)
    cost_x = 0.5 * ((a - y_float) ** 2).sum(-1)
    ref = cost_x.mean() if reduction == "mean" else cost_x.sum() if reduction == "sum" else cost_x
    upstream = draw(g, cost.shape, dtype, 1.0, requires_grad=False)
    ours = torch.autograd.grad(cost, inputs, upstream)
    theirs = torch.autograd.grad(ref, inputs, upstream)

    # C sums `classes` squares per example, then `examples` costs: a sum of classes + examples terms.
    terms = 0.5 * ((a.detach() - y_float.detach()) ** 2)
    total = terms.sum(-1) if reduction == "none" else terms.sum() / (examples if reduction == "mean" else 1)
    assert_within(cost.detach(), ref.detach(), rounding_bound(total, classes + max(examples, 1), dtype), "cost")
    # ∂C/∂a = (a − y) g / n: one subtraction and two products, in a different order than autograd's.
    for mine, reference, name in zip(ours, theirs, ["grad a", "grad y"]):
        assert_within(mine, reference, rounding_bound(reference.abs(), 0, dtype), name)


@SETTINGS
@given(
    dtype=dtypes,
    batch=st.integers(1, 4),
    n_in=widths,
    n_out=widths,
    seed=seeds,
    special=st.sampled_from([math.nan, math.inf, -math.inf]),
    where=st.sampled_from(["x", "weight", "bias"]),
)
def test_nan_and_inf_in_inputs_give_exactly_what_autograd_gives(dtype, batch, n_in, n_out, seed, special, where):
    """NaN/Inf are not checked for (that would cost a host sync per call); they propagate as in plain torch ops:
    the same NaN/Inf pattern as autograd, and finite values equal to rounding elsewhere."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "x": draw(g, (batch, n_in), dtype, 1.0),
        "weight": draw(g, (n_out, n_in), dtype, 1.0),
        "bias": draw(g, (n_out,), dtype, 1.0),
    }
    with torch.no_grad():
        tensors[where].view(-1)[0] = special
    x, w, b = tensors.values()
    a = sigmoid_linear(x, w, b)
    cost = quadratic_cost(a, torch.zeros(batch, dtype=torch.long))
    ours = torch.autograd.grad(cost, [x, w, b])
    a_ref = torch.sigmoid(torch.nn.functional.linear(x, w, b))
    y_ref = torch.nn.functional.one_hot(torch.zeros(batch, dtype=torch.long), n_out).to(dtype)
    cost_ref = 0.5 * ((a_ref - y_ref) ** 2).sum(-1).mean()
    theirs = torch.autograd.grad(cost_ref, [x, w, b])
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    for mine, reference in zip([a, cost, *ours], [a_ref, cost_ref, *theirs]):
        assert torch.equal(torch.isnan(mine), torch.isnan(reference))
        assert torch.equal(torch.isinf(mine), torch.isinf(reference))
        torch.testing.assert_close(mine, reference, equal_nan=True, **tol)


def test_huge_z_in_float32_saturates_without_nan_forward_or_backward():
    """|z| ~ 1e30: a is exactly 0 or 1, σ'(z) = a(1 − a) is exactly 0, and every gradient is finite (zero)."""
    x = torch.full((3, 4), 1e15, requires_grad=True)
    w = torch.tensor([[1e15] * 4, [-1e15] * 4], requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    a = sigmoid_linear(x, w, b)
    assert torch.equal(a, torch.tensor([[1.0, 0.0]] * 3))
    cost = quadratic_cost(a, torch.tensor([0, 1, 0]))
    grads = torch.autograd.grad(cost, [x, w, b])
    assert torch.isfinite(cost) and all(torch.isfinite(grad).all() for grad in grads)


@SETTINGS
@given(
    dtype=dtypes,
    batch=st.integers(1, 4),
    sizes=st.lists(widths, min_size=2, max_size=4),
    labels=st.booleans(),
    scale=st.sampled_from([1.0, 10.0, 1e3]),
    seed=seeds,
)
def test_network_cost_equals_the_per_layer_functions_for_any_shape_dtype_and_magnitude(
    dtype, batch, sizes, labels, scale, seed
):
    """``Network.cost`` (one Function, BP1-BP4 over all layers) against ``quadratic_cost(network(x), y)``, the
    per-layer Functions checked against autograd above. The bound is normwise, 2γ_k times the largest reference
    value, with k the longest chain of sums (the batch plus every width): the two run the same sums."""
    from torch_manualbp import Network

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Network(sizes, dtype=dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    x = draw(g, (batch, sizes[0]), dtype, scale)
    y = (
        torch.randint(0, sizes[-1], (batch,), generator=g)
        if labels
        else torch.rand(batch, sizes[-1], generator=g, dtype=torch.float64).to(dtype)
    )
    inputs = [x, *net.parameters()]
    cost = net.cost(x, y)
    ours = torch.autograd.grad(cost, inputs)
    ref = quadratic_cost(net(x), y)
    theirs = torch.autograd.grad(ref, inputs)
    k = batch + sum(sizes) + len(sizes)
    for mine, reference, name in zip([cost, *ours], [ref, *theirs], ["cost", "x", *dict(net.named_parameters())]):
        bound = rounding_bound(reference.detach().abs().max().expand_as(reference), k, dtype)
        assert_within(mine.detach(), reference.detach(), bound, f"Network.cost: {name}")
