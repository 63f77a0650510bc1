"""Chapter 6's ``network3`` through ``torch_manualbp.book.network3``, each claim checked against an independent
computation written here: the SGD step through plain autograd (``F.conv2d``, ``max_pool2d``, ``F.linear``,
``log_softmax`` and the L2 term as ``network3.py`` writes it), dropout masks drawn here, accuracies counted here, the
data against the IDX bytes."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import import_experiment
from test_book_session import idx_array

from torch_manualbp.book import network3
from torch_manualbp.book.network3 import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer, sigmoid

F64 = {"dtype": torch.float64}


def small_conv_net(activation_fn, m: int = 4) -> Network:
    """A ConvPoolLayer (3 maps, 3 x 3 fields, 2 x 2 pools on 8 x 8 images), 5 neurons and a softmax of 4, float64,
    the softmax drawn instead of zero so that every gradient is non-trivial."""
    torch.manual_seed(0)
    layers = [
        ConvPoolLayer((3, 1, 3, 3), (m, 1, 8, 8), activation_fn=activation_fn, **F64),  # -> (m, 3, 3, 3)
        FullyConnectedLayer(27, 5, activation_fn=activation_fn, **F64),
        SoftmaxLayer(5, 4, **F64),
    ]
    with torch.no_grad():
        layers[-1].weight.normal_()
        layers[-1].bias.normal_()
    return Network(layers, m)


def autograd_cost(params, x, y, activation, l2_share, masks=(None, None)):
    """network3's cost of the small conv net from plain torch ops: log-likelihood + 0.5 λ Σ‖w‖² / batches."""
    w_c, b_c, w_f, b_f, w_s, b_s = params
    a = activation(F.max_pool2d(F.conv2d(x.reshape(-1, 1, 8, 8), w_c), 2) + b_c[:, None, None]).flatten(1)
    a = a if masks[0] is None else a * masks[0]
    a = activation(F.linear(a, w_f, b_f))
    a = a if masks[1] is None else a * masks[1]
    log_likelihood = -F.log_softmax(F.linear(a, w_s, b_s), dim=1)[torch.arange(len(y)), y].mean()
    return log_likelihood + 0.5 * l2_share * sum((w**2).sum() for w in (w_c, w_f, w_s))


