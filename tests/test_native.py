"""The native backend of the training engine (``MiniBatchSGD(backend="native")``, ``torch.ops.manualbp.sgd_block``):
its updates against the book's per-example algorithm and plain autograd (float64), against the eager engine (float32),
its fallback to eager where it cannot be built or has no such cost, and the classifier training on it by default.

The op is built once per test session (``build_native`` caches it in the process, torch's extensions folder on
disk); the fallback test builds in an empty folder with a compiler that does not exist, in a subprocess."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CLI_ENV, DATA_DIR, ROOT, run_cli, write_config

from torch_manualbp import Network
from torch_manualbp.costs import Quadratic
from torch_manualbp.mnist import load_mnist
from torch_manualbp.observe import record_errors
from torch_manualbp.sgd import NATIVE_SOURCE, MiniBatchSGD, build_native, native_build_name
from torch_manualbp.testing.reference import BookNetwork, autograd_cost

F64 = dict(rtol=1e-10, atol=1e-12)
# float32 over a few steps (seven at most below): each step adds at most the per-step difference of
# assert_each_step_agrees (about two ulps of a parameter, under 1e-6 for |p| < 8), so seven stay within 2e-5
F32 = dict(rtol=1e-5, atol=2e-5)


def assert_each_step_agrees(native, eager, x, labels, eta, mini_batch_size=10):
    """Step ``native`` and ``eager`` (engines over two copies of one network) one mini-batch at a time, assert that each
    step's cost and parameters agree, and copy the eager parameters into the native network before the next step, so
    that rounding never accumulates into a trajectory.

    The tolerance is derived, not measured: from the same parameters, the two paths differ only in how they round. A
    sum of k products, in any order, is within γₖ·Σ|terms| of the exact one (γₖ = k·u/(1 − k·u), u the unit roundoff,
    Higham's bound), so two orders differ by at most 2γₖ relative to the sum of magnitudes; the longest sum of a step
    is the forward product's, k = the input size. That bounds the cost's relative difference and the update's (η∂C/∂w,
    which the same k-term sums feed) relative to the step's largest update. The new parameter, p − update after the
    weight decay, is then rounded at most twice in each path: 4u·|p| more. float32's u = 6e-8 with k = 784 gives 1.9e-4
    of the largest update; float64's u = 1.1e-16 gives 3.5e-13."""
    u = torch.finfo(x.dtype).eps / 2
    k = x.shape[1]
    gamma = 2 * k * u / (1 - k * u)
    native_params, eager_params = list(native.network.parameters()), list(eager.network.parameters())
    for start in range(0, len(x), mini_batch_size):
        rows = slice(start, start + mini_batch_size)
        before = [p.detach().clone() for p in eager_params]
        got_cost, want_cost = native.run(x[rows], labels[rows], eta), eager.run(x[rows], labels[rows], eta)
        torch.testing.assert_close(got_cost, want_cost, rtol=gamma, atol=0.0)
        largest_update = max((p.detach() - b).abs().max().item() for p, b in zip(eager_params, before))
        for got, want in zip(native_params, eager_params):
            torch.testing.assert_close(got, want, rtol=4 * u, atol=gamma * largest_update)
            with torch.no_grad():
                got.copy_(want)  # keeps the native weights' strides (row- or column-major)


needs_native = pytest.mark.skipif(build_native() is not None, reason=f"native op not built: {build_native()}")


