"""Chapter 3's L1 regularisation and dropout through the training engine (``MiniBatchSGD(regularization=...,
dropout=..., generator=...)``), eager and native: against the book's per-example update in numpy (float64, the
masks fixed by the generator's seed), the native op against the eager engine (float32), ``Network.sgd_step`` with the
same generator, an exact resume from the generator's state, and a rewind that replays the same masks."""

import copy
import re

import pytest
import torch
import torch.nn.functional as TF
from conftest import DATA_DIR
from test_l1_dropout import book_update, numpy_parameters
from test_native import assert_each_step_agrees

from torch_manualbp import Network
from torch_manualbp.mnist import load_mnist
from torch_manualbp.network import dropout_masks
from torch_manualbp.sgd import MiniBatchSGD, build_native

TOL = dict(rtol=1e-10, atol=1e-10)

native = pytest.param("native", marks=pytest.mark.skipif(build_native() is not None, reason="native op not built"))
BACKENDS = ["eager", native]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "cost, regularization, lmbda, dropout",
    [
        ("quadratic", "l1", 5.0, 0.0),
        ("cross_entropy", "l1", 5.0, 0.0),
        ("cross_entropy", "l2", 0.0, 0.5),
        ("quadratic", "l2", 5.0, 0.5),
        ("cross_entropy", "l1", 5.0, 0.5),
    ],
)
def test_engine_steps_equal_the_books_per_example_update_float64(backend, cost, regularization, lmbda, dropout):
    torch.manual_seed(0)
    net = Network([6, 5, 4, 3], cost=cost, dtype=torch.float64)
    weights, biases = numpy_parameters(net)
    eta, n, rows, size = 0.5, 40, 23, 5  # four mini-batches of 5 and one of 3
    x, labels = torch.rand(rows, 6, dtype=torch.float64), torch.randint(0, 3, (rows,))
    sgd = MiniBatchSGD(net, size, lmbda, n, backend, regularization=regularization, dropout=dropout,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    sgd.run(x, labels, eta)
    masks_from = torch.Generator().manual_seed(1)  # the same seed: the masks the engine drew, step by step in order
    ys = TF.one_hot(labels, 3).double().numpy()
    for start in range(0, rows, size):
        masks = [m.numpy()[:, None] for m in dropout_masks(net.sizes, dropout, x, masks_from)] if dropout else [1, 1]
        batch = slice(start, start + size)
        weights, biases = book_update(
            weights, biases, x[batch].numpy(), ys[batch], eta, lmbda, n, cost, regularization, masks
        )
    for got, want in zip(net.parameters(), [p for pair in zip(weights, biases) for p in pair]):
        torch.testing.assert_close(got.detach(), torch.from_numpy(want), **TOL)


def test_engine_with_dropout_makes_the_updates_of_sgd_step_with_the_same_generator_float64():
    torch.manual_seed(2)
    engine_net = Network([6, 10, 8, 3], cost="cross_entropy", dtype=torch.float64)
    step_net = copy.deepcopy(engine_net)
    x, labels = torch.rand(30, 6, dtype=torch.float64), torch.randint(0, 3, (30,))
    # the eager backend: the same ATen calls as sgd_step, so the same bits
    sgd = MiniBatchSGD(engine_net, 10, 5.0, 100, "eager", regularization="l1", dropout=0.5,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
    costs = sgd.run(x, labels, 0.5)
    generator = torch.Generator().manual_seed(3)
    want = [
        step_net.sgd_step(x[s : s + 10], labels[s : s + 10], 0.5, 5.0, 100, "l1", 0.5, generator) for s in (0, 10, 20)
    ]
    assert torch.equal(costs, torch.stack(want))
    assert all(torch.equal(p, q) for p, q in zip(engine_net.parameters(), step_net.parameters()))


@pytest.fixture(scope="module")
def mnist_block() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 3,000 MNIST training images, as the data module scales them, and their labels."""
    mnist = load_mnist(DATA_DIR)
    return mnist["train_images"][:3000].reshape(3000, -1).float() / 255, mnist["train_labels"][:3000]


@pytest.mark.skipif(build_native() is not None, reason="native op not built")
@pytest.mark.parametrize("regularization, dropout", [("l1", 0.0), ("l2", 0.5), ("l1", 0.5)])
def test_each_of_300_native_mnist_steps_with_l1_and_dropout_equals_the_eager_step_float32(
    mnist_block, regularization, dropout
):
    # step by step from the same parameters, with the derived tolerance of tests/test_native.py
    torch.manual_seed(0)
    native_net = Network([784, 30, 10], init="normal", cost="cross_entropy")
    eager_net = copy.deepcopy(native_net)
    x, labels = mnist_block
    native, eager = (
        MiniBatchSGD(
            net,
            10,
            5.0,
            50_000,
            backend,
            regularization=regularization,
            dropout=dropout,
            generator=torch.Generator().manual_seed(4),
        )  # fmt: skip
        for net, backend in ((native_net, "native"), (eager_net, "eager"))
    )
    assert_each_step_agrees(native, eager, x, labels, 0.5)
    assert native.uses_native()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_resume_from_the_generator_state_gives_the_parameters_of_an_uninterrupted_run(backend):
    torch.manual_seed(5)
    whole_net = Network([784, 30, 10], init="normal", cost="cross_entropy")
    resumed_net = copy.deepcopy(whole_net)
    x, labels = torch.rand(300, 784), torch.randint(0, 10, (300,))
    settings = dict(lmbda=5.0, n=50_000, backend=backend, regularization="l1", dropout=0.5)
    torch.manual_seed(6)  # the engine's own generator, seeded from torch's at construction
    whole = MiniBatchSGD(whole_net, 10, **settings)
    for rows in (slice(0, 100), slice(100, 200), slice(200, 300)):
        whole.run(x[rows], labels[rows], 0.5)
    torch.manual_seed(6)
    first = MiniBatchSGD(resumed_net, 10, **settings)
    first.run(x[:100], labels[:100], 0.5)
    checkpoint = {"state_dict": copy.deepcopy(resumed_net.state_dict()), "generator": first.generator_state()}
    resumed_net = Network([784, 30, 10], cost="cross_entropy")  # a new process: other weights, another seed
    resumed_net.load_state_dict(checkpoint["state_dict"])
    torch.manual_seed(7)
    second = MiniBatchSGD(resumed_net, 10, **settings)
    second.set_generator_state(checkpoint["generator"])
    assert torch.equal(second.generator_state(), checkpoint["generator"])  # what a checkpoint taken now would hold
    for rows in (slice(100, 200), slice(200, 300)):
        second.run(x[rows], labels[rows], 0.5)
    assert all(torch.equal(p, q) for p, q in zip(whole_net.parameters(), resumed_net.parameters()))


def test_engines_seeded_alike_draw_the_same_masks_and_other_seeds_other_ones():
    x, labels = torch.rand(50, 6), torch.randint(0, 3, (50,))
    trained = []
    for seed in (8, 8, 9):
        torch.manual_seed(0)
        net = Network([6, 10, 3])
        torch.manual_seed(seed)
        MiniBatchSGD(net, 10, dropout=0.5).run(x, labels, 3.0)
        trained.append(list(net.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(trained[0], trained[1]))
    assert not all(torch.equal(p, q) for p, q in zip(trained[0], trained[2]))


def test_without_dropout_the_engine_draws_nothing_from_torchs_generator():
    net = Network([6, 10, 3])
    torch.manual_seed(10)
    MiniBatchSGD(net, 10, 5.0, 100, regularization="l1").run(torch.rand(20, 6), torch.randint(0, 3, (20,)), 3.0)
    after = torch.rand(3)
    torch.manual_seed(10)
    torch.rand(20, 6), torch.randint(0, 3, (20,))
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rewind_replays_the_blocks_masks_to_the_parameters_and_gradient_of_a_run_stopped_before_that_step(backend):
    torch.manual_seed(11)
    net = Network([784, 30, 10], init="normal", cost="cross_entropy", dtype=torch.float64)
    stopped = copy.deepcopy(net)
    x, labels = torch.rand(100, 784, dtype=torch.float64), torch.randint(0, 10, (100,))
    settings = dict(lmbda=5.0, n=50_000, backend=backend, regularization="l1", dropout=0.5)
    sgd = MiniBatchSGD(net, 10, **settings, generator=torch.Generator().manual_seed(12))
    sgd.run(x, labels, 0.5, first_step=40)
    generator = torch.Generator().manual_seed(12)
    MiniBatchSGD(stopped, 10, **settings, generator=generator).run(x[:70], labels[:70], 0.5)  # steps 40-46
    assert sgd.rewind(47)
    for got, want in zip(net.parameters(), stopped.parameters()):
        torch.testing.assert_close(got.detach(), want.detach(), **TOL)
    masks = dropout_masks(stopped.sizes, 0.5, x, generator)  # step 47's, the next the generator draws
    grads = torch.autograd.grad(stopped.layered_cost(x[70:80], labels[70:80], masks), list(stopped.parameters()))
    for p, grad in zip(net.parameters(), grads):
        torch.testing.assert_close(p.grad, grad, **TOL)


def test_compiled_engine_with_l1_and_dropout_equals_the_eager_one():
    torch._dynamo.reset()
    torch.manual_seed(13)
    compiled_net = Network([20, 8, 4], cost="cross_entropy")
    eager_net = copy.deepcopy(compiled_net)
    x, labels = torch.rand(50, 20), torch.randint(0, 4, (50,))  # two calls of 2 steps, one eager step after them
    engines = [
        MiniBatchSGD(
            net,
            10,
            5.0,
            100,
            backend,
            steps_per_call=2,
            regularization="l1",
            dropout=0.5,
            generator=torch.Generator().manual_seed(14),
        )  # fmt: skip
        for net, backend in ((compiled_net, "compiled"), (eager_net, "eager"))
    ]
    got, want = (sgd.run(x, labels, 0.5) for sgd in engines)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for p, q in zip(compiled_net.parameters(), eager_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "settings, error, words",
    [
        (dict(regularization="l3"), ValueError, "regularization must be one of ('l2', 'l1'), got 'l3'"),
        (dict(dropout=1.0), ValueError, "dropout must be a fraction in [0, 1)"),
        (dict(dropout="half"), TypeError, "dropout must be a real number"),
        (dict(dropout=0.5, generator=1234), TypeError, "generator must be a torch.Generator or None, got int"),
    ],
)
def test_bad_regularization_dropout_or_generator_names_the_argument(settings, error, words):
    with pytest.raises(error, match=re.escape(words)):
        MiniBatchSGD(Network([5, 4, 3]), 2, 1.0, 10, **settings)


def test_a_generator_on_another_device_than_the_data_is_refused_before_any_update():
    net = Network([5, 4, 3], device="meta")  # a device other than the generator's, without a GPU
    sgd = MiniBatchSGD(net, 2, dropout=0.5, generator=torch.Generator())
    x, labels = torch.empty(4, 5, device="meta"), torch.zeros(4, 3, device="meta")
    with pytest.raises(
        ValueError, match=re.escape("generator must be on the data's device, meta; got a generator on cpu")
    ):
        sgd.run(x, labels, 0.5)
    assert sgd.rewind(0) is False  # nothing was run


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_on_cuda_draws_from_a_cuda_generator_and_resumes_exactly(backend):
    torch.manual_seed(15)
    net = Network([784, 30, 10], init="normal", cost="cross_entropy").cuda()
    copy_net = copy.deepcopy(net)
    x, labels = torch.rand(200, 784, device="cuda"), torch.randint(0, 10, (200,), device="cuda")
    sgd = MiniBatchSGD(net, 10, 5.0, 50_000, backend, regularization="l1", dropout=0.5)
    state = sgd.generator_state()
    sgd.run(x, labels, 0.5)
    again = MiniBatchSGD(copy_net, 10, 5.0, 50_000, backend, regularization="l1", dropout=0.5)
    again.set_generator_state(state)
    again.run(x, labels, 0.5)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), copy_net.parameters()))
