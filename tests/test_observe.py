"""record_errors(): the δˡ that a normal backward() computes, seen from outside, without changing it."""

import numpy as np
import torch
from conftest import network_and_batch

from torch_manualbp.functional import quadratic_cost
from torch_manualbp.observe import record_errors
from torch_manualbp.testing.reference import BookNetwork

F64 = dict(rtol=1e-10, atol=1e-12)


def test_recorded_errors_equal_backprop_and_the_books_per_example_formula():
    net, x, labels = network_and_batch()
    with record_errors() as record:
        quadratic_cost(net(x), labels).backward()
    recorded = record.for_network(net)
    # The mean cost C = (1/n) Σ_x C_x has ∂C/∂z^{x,l} = δ^{x,l}/n: scale back to the book's δ^{x,l}.
    n = len(x)
    for mine, theirs in zip(recorded, net.backprop(x, labels).delta):
        torch.testing.assert_close(mine.delta * n, theirs, **F64)
    book = BookNetwork(
        net.sizes,
        weights=[layer.weight.detach().numpy() for layer in net.layers],
        biases=[layer.bias.detach().numpy() for layer in net.layers],
    )
    y = np.eye(3)[labels.numpy()]
    for i in range(n):
        book_deltas, _ = book.backprop(x[i].numpy().reshape(-1, 1), y[i].reshape(-1, 1))  # nabla_b = δ (BP3)
        for entry, book_delta in zip(recorded, book_deltas):
            torch.testing.assert_close(entry.delta[i] * n, torch.from_numpy(book_delta.ravel()), **F64)


def test_recorded_sigmoid_prime_is_that_of_the_forward_activations():
    net, x, labels = network_and_batch()
    with record_errors() as record:
        quadratic_cost(net(x), labels).backward()
    a = x
    for layer, entry in zip(net.layers, record.for_network(net)):
        a = torch.sigmoid(a @ layer.weight.T + layer.bias).detach()
        torch.testing.assert_close(entry.sigmoid_prime, a * (1 - a), **F64)


def test_recording_on_and_off_give_bit_identical_gradients():
    net, x, labels = network_and_batch()
    quadratic_cost(net(x), labels).backward()
    without = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with record_errors() as record:
        quadratic_cost(net(x), labels).backward()
    assert len(record.entries) == 3
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), without))


def test_nothing_is_recorded_outside_the_context():
    net, x, labels = network_and_batch()
    with record_errors() as record:
        pass
    quadratic_cost(net(x), labels).backward()
    assert record.entries == []


def test_nested_recordings_each_see_exactly_the_backward_passes_run_inside_them():
    # the inner record ends holding the same entries as the outer one (equal lists): leaving it must still stop
    # the inner record, not the outer one
    net, x, labels = network_and_batch()
    with record_errors() as outer:
        with record_errors() as inner:
            quadratic_cost(net(x), labels).backward()
        quadratic_cost(net(x), labels).backward()
    quadratic_cost(net(x), labels).backward()
    assert len(inner.entries) == 3 and len(outer.entries) == 6
    assert all(a is b for a, b in zip(inner.entries, outer.entries))