@needs_native
def test_native_steps_equal_the_books_update_mini_batch_float64():
    torch.manual_seed(1)
    net = Network([8, 6, 5, 4], init="normal", dtype=torch.float64)
    book = BookNetwork(
        net.sizes,
        weights=[layer.weight.detach().numpy() for layer in net.layers],
        biases=[layer.bias.detach().numpy() for layer in net.layers],
    )
    x, labels = torch.rand(23, 8, dtype=torch.float64), torch.randint(0, 4, (23,))
    y = np.eye(4)[labels.numpy()]
    costs = MiniBatchSGD(net, mini_batch_size=5, backend="native").run(x, labels, eta=3.0)
    want_costs = []
    for start in range(0, 23, 5):  # four mini-batches of 5 and one of 3, in order
        rows = range(start, min(start + 5, 23))
        outputs = [book.feedforward(x[i].numpy().reshape(-1, 1)).ravel() for i in rows]
        want_costs.append(np.mean([0.5 * np.sum((a - y[i]) ** 2) for a, i in zip(outputs, rows)]))
        book.update_mini_batch([(x[i].numpy().reshape(-1, 1), y[i].reshape(-1, 1)) for i in rows], 3.0)
    torch.testing.assert_close(costs, torch.tensor(want_costs, dtype=torch.float64), **F64)
    for layer, w, b in zip(net.layers, book.weights, book.biases):
        torch.testing.assert_close(layer.weight.detach(), torch.from_numpy(w), **F64)
        torch.testing.assert_close(layer.bias.detach(), torch.from_numpy(b.ravel()), **F64)


