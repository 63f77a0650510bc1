"""Network.sgd_step, the book's update_mini_batch without autograd, against the book's per-example algorithm,
against autograd + torch.optim.SGD, and on bad input."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from torch_manualbp import Network
from torch_manualbp.costs import Quadratic
from torch_manualbp.observe import record_errors
from torch_manualbp.testing.reference import BookNetwork, autograd_output, autograd_quadratic_cost

F64 = dict(rtol=1e-10, atol=1e-12)


def _copy_to_book(net: Network) -> BookNetwork:
    return BookNetwork(
        net.sizes,
        weights=[layer.weight.detach().numpy() for layer in net.layers],
        biases=[layer.bias.detach().numpy() for layer in net.layers],
    )


def _book_cost(book: BookNetwork, x: np.ndarray, y: np.ndarray) -> float:
    outputs = [book.feedforward(x[i].reshape(-1, 1)).ravel() for i in range(len(x))]
    return float(np.mean([0.5 * np.sum((a - t) ** 2) for a, t in zip(outputs, y)]))


@pytest.mark.parametrize("sizes", [[6, 4], [6, 5, 3], [8, 6, 5, 4]], ids=["2-layer-sizes", "3", "4"])
@pytest.mark.parametrize("targets", ["labels", "one-hot"])
def test_sgd_steps_equal_the_books_update_mini_batch_float64(sizes, targets):
    torch.manual_seed(1)
    net = Network(sizes, init="normal", dtype=torch.float64)
    book = _copy_to_book(net)
    classes, eta = sizes[-1], 3.0
    for step in range(5):
        x = torch.rand(7, sizes[0], dtype=torch.float64)
        labels = torch.randint(0, classes, (7,))
        y_np = np.eye(classes)[labels.numpy()]
        y = labels if targets == "labels" else torch.from_numpy(y_np)
        expected_cost = _book_cost(book, x.numpy(), y_np)
        cost = net.sgd_step(x, y, eta)
        book.update_mini_batch([(x[i].numpy().reshape(-1, 1), y_np[i].reshape(-1, 1)) for i in range(7)], eta)
        assert math.isclose(cost.item(), expected_cost, rel_tol=1e-12), step
        for layer, w, b in zip(net.layers, book.weights, book.biases):
            torch.testing.assert_close(layer.weight.detach(), torch.from_numpy(w), **F64)
            torch.testing.assert_close(layer.bias.detach(), torch.from_numpy(b.ravel()), **F64)


def test_sgd_steps_equal_autograd_and_torch_optim_sgd_float32():
    torch.manual_seed(0)
    net = Network([784, 30, 10], init="normal")
    reference = [p.detach().clone().requires_grad_() for p in net.parameters()]
    optimizer = torch.optim.SGD(reference, lr=3.0)
    for _ in range(20):
        x, labels = torch.rand(10, 784), torch.randint(0, 10, (10,))
        cost = net.sgd_step(x, labels, 3.0)
        expected = autograd_quadratic_cost(autograd_output(reference, x), torch.nn.functional.one_hot(labels, 10))
        optimizer.zero_grad()
        expected.backward()
        optimizer.step()
        torch.testing.assert_close(cost, expected.detach(), rtol=1e-5, atol=1e-7)
    # The same arithmetic in another order (the step folded into addmm_ instead of a separate gradient tensor):
    # float32 rounding, about 1e-7 relative per step, accumulates over 20 steps to ~1e-6 of the weights' size.
    for mine, theirs in zip(net.parameters(), reference):
        torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-4, atol=1e-5)


def test_sgd_step_leaves_no_grad_and_returns_a_cost_with_no_graph():
    net = Network([5, 4, 3])
    cost = net.sgd_step(torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), 0.5)
    assert cost.ndim == 0 and cost.grad_fn is None and not cost.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize(
    "cost, backward_through",
    [
        ("quadratic", "cost"),
        ("quadratic", "layered_cost"),
        ("cross_entropy", "cost"),
        ("cross_entropy", "layered_cost"),
    ],
)
def test_sgd_step_hands_record_errors_what_the_functions_hand_it(cost, backward_through):
    torch.manual_seed(2)
    net = Network([6, 5, 4], cost=cost, dtype=torch.float64)
    twin = Network([6, 5, 4], cost=cost, dtype=torch.float64)
    twin.load_state_dict(net.state_dict())
    x, labels = torch.rand(3, 6, dtype=torch.float64), torch.tensor([0, 3, 1])
    with record_errors() as via_autograd:  # the one-node backward, or the per-layer Functions'
        getattr(twin, backward_through)(x, labels).backward()
    with record_errors() as fused:
        net.sgd_step(x, labels, 1.0)
    for want, got in zip(via_autograd.for_network(twin), fused.for_network(net)):
        torch.testing.assert_close(got.delta, want.delta, **F64)
        torch.testing.assert_close(got.sigmoid_prime, want.sigmoid_prime, **F64)


@pytest.mark.parametrize(
    "x, y, eta, error, words",
    [
        (
            torch.rand(4, 6),
            torch.tensor([0, 1, 2, 0]),
            1.0,
            ValueError,
            "x must be a non-empty mini-batch of shape (N, 5)",
        ),
        (torch.rand(4, 5), torch.tensor([0, 1, 2]), 1.0, ValueError, "integer labels y must have shape (4,)"),
        (torch.rand(4, 5), torch.tensor([0, 1, 7, 0]), 1.0, ValueError, "labels y must lie in 0..2"),
        (torch.rand(4, 5), torch.rand(4, 2), 1.0, ValueError, "a float target y must have the shape of a"),
        (torch.rand(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0]), 1.0, TypeError, "x must have the dtype"),
        (torch.rand(4, 5), torch.rand(4, 3, dtype=torch.float64), 1.0, TypeError, "y must have the dtype"),
        (torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), float("nan"), ValueError, "eta must be a positive, finite"),
        (torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), -1.0, ValueError, "eta must be a positive, finite"),
        (torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), 0, ValueError, "eta must be a positive, finite"),
        (torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), "3.0", TypeError, "eta must be a real number"),
        (torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), True, TypeError, "eta must be a real number"),
        (torch.rand(4, 5).long(), torch.tensor([0, 1, 2, 0]), 1.0, TypeError, "x must be a floating-point tensor"),
    ],
)
def test_sgd_step_rejects_bad_input_before_changing_any_parameter(x, y, eta, error, words):
    net = Network([5, 4, 3])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        net.sgd_step(x, y, eta)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sgd_steps_on_cuda_equal_those_on_the_cpu():
    torch.manual_seed(3)
    cpu = Network([784, 30, 10], init="normal", dtype=torch.float64)
    gpu = Network([784, 30, 10], init="normal", dtype=torch.float64, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    for _ in range(10):
        x, labels = torch.rand(10, 784, dtype=torch.float64), torch.randint(0, 10, (10,))
        want = cpu.sgd_step(x, labels, 3.0)
        got = gpu.sgd_step(x.cuda(), labels.cuda(), 3.0)
        torch.testing.assert_close(got.cpu(), want, **F64)
    for a, b in zip(gpu.parameters(), cpu.parameters()):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), **F64)


# --- without its per-call tax (issue 18) ------------------------------------------------------------------------
# Network.sgd_step without its per-call tax (issue 18): it switches autograd off itself rather than through
# ``@torch.no_grad()``, and reads the parameters from the module dicts rather than through ``nn.Module.__getattr__``.
# What those shortcuts must not change: the grad mode the caller had, even when the step raises, and parameters
# replaced after the network was built (a reassigned ``nn.Parameter``, ``load_state_dict(assign=True)``).


class _GradModeSpy(Quadratic):
    """The quadratic cost, noting the grad mode its BP1 ran under, and raising there when told to."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.grad_enabled = fail, []

    def delta(self, output_minus_y, a):
        self.grad_enabled.append(torch.is_grad_enabled())
        if self.fail:
            raise RuntimeError("raised inside the step")
        return super().delta(output_minus_y, a)


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad-on", "grad-off"])
@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
def test_sgd_step_runs_without_grad_and_restores_the_callers_grad_mode(grad_enabled, fail):
    cost = _GradModeSpy(fail)
    net = Network([5, 4, 3], cost=cost)
    x, labels = torch.rand(4, 5), torch.tensor([0, 1, 2, 0])
    with torch.set_grad_enabled(grad_enabled):
        if fail:
            with pytest.raises(RuntimeError, match="raised inside the step"):
                net.sgd_step(x, labels, 0.5)
        else:
            assert not net.sgd_step(x, labels, 0.5).requires_grad
        assert torch.is_grad_enabled() == grad_enabled
    assert cost.grad_enabled == [False]


