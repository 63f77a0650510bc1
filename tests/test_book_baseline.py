"""The benchmark's baselines are sound: the numpy book network and the saved-bytes counter."""

import numpy as np
import pytest
import torch

from benchmarks.saved_bytes import count_saved_bytes
from torch_manualbp import Network
from torch_manualbp.testing.reference import BookNetwork

SIZES = [6, 5, 4, 3]


@pytest.fixture
def nets_and_batch():
    torch.manual_seed(0)
    net = Network(SIZES, init="normal", dtype=torch.float64)
    book = BookNetwork(
        SIZES,
        weights=[layer.weight.detach().numpy() for layer in net.layers],
        biases=[layer.bias.detach().numpy() for layer in net.layers],
    )
    x = torch.rand(7, SIZES[0], dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0, 2, 2]), SIZES[-1]).to(torch.float64)
    columns = [(xi.numpy().reshape(-1, 1), yi.numpy().reshape(-1, 1)) for xi, yi in zip(x, y)]
    return net, book, x, y, columns


def test_one_update_mini_batch_equals_a_manual_sgd_step(nets_and_batch):
    net, book, x, y, columns = nets_and_batch
    eta = 3.0
    result = net.backprop(x, y)
    book.update_mini_batch(columns, eta)
    for layer, w, b, nabla_w, nabla_b in zip(net.layers, book.weights, book.biases, result.nabla_w, result.nabla_b):
        np.testing.assert_allclose(w, (layer.weight - eta * nabla_w).detach().numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.ravel(), (layer.bias - eta * nabla_b).detach().numpy(), rtol=0, atol=1e-10)


def test_book_feedforward_equals_network_forward(nets_and_batch):
    net, book, x, _, columns = nets_and_batch
    with torch.no_grad():
        expected = net(x).numpy()
    got = np.stack([book.feedforward(xi).ravel() for xi, _ in columns])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_saved_bytes_of_sigmoid_is_its_output():
    n, h = 8, 5
    x = torch.rand(n, h, requires_grad=True)
    saved = count_saved_bytes(lambda: torch.sigmoid(x), [x])
    assert saved.saved == n * h * 4  # sigmoid saves its float32 output, nothing else
    assert saved.extra == 0  # ... which the caller holds: nothing kept alive only for backward


def test_saved_bytes_counts_a_storage_saved_twice_once_and_intermediates_as_extra():
    n, h = 8, 5
    x = torch.rand(n, h, requires_grad=True)
    # x * x saves x twice (same storage); exp(x * x) saves its output, an intermediate's consumer keeps
    # nothing else. Returning the sum leaves exp's output held only by the graph.
    saved = count_saved_bytes(lambda: torch.exp(x * x).sum(), [x])
    assert saved.tensors == 3
    assert saved.saved == 2 * n * h * 4  # x once, exp's output once
    assert saved.extra == n * h * 4  # exp's output: alive only for backward
