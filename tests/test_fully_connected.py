"""functional.fully_connected: outputs and every gradient equal plain autograd (x @ W.T + b, then the activation) in
float64, gradcheck and gradgradcheck pass for each activation, and bad arguments are one-line errors."""

import pytest
import torch

from torch_manualbp.functional import fully_connected

ACTIVATION_OPS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda z: z}
NAMES = list(ACTIVATION_OPS)


def _layer(n=5, n_in=7, n_out=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x, weight, bias = (
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((n, n_in), (n_out, n_in), (n_out,))
    )
    return x, weight, bias


@pytest.mark.parametrize("name", NAMES)
def test_output_and_gradients_match_autograd_float64(name):
    x, weight, bias = _layer()
    grad_a = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = fully_connected(x, weight, bias, activation=name)
    ours_grads = torch.autograd.grad(ours, (x, weight, bias), grad_a)
    theirs = ACTIVATION_OPS[name](x @ weight.T + bias)
    theirs_grads = torch.autograd.grad(theirs, (x, weight, bias), grad_a)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    for mine, expected in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_and_gradgradcheck_float64(name):
    x, weight, bias = _layer(n=3, n_in=4, n_out=2)
    assert torch.autograd.gradcheck(lambda *t: fully_connected(*t, activation=name), (x, weight, bias))
    assert torch.autograd.gradgradcheck(lambda *t: fully_connected(*t, activation=name), (x, weight, bias))


def test_without_bias_and_with_leading_dimensions_matches_autograd():
    x, weight, _ = _layer()
    x3 = x.detach().reshape(1, 5, 7).requires_grad_()
    ours = fully_connected(x3, weight, activation="tanh")
    theirs = torch.tanh(x3 @ weight.T)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), (x3, weight)),
        torch.autograd.grad(theirs.sum(), (x3, weight)),
        rtol=0,
        atol=1e-10,
    )


def test_vmap_over_examples_matches_the_batch():
    x, weight, bias = (t.detach() for t in _layer())
    per_example = torch.func.vmap(lambda row: fully_connected(row, weight, bias, activation="relu"))(x)
    torch.testing.assert_close(per_example, torch.relu(x @ weight.T + bias), rtol=0, atol=1e-10)


def test_unknown_activation_is_a_value_error_naming_the_argument():
    x, weight, bias = _layer()
    with pytest.raises(ValueError, match=r"^activation must be one of"):
        fully_connected(x, weight, bias, activation="softsign")


def test_mismatched_weight_is_a_value_error_naming_x():
    x, weight, bias = _layer()
    with pytest.raises(ValueError, match=r"^x must have shape \(\*, in_features\)"):
        fully_connected(x[:, :3], weight, bias)


def test_wrong_bias_shape_is_a_value_error_naming_bias():
    x, weight, bias = _layer()
    with pytest.raises(ValueError, match=r"^bias must have shape \(4,\)"):
        fully_connected(x, weight, bias[:2])


def test_module_in_sequential_matches_autograd_float64():
    from torch_manualbp.nn import FullyConnected

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        FullyConnected(7, 5, activation="relu", dtype=torch.float64),
        FullyConnected(5, 3, activation="tanh", dtype=torch.float64),
    )
    x = torch.randn(4, 7, dtype=torch.float64)
    (first, second) = model
    ours = model(x)
    theirs = torch.tanh(torch.relu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    params = list(model.parameters())
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), params), torch.autograd.grad(theirs.sum(), params), rtol=0, atol=1e-10
    )


def test_module_unknown_activation_and_bad_size_are_one_line_errors():
    from torch_manualbp.nn import FullyConnected

    with pytest.raises(ValueError, match=r"^activation must be one of"):
        FullyConnected(3, 2, activation="swish")
    with pytest.raises((ValueError, TypeError), match=r"^out_features"):
        FullyConnected(3, 0)


def test_module_init_is_normal_with_std_one_over_sqrt_in_features():
    from torch_manualbp.nn import FullyConnected

    torch.manual_seed(0)
    layer = FullyConnected(1000, 400, dtype=torch.float64)
    # The sample std of n normal draws has a standard error of about std / sqrt(2 n); allow 6 of them.
    n = layer.weight.numel()
    assert abs(layer.weight.std().item() * 1000**0.5 - 1.0) < 6 / (2 * n) ** 0.5
    assert abs(layer.bias.std().item() - 1.0) < 6 / (2 * 400) ** 0.5
    assert abs(layer.weight.mean().item()) < 6 / 1000**0.5 / n**0.5