def _book_step(net: Network, x: torch.Tensor, labels: torch.Tensor, eta: float) -> list[np.ndarray]:
    """The book's update_mini_batch (numpy, per example) from the network's current parameters: W¹, b¹, W², b², ..."""
    book = BookNetwork(
        net.sizes,
        weights=[layer.weight.detach().numpy().copy() for layer in net.layers],
        biases=[layer.bias.detach().numpy().copy() for layer in net.layers],
    )
    y = np.eye(net.sizes[-1])[labels.numpy()]
    book.update_mini_batch([(x[i].numpy().reshape(-1, 1), y[i].reshape(-1, 1)) for i in range(len(x))], eta)
    return [p for w, b in zip(book.weights, book.biases) for p in (w, b.ravel())]


@pytest.mark.parametrize("replace", ["parameter", "load_state_dict_assign", "layer"])
def test_sgd_step_updates_parameters_replaced_after_a_first_step_float64(replace):
    torch.manual_seed(0)
    net = Network([6, 5, 3], init="normal", dtype=torch.float64)
    x, labels = torch.rand(7, 6, dtype=torch.float64), torch.randint(0, 3, (7,))
    net.sgd_step(x, labels, 3.0)  # a first step, before anything is replaced
    other = Network([6, 5, 3], init="normal", dtype=torch.float64)
    if replace == "parameter":
        net.layers[1].weight = nn.Parameter(other.layers[1].weight.detach().clone())
    elif replace == "load_state_dict_assign":
        net.load_state_dict({k: v.clone() for k, v in other.state_dict().items()}, assign=True)
    else:
        net.layers[0] = other.layers[0]
    expected = _book_step(net, x, labels, 3.0)
    replaced = [p.detach().clone() for p in net.parameters()]
    net.sgd_step(x, labels, 3.0)
    for got, before, want in zip(net.parameters(), replaced, expected):
        assert not torch.equal(got.detach(), before)  # the parameter the module holds now is the one stepped
        torch.testing.assert_close(got.detach(), torch.from_numpy(want), **F64)
