"""torch_manualbp.sequential.sgd_step: one SGD step of an nn.Sequential of the package's layers without autograd,
against the same step through plain autograd (torch's own conv2d, max_pool2d, activations, linear and costs) and
torch.optim.SGD, in float64, with network3's dropout masks on layers' inputs too; and its one-line refusals."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_manualbp.activations import ACTIVATIONS
from torch_manualbp.nn import ConvPool2d, FullyConnected
from torch_manualbp.sequential import sgd_step

TOL = dict(rtol=1e-10, atol=1e-12)
TORCH_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda z: z}


def _plain_cost(z, labels, cost):
    """The mean cost of the output layer's weighted input z, by torch's own functions."""
    y = F.one_hot(labels, z.shape[1]).to(z.dtype)
    if cost == "log_likelihood":
        return F.cross_entropy(z, labels)
    if cost == "cross_entropy":
        return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(z)
    return 0.5 * ((torch.sigmoid(z) - y) ** 2).sum() / len(z)


def _plain_forward(layers, x, masks=None):
    """The same network as ``layers`` from torch's own ops, on the layers' parameters; ``masks[i]``, if given and not
    None, multiplies layer i's input (network3's dropout)."""
    a = x
    for i, layer in enumerate(layers):
        if masks is not None and masks[i] is not None:
            a = a * masks[i]
        if isinstance(layer, ConvPool2d):
            z = F.max_pool2d(F.conv2d(a, layer.weight), layer.pool_size) + layer.bias[:, None, None]
            a = TORCH_ACTIVATIONS[layer.activation.name](z)
        elif isinstance(layer, FullyConnected):
            a = TORCH_ACTIVATIONS[layer.activation.name](F.linear(a, layer.weight, layer.bias))
        else:
            a = layer(a)
    return a


def _chapter6_like(activation: str, pool: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        ConvPool2d(2, 3, 3, pool_size=pool, activation=activation, dtype=torch.float64),
        nn.Flatten(),
        FullyConnected(3 * (7 // pool) ** 2, 5, activation=activation, dtype=torch.float64),
        FullyConnected(5, 4, activation="linear", dtype=torch.float64),
    )


def _plain_step(layers, x, labels, eta, cost, lmbda=0.0, n=None, masks=None):
    """The step through autograd and torch.optim.SGD (L2 as weight_decay = λ/n on the weights alone); the cost."""
    weights = [layer.weight for layer in layers if hasattr(layer, "weight")]
    biases = [layer.bias for layer in layers if hasattr(layer, "bias")]
    decay = lmbda / n if lmbda else 0.0
    optimizer = torch.optim.SGD([{"params": weights, "weight_decay": decay}, {"params": biases}], lr=eta)
    optimizer.zero_grad()
    c = _plain_cost(_plain_forward(layers, x, masks), labels, cost)
    c.backward()
    optimizer.step()
    return c.detach()


@pytest.mark.parametrize("cost", ["log_likelihood", "cross_entropy", "quadratic"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_a_step_of_a_conv_pool_network_equals_autograd_and_sgd_float64(activation, cost):
    ours, theirs = _chapter6_like(activation), _chapter6_like(activation)
    x = torch.randn(6, 2, 9, 9, dtype=torch.float64)  # continuous: no ties in a pool
    labels = torch.randint(0, 4, (6,))
    want = _plain_step(theirs, x, labels, 0.3, cost, lmbda=2.0, n=60)
    got = sgd_step(ours, x, labels, 0.3, cost=cost, lmbda=2.0, n=60)
    torch.testing.assert_close(got, want, **TOL)
    for mine, plain in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, plain, **TOL)


@pytest.mark.parametrize("pool", [1, 3])
def test_other_pool_sizes_a_pool_that_floors_and_float_targets_equal_autograd(pool):
    ours, theirs = _chapter6_like("sigmoid", pool), _chapter6_like("sigmoid", pool)
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1])
    want = _plain_step(theirs, x, labels, 1.0, "log_likelihood")
    got = sgd_step(ours, x, F.one_hot(labels, 4).to(torch.float64), 1.0)  # float targets: the same one-hot rows
    torch.testing.assert_close(got, want, **TOL)
    for mine, plain in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, plain, **TOL)


def test_a_fully_connected_stack_steps_as_autograd_does_and_leaves_no_gradients():
    torch.manual_seed(1)
    make = lambda: nn.Sequential(  # noqa: E731
        FullyConnected(8, 6, activation="tanh", dtype=torch.float64),
        FullyConnected(6, 3, activation="linear", dtype=torch.float64),
    )
    ours = make()
    torch.manual_seed(1)
    theirs = make()
    x, labels = torch.randn(5, 8, dtype=torch.float64), torch.randint(0, 3, (5,))
    want = _plain_step(theirs, x, labels, 0.5, "log_likelihood")
    got = sgd_step(ours, x, labels, 0.5)
    torch.testing.assert_close(got, want, **TOL)
    for mine, plain in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, plain, **TOL)
        assert mine.grad is None  # no autograd ran
    assert not got.requires_grad


@pytest.mark.parametrize(
    "layers, x, kwargs, error, words",
    [
        (lambda: [ConvPool2d(1, 2, 3), nn.ReLU(), FullyConnected(2 * 9, 3, activation="linear")], (2, 1, 8, 8), {},
         TypeError, "layers[1] is a ReLU"),
        (lambda: [FullyConnected(4, 3)], (2, 4), {}, ValueError, "layers[-1] must be a FullyConnected with"),
        (lambda: [ConvPool2d(1, 2, 3), nn.Flatten(), FullyConnected(18, 3, activation="linear")], (2, 64), {},
         ValueError, "x must have shape (N, C_in, H, W)"),
        (lambda: [FullyConnected(4, 3, activation="linear")], (2, 4), {"cost": "hinge"}, ValueError, "cost must be"),
        (lambda: [FullyConnected(4, 3, activation="linear")], (2, 4), {"lmbda": 1.0}, TypeError, "n must be"),
        (lambda: [FullyConnected(4, 3, activation="linear")], (2, 4), {"eta": -1.0}, ValueError, "eta must be"),
        (lambda: [], (2, 4), {}, ValueError, "at least one layer"),
    ],
)  # fmt: skip
def test_bad_layers_and_settings_are_one_line_naming_the_argument(layers, x, kwargs, error, words):
    settings = {"eta": 0.1} | kwargs
    with pytest.raises(error) as raised:
        sgd_step(layers(), torch.rand(*x), torch.tensor([0, 1]), **settings)
    assert words in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_two_conv_pool_layers_hand_the_lower_one_its_error_through_bp2_as_autograd_does(activation):
    # chapter 6's second conv-pool layer: BP2's full correlation with the flipped filters feeds the first one
    def make():
        torch.manual_seed(2)
        return nn.Sequential(
            ConvPool2d(1, 2, 3, pool_size=1, activation=activation, dtype=torch.float64),  # (N, 2, 10, 10)
            ConvPool2d(2, 3, 3, pool_size=2, activation=activation, dtype=torch.float64),  # (N, 3, 4, 4)
            nn.Flatten(),
            FullyConnected(48, 4, activation="linear", dtype=torch.float64),
        )

    ours, theirs = make(), make()
    x, labels = torch.randn(4, 1, 12, 12, dtype=torch.float64), torch.randint(0, 4, (4,))
    want = _plain_step(theirs, x, labels, 0.2, "log_likelihood", lmbda=1.0, n=10)
    got = sgd_step(ours, x, labels, 0.2, lmbda=1.0, n=10)
    torch.testing.assert_close(got, want, **TOL)
    for mine, plain in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, plain, **TOL)


def test_ties_in_a_pool_go_to_the_winner_autograd_picks_as_on_mnists_blank_background():
    # all-zero patches convolve to exactly 0: every pool over them is a tie; the channels-last pooling sgd_step uses
    # on the CPU must route δ to the same one of the tied positions as torch's own max_pool2d
    ours, theirs = _chapter6_like("sigmoid"), _chapter6_like("sigmoid")
    x = torch.rand(6, 2, 9, 9, dtype=torch.float64)
    x[x < 0.7] = 0.0
    x[:, :, :5, :5] = 0.0
    labels = torch.randint(0, 4, (6,))
    with torch.no_grad():
        conv = F.conv2d(x, ours[0].weight)
    assert (conv == 0).sum() > 100  # ties there are
    want = _plain_step(theirs, x, labels, 0.5, "log_likelihood")
    got = sgd_step(ours, x, labels, 0.5)
    torch.testing.assert_close(got, want, **TOL)
    for mine, plain in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, plain, **TOL)


def _bernoulli_masks(shapes, p, seed):
    """Hand-drawn dropout masks, network3's: each entry 1 with probability 1 - p, one per example and input."""
    generator = torch.Generator().manual_seed(seed)
    return [None if shape is None else torch.full(shape, 1 - p).bernoulli(generator=generator) for shape in shapes]


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_a_dropout_step_equals_autograd_and_sgd_with_the_same_masks_on_the_layers_inputs_float64(activation):
    # rung 7's form: conv-pool, then dropout on the fully connected layer's input and on the softmax layer's
    ours, theirs = _chapter6_like(activation), _chapter6_like(activation)
    x = torch.randn(6, 2, 9, 9, dtype=torch.float64)
    labels = torch.randint(0, 4, (6,))
    masks = [m if m is None else m.double() for m in _bernoulli_masks([None, None, (6, 27), (6, 5)], 0.5, seed=4)]
    assert 0 < masks[2].sum() < masks[2].numel() and 0 < masks[3].sum() < masks[3].numel()
    want = _plain_step(theirs, x, labels, 0.3, "log_likelihood", lmbda=2.0, n=60, masks=masks)
    got = sgd_step(ours, x, labels, 0.3, lmbda=2.0, n=60, masks=masks)
    torch.testing.assert_close(got, want, **TOL)
    for mine, plain in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, plain, **TOL)
    unmasked = _chapter6_like(activation)
    sgd_step(unmasked, x, labels, 0.3, lmbda=2.0, n=60)
    assert not torch.allclose(unmasked[2].weight, ours[2].weight)  # the masks changed the step