def plain_sgd(params, batches, eta, lmbda, activation):
    """network3's SGD over ``batches`` in order, by autograd, from copies of ``params``."""
    params = [p.detach().clone().requires_grad_() for p in params]
    for x, y in batches:
        grads = torch.autograd.grad(autograd_cost(params, x, y, activation, lmbda / len(batches)), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= eta * g
    return params


def random_data(n: int, n_in: int = 64, classes: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, n_in, generator=generator, **F64), torch.randint(0, classes, (n,), generator=generator)


@pytest.mark.parametrize(("activation_fn", "activation"), [(sigmoid, torch.sigmoid), (ReLU, torch.relu)])
def test_sgd_steps_of_a_conv_net_equal_plain_autograd_with_networks_l2_term_float64(activation_fn, activation, capsys):
    net = small_conv_net(activation_fn)
    before = [p.detach().clone() for p in net.params]
    x, y = random_data(8)  # two mini-batches of 4: the λ term is over num_training_batches = 2
    net.SGD((x, y), 1, 4, 0.5, random_data(4, seed=2), random_data(4, seed=3), lmbda=0.3)
    expected = plain_sgd(before, [(x[:4], y[:4]), (x[4:], y[4:])], 0.5, 0.3, activation)
    for ours, theirs in zip(net.params, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert not all(torch.equal(p, q) for p, q in zip(net.params, before))


def test_dropout_masks_from_the_seed_equal_the_same_masks_applied_by_hand():
    torch.manual_seed(0)
    layers = [
        ConvPoolLayer((3, 1, 3, 3), (4, 1, 8, 8), activation_fn=ReLU, **F64),
        FullyConnectedLayer(27, 5, activation_fn=ReLU, p_dropout=0.5, **F64),
        SoftmaxLayer(5, 4, p_dropout=0.25, **F64),
    ]
    net = Network(layers, 4)
    with torch.no_grad():
        layers[-1].weight.normal_()
    before = [p.detach().clone() for p in net.params]
    x, y = random_data(4)
    torch.manual_seed(7)
    net.train_mb(x, y, 0.5, 0.0)
    # by hand: network3 drops entries of each layer's *input*, one mask per example, input side first
    torch.manual_seed(7)
    masks = (torch.bernoulli(torch.full((4, 27), 0.5, **F64)), torch.bernoulli(torch.full((4, 5), 0.75, **F64)))
    assert 0 < masks[0].mean() < 1 and not torch.equal(masks[0][0], masks[0][1])  # per example, not per neuron
    params = [p.clone().requires_grad_() for p in before]
    grads = torch.autograd.grad(autograd_cost(params, x, y, torch.relu, 0.0, masks), params)
    for ours, p, g in zip(net.params, before, grads):
        torch.testing.assert_close(ours, p - 0.5 * g, rtol=1e-12, atol=1e-12)
    # inference: no mask, each dropout layer's weights scaled by 1 - p
    w_c, b_c, w_f, b_f, w_s, b_s = net.params
    with torch.no_grad():
        a = torch.relu(F.max_pool2d(F.conv2d(x.reshape(-1, 1, 8, 8), w_c), 2) + b_c[:, None, None]).flatten(1)
        a = torch.relu(F.linear(a, 0.5 * w_f, b_f))
        expected = torch.softmax(F.linear(a, 0.75 * w_s, b_s), dim=1)
        inpt = x
        for layer in net.layers:
            inpt = layer(inpt)
    torch.testing.assert_close(inpt, expected, rtol=1e-12, atol=1e-12)


def printed(out: str, pattern: str) -> list[str]:
    return re.findall(pattern, out)


def test_printed_accuracies_equal_an_independent_count_over_whole_mini_batches(capsys):
    net = small_conv_net(sigmoid)
    training, validation, test = random_data(40), random_data(1005, seed=2), random_data(507, seed=3)
    net.SGD(training, 1, 4, 0.5, validation, test)
    out = capsys.readouterr().out
    w_c, b_c, w_f, b_f, w_s, b_s = net.params

    def count(x, y):  # network3's accuracy: whole mini-batches only, 1004 of 1005 and 504 of 507
        rows = len(y) // 4 * 4
        with torch.no_grad():
            a = torch.sigmoid(F.max_pool2d(F.conv2d(x[:rows].reshape(-1, 1, 8, 8), w_c), 2) + b_c[:, None, None])
            z = F.linear(torch.sigmoid(F.linear(a.flatten(1), w_f, b_f)), w_s, b_s)
        return int((z.argmax(1) == y[:rows]).sum()) / rows

    val, tst = count(*validation), count(*test)
    assert out.splitlines() == [
        "Training mini-batch number 0",
        f"Epoch 0: validation accuracy {val:.2%}",
        "This is the best validation accuracy to date.",
        f"The corresponding test accuracy is {tst:.2%}",
        "Finished training network.",
        f"Best validation accuracy of {val:.2%} obtained at iteration 9",
        f"Corresponding test accuracy of {tst:.2%}",
    ]


def test_the_best_lines_follow_the_printed_validation_accuracies_ties_included(capsys):
    net = small_conv_net(sigmoid)
    net.SGD(random_data(2000), 4, 4, 2.0, random_data(100, seed=2), random_data(100, seed=3))
    out = capsys.readouterr().out
    epochs = [float(v) for v in printed(out, r"Epoch \d+: validation accuracy ([\d.]+)%")]
    assert printed(out, r"Training mini-batch number (\d+)") == [str(i) for i in range(0, 2000, 1000)]
    bests = [j for j, v in enumerate(epochs) if v >= max(epochs[: j + 1])]
    assert out.count("This is the best validation accuracy to date.") == len(bests)
    assert printed(out, r"obtained at iteration (\d+)") == [str(500 * bests[-1] + 499)]
    tests = printed(out, r"The corresponding test accuracy is ([\d.]+)%")
    assert printed(out, r"Corresponding test accuracy of ([\d.]+)%") == tests[-1:]


def test_sgd_takes_the_mini_batches_in_order_without_shuffling(capsys):
    net = small_conv_net(sigmoid)
    before = [p.detach().clone() for p in net.params]
    x, y = random_data(12)
    net.SGD((x, y), 2, 4, 0.5, random_data(4, seed=2), random_data(4, seed=3))
    batches = [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)] * 2  # two epochs, the same order
    expected = [p.detach().clone().requires_grad_() for p in before]
    for xb, yb in batches:
        grads = torch.autograd.grad(autograd_cost(expected, xb, yb, torch.sigmoid, 0.0), expected)
        with torch.no_grad():
            for p, g in zip(expected, grads):
                p -= 0.5 * g
    for ours, theirs in zip(net.params, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_network3s_initialisation_and_names():
    torch.manual_seed(0)
    fc, softmax = FullyConnectedLayer(784, 1000), SoftmaxLayer(1000, 10)
    conv = ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28))
    assert fc.weight.dtype == torch.float32  # Theano's floatX
    assert math.isclose(fc.weight.std().item(), (1 / 1000) ** 0.5, rel_tol=0.02)  # N(0, 1/n_out), network3's
    assert math.isclose(conv.weight.std().item(), (1 / (20 * 25 / 4)) ** 0.5, rel_tol=0.1)
    assert not softmax.weight.any() and not softmax.bias.any()  # zeros, as network3
    assert (conv.n_in, conv.n_out, fc.n_out) == (784, 20 * 12 * 12, 1000)
    assert network3.ReLU(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 2.0]
    assert network3.linear(torch.tensor([-1.0])).tolist() == [-1.0]
    assert network3.tanh(torch.tensor([0.0])).tolist() == [0.0]


