"""Network.sgd_step without its per-call tax (issue 18): it switches autograd off itself rather than through
``@torch.no_grad()``, and reads the parameters from the module dicts rather than through ``nn.Module.__getattr__``.
What those shortcuts must not change: the grad mode the caller had, even when the step raises, and parameters
replaced after the network was built (a reassigned ``nn.Parameter``, ``load_state_dict(assign=True)``)."""

import numpy as np
import pytest
import torch
from torch import nn

from torch_manualbp import Network
from torch_manualbp.costs import Quadratic
from torch_manualbp.testing.reference import BookNetwork

F64 = dict(rtol=1e-10, atol=1e-12)


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