@needs_native
def test_native_steps_equal_plain_autograd_sgd_with_cross_entropy_and_l2_float64():
    torch.manual_seed(2)
    net = Network([6, 5, 3], cost="cross_entropy", dtype=torch.float64)
    x, y = torch.rand(23, 6, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[torch.randint(0, 3, (23,))]
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    eta, decay = 0.5, 2.0 / 100
    want_costs = []
    for start in range(0, 23, 5):  # network2.py's step: W → (1 − ηλ/n) W − η ∂C₀/∂W, b → b − η ∂C₀/∂b
        cost = autograd_cost(params, x[start : start + 5], y[start : start + 5], "cross_entropy")
        grads = torch.autograd.grad(cost, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if p.ndim == 2:
                    p.mul_(1 - eta * decay)
                p -= eta * g
        want_costs.append(cost.detach())
    costs = MiniBatchSGD(net, mini_batch_size=5, lmbda=2.0, n=100, backend="native").run(x, y, eta=eta)
    torch.testing.assert_close(costs, torch.stack(want_costs), **F64)
    for got, want in zip(net.parameters(), params):
        torch.testing.assert_close(got.detach(), want.detach(), **F64)


@pytest.fixture(scope="module")
def mnist_block() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 3,000 MNIST training images, as the data module scales them, and their labels."""
    mnist = load_mnist(DATA_DIR)
    return mnist["train_images"][:3000].reshape(3000, -1).float() / 255, mnist["train_labels"][:3000]


@needs_native
@pytest.mark.parametrize("cost, eta", [("quadratic", 3.0), ("cross_entropy", 0.5)])  # chapters 1 and 3's η
@pytest.mark.parametrize("lmbda", [0.0, 5.0])
def test_each_of_300_native_mnist_steps_equals_the_eager_engines_step_float32(mnist_block, cost, eta, lmbda):
    # The native op's elementwise loops (σ, BP1, σ') round differently from ATen's vectorised kernels, and its
    # forward product sums in another order; each step is compared from the same parameters (not 300 steps'
    # trajectories, which drift apart by rounding at a rate that depends on the CPU's kernels).
    torch.manual_seed(0)
    native_net = Network([784, 30, 10], init="normal", cost=cost)
    eager_net, start = copy.deepcopy(native_net), copy.deepcopy(native_net)
    x, labels = mnist_block
    native = MiniBatchSGD(native_net, 10, lmbda, 50_000, backend="native")
    eager = MiniBatchSGD(eager_net, 10, lmbda, 50_000, backend="eager")
    assert_each_step_agrees(native, eager, x, labels, eta)
    assert native.uses_native()
    for trained, initial in zip(eager_net.parameters(), start.parameters()):
        assert (trained - initial).abs().max() > 0.01  # 300 steps moved every parameter tensor


@needs_native
def test_weights_the_cpu_loop_cannot_take_train_eagerly_with_eagers_updates_and_say_so_once():
    # Column-major weights (as on CUDA, where the engine also runs the eager step) are not the CPU loop's: it needs
    # each weight's rows in order. The op has no second path of its own: the block runs the eager step, the same
    # calls as on row-major weights, though not bit for bit (BLAS picks other kernels for column-major operands)
    torch.manual_seed(7)
    native_net = Network([784, 30, 10], init="normal", cost="cross_entropy")
    eager_net = copy.deepcopy(native_net)
    for layer in native_net.layers:
        layer.weight.data = layer.weight.data.t().contiguous().t()
    said = []
    x, labels = torch.rand(300, 784), torch.randint(0, 10, (300,))
    settings = dict(lmbda=5.0, n=50_000, regularization="l1", dropout=0.5)
    native = MiniBatchSGD(
        native_net, 10, backend="native", generator=torch.Generator().manual_seed(8), on_compile=said.append, **settings
    )
    eager = MiniBatchSGD(eager_net, 10, backend="eager", generator=torch.Generator().manual_seed(8), **settings)
    assert_each_step_agrees(native, eager, x, labels, 0.5)
    assert not native.uses_native() and not native_net.layers[0].weight.is_contiguous()
    assert said == [
        "the native SGD step's CPU loop cannot take this block (a parameter is not contiguous (the loop reads each "
        "weight's rows in order) or not of the others' dtype): training with the eager one"
    ]


@needs_native
def test_a_rewind_after_native_steps_replays_them_eagerly_to_the_same_parameters():
    torch.manual_seed(3)
    net = Network([784, 30, 10], init="normal")
    stopped = copy.deepcopy(net)
    x, labels = torch.rand(100, 784), torch.randint(0, 10, (100,))
    sgd = MiniBatchSGD(net, 10, backend="native")
    sgd.run(x, labels, 3.0, first_step=40)
    MiniBatchSGD(stopped, 10, backend="native").run(x[:70], labels[:70], 3.0)  # steps 40-46, stopped before 47
    assert sgd.rewind(47)
    for got, want in zip(net.parameters(), stopped.parameters()):
        torch.testing.assert_close(got, want, **F32)


@needs_native
def test_steps_inside_record_errors_run_eagerly_and_are_recorded():
    torch.manual_seed(4)
    native_net = Network([784, 30, 10], init="normal")
    eager_net = copy.deepcopy(native_net)
    x, labels = torch.rand(30, 784), torch.randint(0, 10, (30,))
    with record_errors() as native_record:
        MiniBatchSGD(native_net, 10, backend="native").run(x, labels, 3.0)
    with record_errors() as eager_record:
        MiniBatchSGD(eager_net, 10, backend="eager").run(x, labels, 3.0)
    assert len(native_record.entries) == len(eager_record.entries) == 6  # 3 steps, 2 layers
    for got, want in zip(native_record.entries, eager_record.entries):
        torch.testing.assert_close(got.delta, want.delta, **F32)


class _QuadraticByAnotherName(Quadratic):
    """A cost the native op does not know by name (as chapter 3's log-likelihood would be)."""

    name = "quadratic_by_another_name"


@pytest.mark.parametrize("backend", ["native", "auto"])
def test_a_cost_the_native_op_lacks_trains_eagerly_and_says_so_once(backend):
    torch.manual_seed(5)
    net = Network([784, 30, 10], init="normal", cost=_QuadraticByAnotherName())
    eager_net = copy.deepcopy(net)
    x, labels = torch.rand(200, 784), torch.randint(0, 10, (200,))
    messages = []
    sgd = MiniBatchSGD(net, 10, backend=backend, on_compile=messages.append)
    eager = MiniBatchSGD(eager_net, 10, backend="eager")
    for rows in (slice(0, 100), slice(100, 200)):
        assert torch.equal(sgd.run(x[rows], labels[rows], 3.0), eager.run(x[rows], labels[rows], 3.0))
    assert not sgd.uses_native()
    assert len(messages) == 1 and "_QuadraticByAnotherName()" in messages[0] and "eager" in messages[0]
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), eager_net.parameters()))


