"""The training engine, torch_manualbp.sgd.MiniBatchSGD, without Lightning: its steps against plain autograd SGD on
the same mini-batches (float64), the costs it returns, and rewind against a run stopped before the step."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from torch_manualbp import Network
from torch_manualbp.sgd import MiniBatchSGD, mini_batches
from torch_manualbp.testing.reference import autograd_cost


def _network_and_block(rows: int = 23, seed: int = 0) -> tuple[Network, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = Network([6, 5, 3], cost="cross_entropy", dtype=torch.float64)
    return (
        net,
        torch.rand(rows, 6, dtype=torch.float64),
        torch.eye(3, dtype=torch.float64)[torch.randint(0, 3, (rows,))],
    )


def _plain_sgd(params, x, y, eta: float, size: int, decay: float = 0.0, cost: str = "cross_entropy"):
    """Autograd SGD over the mini-batches of ``size`` rows in order; the book's L2 on the weights; the costs."""
    costs = []
    for start in range(0, len(x), size):
        c = autograd_cost(params, x[start : start + size], y[start : start + size], cost)
        grads = torch.autograd.grad(c, params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                if i % 2 == 0:  # weights, not biases, decay: w → (1 − ηλ/n) w
                    p.mul_(1 - eta * decay)
                p -= eta * g
        costs.append(c.detach())
    return torch.stack(costs)


def test_mini_batches_counts_the_last_smaller_one():
    assert [mini_batches(rows, 10) for rows in (1, 10, 11, 100, 101)] == [1, 1, 2, 10, 11]


def test_run_equals_plain_autograd_sgd_over_the_same_mini_batches_float64():
    net, x, y = _network_and_block()
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    want_costs = _plain_sgd(params, x, y, eta=0.5, size=5, decay=2.0 / 100)
    costs = MiniBatchSGD(net, mini_batch_size=5, lmbda=2.0, n=100).run(x, y, eta=0.5)
    assert costs.shape == (5,)  # 23 rows: four mini-batches of 5 and one of 3
    torch.testing.assert_close(costs, want_costs, rtol=1e-12, atol=1e-12)
    for got, want in zip(net.parameters(), params):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


def test_without_a_mini_batch_size_the_block_is_one_mini_batch():
    net, x, y = _network_and_block(rows=8)
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    _plain_sgd(params, x, y, eta=1.0, size=8)
    assert MiniBatchSGD(net).run(x, y, eta=1.0).shape == (1,)
    for got, want in zip(net.parameters(), params):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


def test_rewind_leaves_the_parameters_and_gradients_of_a_run_stopped_before_that_step():
    net, x, y = _network_and_block()
    reference = [p.detach().clone().requires_grad_() for p in net.parameters()]
    sgd = MiniBatchSGD(net, mini_batch_size=5)
    sgd.run(x[:10], y[:10], eta=0.5, first_step=100)  # steps 100, 101
    sgd.run(x[10:], y[10:], eta=0.25, first_step=102)  # steps 102, 103, 104
    assert sgd.rewind(103) and not sgd.rewind(105) and not sgd.rewind(99)
    _plain_sgd(reference, x[:10], y[:10], eta=0.5, size=5)
    _plain_sgd(reference, x[10:15], y[10:15], eta=0.25, size=5)  # step 102 applied, 103 not
    grads = torch.autograd.grad(autograd_cost(reference, x[15:20], y[15:20], "cross_entropy"), reference)
    for p, want, grad in zip(net.parameters(), reference, grads):
        torch.testing.assert_close(p.detach(), want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p.grad, grad, rtol=1e-12, atol=1e-12)
    sgd.forget()
    assert not sgd.rewind(103)  # nothing kept once forgotten


BAD_SETTINGS = [
    ({"mini_batch_size": 0}, "mini_batch_size"),
    ({"backend": "jit"}, "backend"),
    ({"lmbda": 5.0}, "n must be the training-set size"),
]


@pytest.mark.parametrize("settings, word", BAD_SETTINGS)
def test_bad_settings_name_the_argument(settings, word):
    net, _, _ = _network_and_block()
    with pytest.raises((TypeError, ValueError), match=word):
        MiniBatchSGD(net, **settings)


def test_the_engine_imports_no_lightning():
    code = "import sys, torch_manualbp.sgd; print(any(m.split('.')[0] == 'lightning' for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_compiled_backend_builds_more_settings_in_one_process_than_dynamos_recompile_limit():
    # With the limit at 1, the second setting (another λ) would be the first recompile past it: fullgraph=True raises.
    x, y = _network_and_block(rows=8)[1:]
    with torch._dynamo.config.patch(recompile_limit=1):
        for lmbda in (0.0, 3.0):
            net = _network_and_block(rows=8)[0]
            params = [p.detach().clone().requires_grad_() for p in net.parameters()]
            want = _plain_sgd(params, x, y, eta=0.5, size=2, decay=lmbda / 100)
            costs = MiniBatchSGD(net, mini_batch_size=2, lmbda=lmbda, n=100, backend="compiled", steps_per_call=2).run(
                x, y, eta=0.5
            )
            torch.testing.assert_close(costs, want, rtol=1e-10, atol=1e-10)
            for got, p in zip(net.parameters(), params):
                torch.testing.assert_close(got, p.detach(), rtol=1e-10, atol=1e-10)
        assert torch._dynamo.config.recompile_limit == 1  # the user's setting, outside the engine's calls