def test_a_dropout_mask_on_the_first_layers_input_and_one_of_p_0_3_step_as_autograd_does():
    def make():
        torch.manual_seed(5)
        return nn.Sequential(
            FullyConnected(8, 6, activation="relu", dtype=torch.float64),
            FullyConnected(6, 7, activation="tanh", dtype=torch.float64),
            FullyConnected(7, 3, activation="linear", dtype=torch.float64),
        )

    ours, theirs = make(), make()
    x, labels = torch.randn(5, 8, dtype=torch.float64), torch.randint(0, 3, (5,))
    masks = [m.double() for m in _bernoulli_masks([(5, 8), (5, 6), (5, 7)], 0.3, seed=6)]
    want = _plain_step(theirs, x, labels, 0.5, "log_likelihood", masks=masks)
    got = sgd_step(ours, x, labels, 0.5, masks=masks)
    torch.testing.assert_close(got, want, **TOL)
    for mine, plain in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, plain, **TOL)


@pytest.mark.parametrize(
    "masks, error, words",
    [
        ([torch.ones(2, 2, 9, 9), None, None, None], ValueError, "masks[0]: layers[0] is a ConvPool2d; dropout masks"),
        ([None, None, torch.ones(2, 27)], ValueError, "masks must hold one entry per layer, 4; got 3"),
        ([None, None, torch.ones(2, 26), None], ValueError, "must have the shape of layers[2]'s input, (2, 27)"),
        ([None, None, [1.0] * 27, None], TypeError, "masks[2] must be a torch.Tensor or None, got list"),
        (torch.ones(4), TypeError, "masks must be a sequence of one tensor or None per layer, got Tensor"),
    ],
)  # fmt: skip
def test_bad_masks_are_one_line_naming_the_entry(masks, error, words):
    layers = _chapter6_like("relu")
    with pytest.raises(error) as raised:
        sgd_step(layers, torch.rand(2, 2, 9, 9, dtype=torch.float64), torch.tensor([0, 1]), 0.1, masks=masks)
    assert words in str(raised.value) and "\n" not in str(raised.value)