def conv(**changes):
    return ConvPoolLayer(**{"filter_shape": (20, 1, 5, 5), "image_shape": (10, 1, 28, 28), **changes})


def fc_net(**sgd):
    net = Network([FullyConnectedLayer(64, 5), SoftmaxLayer(5, 4)], 4)
    data = (torch.rand(8, 64), torch.randint(0, 4, (8,)))
    args = {"training_data": data, "epochs": 1, "mini_batch_size": 4, "eta": 0.1, "validation_data": data}
    return lambda: net.SGD(**{**args, "test_data": data, **sgd})


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: conv(filter_shape=(20, 3, 5, 5)), "filter_shape[1]"),
        (lambda: conv(filter_shape=(20, 1, 5)), "filter_shape"),
        (lambda: conv(filter_shape=(20, 1, 5, 3)), "filter_shape"),
        (lambda: conv(filter_shape=(20, 1, 29, 29)), "filter_shape"),
        (lambda: conv(image_shape=(10, 1, 28)), "image_shape"),
        (lambda: conv(poolsize=(2, 3)), "poolsize"),
        (lambda: conv(poolsize=(25, 25)), "poolsize"),
        (lambda: conv(activation_fn=torch.relu), "activation_fn"),
        (lambda: FullyConnectedLayer(0, 10), "n_in"),
        (lambda: FullyConnectedLayer(10, 2.5), "n_out"),
        (lambda: FullyConnectedLayer(10, 10, p_dropout=1.0), "p_dropout"),
        (lambda: SoftmaxLayer(10, 10, p_dropout=-0.1), "p_dropout"),
        (lambda: Network([FullyConnectedLayer(784, 100), SoftmaxLayer(30, 10)], 10), "layers[1]"),
        (lambda: Network([FullyConnectedLayer(784, 100)], 10), "layers"),
        (lambda: Network([conv(), FullyConnectedLayer(2880, 10), SoftmaxLayer(10, 10)], 20), "layers[0].image_shape"),
        (lambda: Network([FullyConnectedLayer(784, 10), SoftmaxLayer(10, 10)], 0), "mini_batch_size"),
        (fc_net(mini_batch_size=5), "mini_batch_size"),
        (fc_net(epochs=0), "epochs"),
        (fc_net(eta=-1.0), "eta"),
        (fc_net(lmbda=float("nan")), "lmbda"),
        (fc_net(eta="0.1"), "eta"),
        (lambda: FullyConnectedLayer(10, 10, p_dropout="0.5"), "p_dropout"),
        (fc_net(training_data=torch.rand(8, 64)), "training_data"),
        (fc_net(validation_data=(torch.rand(8, 63), torch.zeros(8, dtype=torch.int64))), "validation_data"),
        (fc_net(test_data=(torch.rand(3, 64), torch.zeros(3, dtype=torch.int64))), "test_data"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_argument(make, name):
    with pytest.raises((TypeError, ValueError)) as error:
        make()
    message = str(error.value)
    assert message.startswith(name) and "\n" not in message


def test_a_missing_data_folder_is_one_line_naming_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        network3.load_data_shared(tmp_path)
    assert "load_data_shared(filename=...)" in str(error.value) and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def shared():
    return network3.load_data_shared()


def test_load_data_shared_is_the_first_50000_and_last_10000_idx_images_as_float32_and_int64(shared):
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = shared
    assert [tuple(t.shape) for t in (train_x, train_y, val_x, val_y, test_x, test_y)] == [
        (50_000, 784), (50_000,), (10_000, 784), (10_000,), (10_000, 784), (10_000,)
    ]  # fmt: skip
    assert (train_x.dtype, train_y.dtype) == (torch.float32, torch.int64)
    images = torch.from_numpy(idx_array("train-images-idx3-ubyte").reshape(60_000, 784).copy())
    labels = torch.from_numpy(idx_array("train-labels-idx1-ubyte").astype("int64"))
    torch.testing.assert_close(train_x, images[:50_000].float() / 255, rtol=0, atol=0)
    torch.testing.assert_close(val_x, images[50_000:].float() / 255, rtol=0, atol=0)
    assert torch.equal(train_y, labels[:50_000]) and torch.equal(val_y, labels[50_000:])
    assert torch.equal(test_y, torch.from_numpy(idx_array("t10k-labels-idx1-ubyte").astype("int64")))
    assert network3.size(shared[0]) == 50_000


def test_the_chapters_first_network_beats_chance_by_far_in_one_short_epoch(shared, capsys):
    training_data, validation_data, test_data = shared
    torch.manual_seed(0)
    net = Network([FullyConnectedLayer(n_in=784, n_out=100), SoftmaxLayer(n_in=100, n_out=10)], 10)
    net.SGD(tuple(t[:5000] for t in training_data), 1, 10, 0.1, validation_data, test_data)
    assert net.best_validation_accuracy > 0.7 and net.test_accuracy > 0.7  # chance is 0.1
    assert f"Corresponding test accuracy of {net.test_accuracy:.2%}" in capsys.readouterr().out


@pytest.mark.parametrize("rung", range(1, 9))
def test_each_rung_of_the_ladder_runs_on_a_tiny_subset(rung, tmp_path, capsys):
    chapter6 = import_experiment("chapter6")
    args = ["--rung", str(rung), "--train-size", "100", "--epochs", "1", "--eval-size", "200", "--out", str(tmp_path)]
    result = chapter6.main(args)
    assert json.loads((tmp_path / f"rung{rung}.json").read_text()) == result
    assert result["train_size"] == (500 if rung >= 5 else 100)  # rungs 5-8: the expanded data
    book = chapter6.RUNGS[rung].book
    assert f"the book's {book:.2f}%" in capsys.readouterr().out
