"""Each activation's f(z) equals torch's own function and its f'(z) equals autograd's derivative, in float64."""

import pytest
import torch

from torch_manualbp.activations import ACTIVATIONS, Activation, get_activation

TORCH_FUNCTIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda z: z}


def _z():
    generator = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(1000, generator=generator, dtype=torch.float64)
    z[:3] = torch.tensor([0.0, 30.0, -30.0], dtype=torch.float64)  # the kink and both saturations
    return z


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "linear"])
def test_value_equals_torch_function_float64(name):
    z = _z()
    torch.testing.assert_close(get_activation(name)(z), TORCH_FUNCTIONS[name](z), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "linear"])
def test_derivative_equals_autograd_float64(name):
    z = _z().requires_grad_()
    (expected,) = torch.autograd.grad(TORCH_FUNCTIONS[name](z).sum(), z)
    f = get_activation(name)
    z = z.detach()
    a = f(z)
    # one product or a comparison from a = f(z) against autograd's formula: a few ulps of values at most 1
    torch.testing.assert_close(f.derivative(z, a), expected, rtol=0, atol=4 * torch.finfo(torch.float64).eps)


def test_every_activation_is_found_by_its_name():
    assert {"sigmoid", "tanh", "relu", "linear"} <= set(ACTIVATIONS)
    for name, activation in ACTIVATIONS.items():
        assert isinstance(activation, Activation) and activation.name == name
        assert get_activation(activation) is activation
        assert activation.prime_from in ("z", "a")


def test_unknown_name_is_a_value_error_naming_the_argument():
    with pytest.raises(ValueError, match=r"^activation must be one of .*'softplus'"):
        get_activation("softplus")


def test_wrong_type_is_a_type_error_naming_the_argument():
    with pytest.raises(TypeError, match=r"^activation must be the name .* got int"):
        get_activation(3)