FALLBACK = """
import copy, torch
from torch_manualbp import Network
from torch_manualbp.sgd import MiniBatchSGD
torch.manual_seed(0)
net = Network([784, 30, 10], init="normal")
eager_net = copy.deepcopy(net)
x, labels = torch.rand(200, 784), torch.randint(0, 10, (200,))
messages = []
sgd = MiniBatchSGD(net, 10, backend="{backend}", on_compile=messages.append)
eager = MiniBatchSGD(eager_net, 10, backend="eager")
for rows in (slice(0, 100), slice(100, 200)):
    assert torch.equal(sgd.run(x[rows], labels[rows], 3.0), eager.run(x[rows], labels[rows], 3.0))
assert all(torch.equal(a, b) for a, b in zip(net.parameters(), eager_net.parameters()))
print(len(messages), messages[0] if messages else "")
"""


@pytest.mark.parametrize("backend", ["native", "auto"])
def test_without_a_compiler_the_engine_trains_eagerly_and_says_so_once(tmp_path, backend):
    # a real failed build: an empty extensions folder (nothing cached) and CXX naming a compiler that does not exist
    env = dict(CLI_ENV, TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"), CXX=str(tmp_path / "no-such-g++"))
    code = FALLBACK.replace("{backend}", backend)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    count, message = result.stdout.strip().split(" ", 1)
    assert count == "1", result.stdout
    assert message.startswith("the native SGD step cannot be used (") and "eager" in message
    assert "No CUDA runtime" not in result.stderr  # cpp_extension's import warning is kept quiet


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_native
def test_the_native_backend_on_cuda_trains_with_the_eager_step_and_says_so_once():
    torch.manual_seed(6)
    native_net = Network([784, 30, 10], init="normal").cuda()
    eager_net = copy.deepcopy(native_net)
    x, labels = torch.rand(1000, 784, device="cuda"), torch.randint(0, 10, (1000,), device="cuda")
    said = []
    native = MiniBatchSGD(native_net, 10, backend="native", on_compile=said.append)
    assert not native.uses_native()
    costs = native.run(x, labels, 3.0)
    assert costs.device.type == "cuda"
    torch.testing.assert_close(
        costs, MiniBatchSGD(eager_net, 10, backend="eager").run(x, labels, 3.0), rtol=1e-6, atol=1e-7
    )
    for got, want in zip(native_net.parameters(), eager_net.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert said == [
        "the native SGD step's CPU loop cannot take this block (the parameters are on cuda; the loop runs on the "
        "CPU): training with the eager one"
    ]


@needs_native
def test_the_cli_trains_on_the_native_step_with_the_thread_rule_said_once(tmp_path):
    config = write_config(
        tmp_path, data={"batch_size": 1000, "monitor_test": False},
        trainer={"max_epochs": 1, "limit_train_batches": 5, "limit_val_batches": 1},
    )  # fmt: skip
    result = run_cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("torch.ops.manualbp.sgd_block") == 1  # the line that says which step trains
    assert output.count("intra-op thread") == 1 and "1 intra-op thread (OMP_NUM_THREADS=1)" in output


@needs_native
def test_without_a_thread_setting_the_cli_trains_with_the_rules_one_thread(tmp_path):
    config = write_config(
        tmp_path, data={"batch_size": 1000, "monitor_test": False},
        trainer={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1},
    )  # fmt: skip
    env = {k: v for k, v in CLI_ENV.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    command = [sys.executable, "-m", "torch_manualbp.cli", "fit", "--config", str(config)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("intra-op thread") == 1
    assert "manualbp: 1 intra-op thread (small network: [784, 30, 10] at mini-batch 10" in output


def test_each_checkout_and_version_of_the_source_keeps_its_own_build(tmp_path):
    # torch's extensions cache rebuilds a name whose sources changed path or text: two checkouts under one name
    # would rebuild each other's op on every switch
    other = tmp_path / "sgd_block.cpp"
    other.write_bytes(NATIVE_SOURCE.read_bytes())
    assert native_build_name() == native_build_name(NATIVE_SOURCE)  # stable
    assert native_build_name(other) != native_build_name()  # another checkout
    name = native_build_name(other)
    other.write_bytes(NATIVE_SOURCE.read_bytes() + b"\n// edited\n")
    assert native_build_name(other) != name  # another version
    assert name.startswith("manualbp_native_")
