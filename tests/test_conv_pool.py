"""conv_pool and ConvPool2d, chapter 6's conv-pool layer: outputs and every gradient equal plain autograd
(F.conv2d + F.max_pool2d + the activation) in float64, the backward's equations equal loops written from the
derivation, gradcheck and gradgradcheck pass, and bad arguments are one-line errors naming the argument.

Inputs and weights are drawn from a normal distribution in float64, so a tie inside a pool (where the max-pool's
gradient is not defined and two implementations may pick different winners) has probability 0, and so has a ReLU's
z = 0."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from torch_manualbp.activations import ACTIVATIONS
from torch_manualbp.conv import ConvPoolFunction
from torch_manualbp.functional import conv_pool
from torch_manualbp.nn import ConvPool2d, FullyConnected, LogLikelihoodCost

ACTIVATION_OPS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda z: z}
# (N, C_in, H, W, C_out, k, pool): C_in 1 and 3, k 3 and 5, pool 1, 2, 3, odd H/W that the pool floors, N = 1
SHAPES = [
    (4, 1, 8, 8, 3, 3, 2),
    (2, 3, 9, 11, 4, 3, 2),  # conv output 7 x 9: the last row and column are dropped by the pool
    (1, 3, 12, 10, 2, 5, 3),  # N = 1; conv output 8 x 6 floors to 2 x 2
    (3, 1, 7, 6, 2, 5, 1),  # pool 1: no pooling
    (2, 2, 13, 13, 5, 3, 3),  # conv output 11 x 11 floors to 3 x 3
]


def _layer(n, c_in, h, w, c_out, k, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x, weight, bias = (
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((n, c_in, h, w), (c_out, c_in, k, k), (c_out,))
    )
    return x, weight, bias


def _plain(x, weight, bias, pool_size, name):
    z = F.max_pool2d(F.conv2d(x, weight), pool_size)
    if bias is not None:
        z = z + bias[:, None, None]
    return ACTIVATION_OPS[name](z)


def test_the_activation_table_is_the_package_s():
    assert set(ACTIVATION_OPS) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}_Cin{}_{}x{}_Cout{}_k{}_p{}".format(*s))
def test_output_and_gradients_match_autograd_float64(shape, name):
    *layer, pool_size = shape
    x, weight, bias = _layer(*layer)
    ours = conv_pool(x, weight, bias, pool_size, name)
    theirs = _plain(x, weight, bias, pool_size, name)
    grad_a = torch.randn(theirs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    ours_grads = torch.autograd.grad(ours, (x, weight, bias), grad_a)
    theirs_grads = torch.autograd.grad(theirs, (x, weight, bias), grad_a)
    for mine, expected in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_without_bias_matches_autograd_float64(name):
    x, weight, _ = _layer(2, 3, 9, 9, 2, 3)
    ours, theirs = conv_pool(x, weight, None, 2, name), _plain(x, weight, None, 2, name)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), (x, weight)),
        torch.autograd.grad(theirs.sum(), (x, weight)),
        rtol=0,
        atol=1e-10,
    )


def test_only_the_gradients_asked_for_are_computed():
    x, weight, bias = _layer(2, 1, 8, 8, 3, 3)
    (grad_weight,) = torch.autograd.grad(conv_pool(x.detach(), weight, bias).sum(), (weight,))
    expected = torch.autograd.grad(_plain(x.detach(), weight, bias, 2, "sigmoid").sum(), (weight,))[0]
    torch.testing.assert_close(grad_weight, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_gradcheck_and_gradgradcheck_float64(name):
    x, weight, bias = _layer(2, 2, 7, 6, 2, 3)
    fn = lambda *t: conv_pool(*t, pool_size=2, activation=name)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, weight, bias))
    assert torch.autograd.gradgradcheck(fn, (x, weight, bias))


def test_gradgradcheck_without_bias_and_pool_one_float64():
    x, weight, _ = _layer(1, 2, 6, 5, 2, 3)
    fn = lambda *t: conv_pool(*t, pool_size=1, activation="tanh")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, weight))
    assert torch.autograd.gradgradcheck(fn, (x, weight))


# The derivation, piece by piece, against loops over positions written from docs/chapter6.md's equations.


def _tiny():
    x, weight, bias = _layer(2, 2, 7, 6, 3, 3, seed=3)  # conv output 5 x 4, pooled 2 x 2 (one row dropped)
    grad_a = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return x, weight, bias, grad_a


def _loop_conv_level_delta(x, weight, bias, grad_a, pool_size=2):
    """δ̂ by loops: the correlation c, each pool's winner, δ = ∂C/∂a ⊙ σ'(z) put at the winner, 0 elsewhere."""
    xs, ws, bs, gs = x.tolist(), weight.tolist(), bias.tolist(), grad_a.tolist()
    n, c_in, h, w = x.shape
    c_out, _, k, _ = weight.shape
    hc, wc = h - k + 1, w - k + 1
    conv = [
        [
            [
                [
                    sum(
                        ws[o][c][l][m] * xs[i][c][j + l][q + m] for c in range(c_in) for l in range(k) for m in range(k)
                    )
                    for q in range(wc)
                ]
                for j in range(hc)
            ]
            for o in range(c_out)
        ]
        for i in range(n)
    ]
    delta_conv = [[[[0.0] * wc for _ in range(hc)] for _ in range(c_out)] for _ in range(n)]
    for i, o, big_j, big_k in itertools.product(range(n), range(c_out), range(hc // pool_size), range(wc // pool_size)):
        block = [(big_j * pool_size + dj, big_k * pool_size + dk) for dj in range(pool_size) for dk in range(pool_size)]
        j, q = max(block, key=lambda pos: conv[i][o][pos[0]][pos[1]])
        a = 1 / (1 + math.exp(-(conv[i][o][j][q] + bs[o])))  # σ(z), z = c + b
        delta_conv[i][o][j][q] = gs[i][o][big_j][big_k] * a * (1 - a)
    return delta_conv


def test_bp2_is_the_full_correlation_of_delta_with_the_flipped_filters_by_loops():
    x, weight, bias, grad_a = _tiny()
    (grad_x,) = torch.autograd.grad(conv_pool(x, weight, bias), (x,), grad_a)
    delta_conv, ws = _loop_conv_level_delta(x, weight, bias, grad_a), weight.tolist()
    n, c_in, h, w = x.shape
    c_out, _, k, _ = weight.shape
    hc, wc = h - k + 1, w - k + 1
    expected = torch.zeros_like(x)
    for i, c, p, q in itertools.product(range(n), range(c_in), range(h), range(w)):
        # ∂C/∂x_{c,p,q} = Σ_{o,l,m} δ̂_{o,p-l,q-m} w_{o,c,l,m}, over the (p - l, q - m) inside the conv output
        expected[i, c, p, q] = sum(
            delta_conv[i][o][p - l][q - m] * ws[o][c][l][m]
            for o in range(c_out)
            for l in range(k)
            for m in range(k)
            if 0 <= p - l < hc and 0 <= q - m < wc
        )
    torch.testing.assert_close(grad_x, expected, rtol=0, atol=1e-12)


def test_bp4_is_the_correlation_of_the_input_with_delta_by_loops():
    x, weight, bias, grad_a = _tiny()
    (grad_weight,) = torch.autograd.grad(conv_pool(x, weight, bias), (weight,), grad_a)
    delta_conv, xs = _loop_conv_level_delta(x, weight, bias, grad_a), x.tolist()
    n, c_in, h, w = x.shape
    c_out, _, k, _ = weight.shape
    hc, wc = h - k + 1, w - k + 1
    expected = torch.zeros_like(weight)
    for o, c, l, m in itertools.product(range(c_out), range(c_in), range(k), range(k)):
        # ∂C/∂w_{o,c,l,m} = Σ_{n,j,k} δ̂_{n,o,j,k} x_{n,c,j+l,k+m}
        expected[o, c, l, m] = sum(
            delta_conv[i][o][j][q] * xs[i][c][j + l][q + m] for i in range(n) for j in range(hc) for q in range(wc)
        )
    torch.testing.assert_close(grad_weight, expected, rtol=0, atol=1e-12)


def test_bp3_is_delta_summed_over_the_batch_and_the_positions():
    x, weight, bias, grad_a = _tiny()
    (grad_bias,) = torch.autograd.grad(conv_pool(x, weight, bias), (bias,), grad_a)
    delta_conv = _loop_conv_level_delta(x, weight, bias, grad_a)
    expected = [sum(sum(row) for i in range(len(delta_conv)) for row in delta_conv[i][o]) for o in range(3)]
    torch.testing.assert_close(grad_bias, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_the_pool_sends_delta_to_each_pool_s_winner_only():
    x, weight, bias, grad_a = _tiny()
    a, z, winners = ConvPoolFunction.apply(x, weight, bias, 2, ACTIVATIONS["sigmoid"])
    (grad_x,) = torch.autograd.grad(a, (x,), grad_a)
    # one δ per pool: the conv outputs that won nothing (and the dropped last row) pass no error down, so an input
    # pixel that only they see gets exactly zero gradient
    delta_conv = torch.tensor(_loop_conv_level_delta(x, weight, bias, grad_a), dtype=torch.float64)
    assert (delta_conv != 0).sum(dim=(2, 3)).eq(4).all()  # 2 x 2 pools, one winner each
    assert delta_conv[:, :, 4, :].eq(0).all()  # the conv output's row 4 fills no pool
    assert grad_x[:, :, 6, :].eq(0).all()  # input row 6 is seen only by conv row 4
    assert winners.dtype == torch.int64 and not winners.requires_grad


# Batching, compiling, and the layer in a network.


def test_vmap_over_a_batch_of_inputs_matches_the_loop():
    x, weight, bias = (t.detach() for t in _layer(2, 3, 9, 8, 4, 3))
    xs = torch.randn(5, *x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batched = torch.func.vmap(lambda x: conv_pool(x, weight, bias, activation="tanh"))(xs)
    looped = torch.stack([_plain(x, weight, bias, 2, "tanh") for x in xs])
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-10)
    cost = lambda weight, x: conv_pool(x, weight, bias, activation="tanh").square().sum()  # noqa: E731
    per_batch = torch.func.vmap(torch.func.grad(cost), in_dims=(None, 0))(weight, xs)
    w = weight.clone().requires_grad_()
    expected = torch.stack([torch.autograd.grad(_plain(x, w, bias, 2, "tanh").square().sum(), w)[0] for x in xs])
    torch.testing.assert_close(per_batch, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["sigmoid", "linear"])  # linear: the activation that hands back z itself
def test_compiles_with_fullgraph_and_matches_eager(name):
    x, weight, bias = _layer(2, 1, 10, 10, 3, 3)
    x = x.detach()

    def cost(x, weight, bias):
        return conv_pool(x, weight, bias, activation=name).square().sum()

    torch._dynamo.reset()  # a fresh trace for each activation
    compiled = torch.compile(cost, fullgraph=True)(x, weight, bias)  # about 5 s on this repository's 2-core machine
    compiled_grads = torch.autograd.grad(compiled, (weight, bias))
    eager = cost(x, weight, bias)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-10)
    for mine, expected in zip(compiled_grads, torch.autograd.grad(eager, (weight, bias)), strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-10)


def test_one_sgd_step_of_chapter_6_s_network_equals_the_plain_autograd_step():
    torch.manual_seed(0)
    ours = torch.nn.Sequential(
        ConvPool2d(1, 4, 5, pool_size=2, dtype=torch.float64),
        torch.nn.Flatten(),
        FullyConnected(4 * 6 * 6, 16, dtype=torch.float64),
        FullyConnected(16, 10, activation="linear", dtype=torch.float64),
    )
    conv, _, hidden, output = ours
    plain = [p.detach().clone().requires_grad_() for p in ours.parameters()]
    x, y = torch.rand(6, 1, 16, 16, dtype=torch.float64), torch.randint(0, 10, (6,))

    def plain_cost(w1, b1, w2, b2, w3, b3):
        a1 = torch.sigmoid(F.max_pool2d(F.conv2d(x, w1), 2) + b1[:, None, None]).flatten(1)
        return F.cross_entropy(torch.sigmoid(a1 @ w2.T + b2) @ w3.T + b3, y)

    eta = 0.5
    ours_cost = LogLikelihoodCost()(ours(x), y)
    ours_cost.backward()
    torch.optim.SGD(ours.parameters(), lr=eta).step()
    theirs_cost = plain_cost(*plain)
    theirs_cost.backward()
    torch.optim.SGD(plain, lr=eta).step()
    torch.testing.assert_close(ours_cost, theirs_cost, rtol=0, atol=1e-10)
    for mine, expected in zip(ours.parameters(), plain, strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-10)
    assert conv.weight.shape == (4, 1, 5, 5) and hidden.in_features == 144 and output.out_features == 10


def test_module_init_is_network3_s_normal_with_std_sqrt_one_over_n_out():
    torch.manual_seed(0)
    layer = ConvPool2d(3, 40, 5, pool_size=2, dtype=torch.float64)
    n_out = 40 * 5 * 5 / 2**2  # network3.py: filter_shape[0] * prod(filter_shape[2:]) / prod(poolsize)
    n = layer.weight.numel()
    # the sample std of n normal draws has a standard error of about std / sqrt(2 n); allow 6 of them
    assert abs(layer.weight.std().item() * n_out**0.5 - 1.0) < 6 / (2 * n) ** 0.5
    assert abs(layer.bias.std().item() - 1.0) < 6 / (2 * 40) ** 0.5
    assert layer.weight.shape == (40, 3, 5, 5) and layer.bias.shape == (40,)


def test_module_repr_and_no_bias():
    layer = ConvPool2d(1, 20, 5, activation="relu", bias=False)
    assert repr(layer) == "ConvPool2d(1, 20, kernel_size=5, pool_size=2, activation='relu', bias=False)"
    assert layer.bias is None and layer(torch.rand(2, 1, 28, 28)).shape == (2, 20, 12, 12)


def test_module_bad_sizes_and_activation_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^kernel_size must be a positive number of pixels, got 0$"):
        ConvPool2d(1, 2, 0)
    with pytest.raises(TypeError, match=r"^pool_size must be an int, got float$"):
        ConvPool2d(1, 2, 3, pool_size=2.0)
    with pytest.raises(ValueError, match=r"^out_channels must be a positive number of feature maps"):
        ConvPool2d(1, 0, 3)
    with pytest.raises(ValueError, match=r"^activation must be one of"):
        ConvPool2d(1, 2, 3, activation="swish")
    with pytest.raises(TypeError, match=r"^dtype must be a floating-point dtype"):
        ConvPool2d(1, 2, 3, dtype=torch.int64)


# Bad arguments: one line each, naming the argument.


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(x=[[1.0]]), TypeError, r"^x must be a torch.Tensor, got list$"),
        (dict(x=torch.ones(2, 1, 8, 8, dtype=torch.int64)), TypeError, r"^x must be a floating-point tensor"),
        (dict(x=torch.ones(1, 8, 8)), ValueError, r"^x must have shape \(N, in_channels, H, W\) with in_channels=1"),
        (dict(x=torch.ones(2, 3, 8, 8)), ValueError, r"^x must have shape \(N, in_channels, H, W\) with in_channels=1"),
        (dict(x=torch.ones(2, 1, 2, 8)), ValueError, r"^x's height and width must be at least the kernel size 3"),
        (dict(x=torch.ones(2, 1, 8, 8, dtype=torch.float64)), TypeError, r"^x must have the dtype of weight"),
        (dict(weight=torch.ones(3, 1, 3)), ValueError, r"^weight must be 4-D \(out_channels, in_channels, k, k\)"),
        (dict(weight=torch.ones(3, 1, 3, 2)), ValueError, r"^weight must be 4-D .*a square kernel"),
        (dict(bias=torch.ones(2)), ValueError, r"^bias must have shape \(3,\) to match weight, got \(2,\)$"),
        (dict(bias=torch.ones(3, dtype=torch.float64)), TypeError, r"^bias must have the dtype of weight"),
        (dict(pool_size=2.0), TypeError, r"^pool_size must be an int, got float$"),
        (dict(pool_size=True), TypeError, r"^pool_size must be an int, got bool$"),
        (dict(pool_size=0), ValueError, r"^pool_size must be between 1 and the convolution's output size \(6, 6\)"),
        (dict(pool_size=7), ValueError, r"^pool_size must be between 1 and the convolution's output size"),
        (dict(activation="softsign"), ValueError, r"^activation must be one of"),
        (dict(activation=torch.sigmoid), TypeError, r"^activation must be the name of an activation"),
    ],
)
def test_bad_arguments_are_one_line_errors_naming_the_argument(change, error, message):
    arguments = dict(x=torch.ones(2, 1, 8, 8), weight=torch.ones(3, 1, 3, 3), bias=torch.ones(3), pool_size=2)
    arguments.update(change)
    with pytest.raises(error, match=message) as raised:
        conv_pool(**arguments)
    assert "\n" not in str(raised.value)


def test_conv_pool_is_exported_by_the_functional_module():
    import torch_manualbp.conv
    import torch_manualbp.functional

    assert torch_manualbp.functional.conv_pool is torch_manualbp.conv.conv_pool
    assert {"conv_pool", "ConvPoolFunction"} <= set(torch_manualbp.functional.__all__)
