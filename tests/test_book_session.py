"""The book's own session through ``torch_manualbp.book``: ``mnist_loader``, ``network`` and ``network2`` with the
book's names and signatures, each claim checked against an independent computation written here: the IDX bytes read
with gzip and numpy, and the book's per-example algorithm in numpy (its column vectors, its loop over examples)."""

from __future__ import annotations

import gzip
import json
import random
import re

import numpy as np
import pytest
from conftest import DATA_DIR

from torch_manualbp.book import mnist_loader, network, network2

# --- the data, read here from the IDX bytes ---------------------------------------------------------------------------


def idx_array(name: str) -> np.ndarray:
    """The IDX file ``data/mnist/<name>.gz`` as a uint8 array shaped as its header says (big-endian int32 magic
    number, whose low byte is the number of dimensions, then one big-endian int32 per dimension)."""
    data = gzip.decompress((DATA_DIR / f"{name}.gz").read_bytes())
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="module")
def idx():
    return {
        "train_x": idx_array("train-images-idx3-ubyte").reshape(60_000, 784),
        "train_y": idx_array("train-labels-idx1-ubyte"),
        "test_x": idx_array("t10k-images-idx3-ubyte").reshape(10_000, 784),
        "test_y": idx_array("t10k-labels-idx1-ubyte"),
    }


@pytest.fixture(scope="module")
def wrapped():
    return mnist_loader.load_data_wrapper()


# --- mnist_loader -----------------------------------------------------------------------------------------------------


def test_load_data_wrapper_returns_the_books_lists_of_column_vectors(wrapped):
    training_data, validation_data, test_data = wrapped
    assert [type(d) for d in wrapped] == [list, list, list]  # indexable, unlike the book's zip objects on Python 3
    assert [len(d) for d in wrapped] == [50_000, 10_000, 10_000]
    x, y = training_data[0]
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((784, 1), np.float64, (10, 1), np.float64)
    for data in (validation_data, test_data):
        x, label = data[-1]
        assert (x.shape, x.dtype, type(label)) == ((784, 1), np.float64, int)


def test_training_pairs_are_the_first_50000_idx_images_and_one_hot_labels(wrapped, idx):
    training_data = wrapped[0]
    xs = np.stack([x[:, 0] for x, _ in training_data])
    ys = np.stack([y[:, 0] for _, y in training_data])
    np.testing.assert_array_equal(xs, idx["train_x"][:50_000] / 255.0)
    np.testing.assert_array_equal(ys, np.eye(10)[idx["train_y"][:50_000]])


def test_validation_is_the_last_10000_training_images_and_test_the_t10k_file(wrapped, idx):
    _, validation_data, test_data = wrapped
    for data, images, labels in [
        (validation_data, idx["train_x"][50_000:], idx["train_y"][50_000:]),
        (test_data, idx["test_x"], idx["test_y"]),
    ]:
        np.testing.assert_array_equal(np.stack([x[:, 0] for x, _ in data]), images / 255.0)
        assert [label for _, label in data] == labels.tolist()


def test_load_data_returns_the_books_arrays_of_rows(idx):
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = mnist_loader.load_data()
    assert [a.shape for a in (train_x, val_x, test_x)] == [(50_000, 784), (10_000, 784), (10_000, 784)]
    assert {a.dtype for a in (train_x, val_x, test_x)} == {np.dtype(np.float64)}
    np.testing.assert_array_equal(val_x, idx["train_x"][50_000:] / 255.0)
    np.testing.assert_array_equal(test_y, idx["test_y"])
    np.testing.assert_array_equal(np.concatenate([train_y, val_y]), idx["train_y"])


def test_the_data_folder_is_the_repositorys_whatever_the_working_directory():
    assert mnist_loader.DATA_DIR.is_absolute() and mnist_loader.DATA_DIR.samefile(DATA_DIR)


def test_a_missing_data_folder_is_one_line_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        mnist_loader.load_data(tmp_path / "nowhere")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message and "data_dir" in message


# --- the book's algorithm, example by example, in numpy (written here, not imported from the package) ---------------


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def book_backprop(weights, biases, x, y, cross_entropy=False):
    """The book's ``backprop``: ``(nabla_b, nabla_w)`` of one example's cost, column vectors, BP1-BP4."""
    activations, zs = [x], []
    for w, b in zip(weights, biases):
        zs.append(w @ activations[-1] + b)
        activations.append(sigmoid(zs[-1]))
    a = activations[-1]
    delta = a - y if cross_entropy else (a - y) * a * (1 - a)  # (BP1)
    nabla_b, nabla_w = [delta], [delta @ activations[-2].T]  # (BP3), (BP4), output layer first
    for l in range(2, len(weights) + 1):
        a_l = activations[-l]
        delta = (weights[-l + 1].T @ delta) * a_l * (1 - a_l)  # (BP2)
        nabla_b.insert(0, delta)
        nabla_w.insert(0, delta @ activations[-l - 1].T)
    return nabla_b, nabla_w


def book_feedforward(weights, biases, a):
    for w, b in zip(weights, biases):
        a = sigmoid(w @ a + b)
    return a


def book_update(weights, biases, mini_batch, eta, lmbda=0.0, n=1, cross_entropy=False):
    """The book's ``update_mini_batch``: the summed per-example gradients, then the (L2) step; new lists."""
    sum_b = [np.zeros(b.shape) for b in biases]
    sum_w = [np.zeros(w.shape) for w in weights]
    for x, y in mini_batch:
        nabla_b, nabla_w = book_backprop(weights, biases, x, y, cross_entropy)
        sum_b = [s + nb for s, nb in zip(sum_b, nabla_b)]
        sum_w = [s + nw for s, nw in zip(sum_w, nabla_w)]
    m = len(mini_batch)
    weights = [(1 - eta * lmbda / n) * w - (eta / m) * s for w, s in zip(weights, sum_w)]
    biases = [b - (eta / m) * s for b, s in zip(biases, sum_b)]
    return weights, biases


def book_epoch(weights, biases, training_data, mini_batch_size, eta, lmbda=0.0, cross_entropy=False):
    """One epoch of the book's SGD: ``random.shuffle`` of the list in place, then one step per mini-batch."""
    random.shuffle(training_data)
    n = len(training_data)
    for k in range(0, n, mini_batch_size):
        mini_batch = training_data[k : k + mini_batch_size]
        weights, biases = book_update(weights, biases, mini_batch, eta, lmbda, n, cross_entropy)
    return weights, biases


def book_correct(weights, biases, data, one_hot=False):
    return sum(
        int(np.argmax(book_feedforward(weights, biases, x)) == (np.argmax(y) if one_hot else y)) for x, y in data
    )


def book_total_cost(weights, biases, data, lmbda, one_hot, cross_entropy):
    """The book's ``total_cost``: the mean of each example's cost (its ``fn(a, y)``) plus 0.5 (λ/len(data)) Σ‖w‖²."""
    cost = 0.0
    for x, y in data:
        a = book_feedforward(weights, biases, x)
        y = y if one_hot else np.eye(10)[[y]].T
        c_x = np.sum(-y * np.log(a) - (1 - y) * np.log(1 - a)) if cross_entropy else 0.5 * np.sum((a - y) ** 2)
        cost += c_x / len(data)
    return cost + 0.5 * (lmbda / len(data)) * sum(np.sum(w**2) for w in weights)


def assert_lists_close(found, expected, atol):
    assert len(found) == len(expected)
    for f, e in zip(found, expected):
        assert f.shape == e.shape
        np.testing.assert_allclose(f, e, rtol=0, atol=atol)


def small_pairs(n, sizes, seed, labels=False):
    """``n`` random pairs for a network of ``sizes``: inputs in [0, 1), one-hot columns or int labels."""
    rng = np.random.default_rng(seed)
    digits = rng.integers(0, sizes[-1], n)
    xs = rng.random((n, sizes[0], 1))
    if labels:
        return [(x, int(d)) for x, d in zip(xs, digits)]
    return [(x, np.eye(sizes[-1])[[d]].T) for x, d in zip(xs, digits)]


# --- network ----------------------------------------------------------------------------------------------------------


def test_network_draws_the_books_parameters_so_np_random_seed_reproduces_them():
    np.random.seed(7)
    net = network.Network([6, 5, 3])
    np.random.seed(7)
    biases = [np.random.randn(5, 1), np.random.randn(3, 1)]  # the book's order: the biases, then the weights
    weights = [np.random.randn(5, 6), np.random.randn(3, 5)]
    assert (net.num_layers, net.sizes) == (3, [6, 5, 3])
    assert_lists_close(net.biases, biases, atol=0)
    assert_lists_close(net.weights, weights, atol=0)


def test_network_backprop_of_one_example_matches_the_books_per_example_numpy():
    np.random.seed(0)
    net = network.Network([6, 5, 4, 3])
    for x, y in small_pairs(3, net.sizes, seed=1):
        nabla_b, nabla_w = net.backprop(x, y)
        expected_b, expected_w = book_backprop(net.weights, net.biases, x, y)
        assert_lists_close(nabla_b, expected_b, atol=1e-10)
        assert_lists_close(nabla_w, expected_w, atol=1e-10)


def test_network_feedforward_and_cost_derivative_are_the_books():
    np.random.seed(0)
    net = network.Network([6, 5, 3])
    x, y = small_pairs(1, net.sizes, seed=2)[0]
    a = net.feedforward(x)
    np.testing.assert_allclose(a, book_feedforward(net.weights, net.biases, x), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(net.cost_derivative(a, y), a - y)


def test_network_update_mini_batch_is_the_books_step():
    np.random.seed(0)
    net = network.Network([6, 5, 3])
    mini_batch = small_pairs(7, net.sizes, seed=3)
    weights, biases = book_update(net.weights, net.biases, mini_batch, eta=3.0)
    net.update_mini_batch(mini_batch, 3.0)
    assert_lists_close(net.weights, weights, atol=1e-10)
    assert_lists_close(net.biases, biases, atol=1e-10)


def test_network_sgd_makes_the_books_updates_from_the_same_weights_and_random_seed(wrapped):
    # real MNIST columns at the book's settings; 205 examples: the last mini-batch of each epoch has 5
    training_data = list(wrapped[0][:205])
    np.random.seed(0)
    net = network.Network([784, 30, 10])
    weights, biases = net.weights, net.biases
    book_data = list(training_data)
    random.seed(4)
    net.SGD(training_data, 2, 10, 3.0)
    random.seed(4)
    for _ in range(2):
        weights, biases = book_epoch(weights, biases, book_data, 10, 3.0)
    assert [id(pair) for pair in training_data] == [id(pair) for pair in book_data]  # shuffled in place, alike
    assert_lists_close(net.weights, weights, atol=1e-10)
    assert_lists_close(net.biases, biases, atol=1e-10)


def test_network_sgd_prints_the_books_lines_with_the_counts_evaluate_gives(wrapped, capsys):
    training_data, test_data = list(wrapped[0][:300]), wrapped[2][:500]
    np.random.seed(1)
    random.seed(1)
    net = network.Network([784, 30, 10])
    net.SGD(training_data, 1, 10, 3.0, test_data=test_data)
    (line,) = capsys.readouterr().out.splitlines()
    assert line == f"Epoch 0: {net.evaluate(test_data)} / 500"
    assert net.evaluate(test_data) == book_correct(net.weights, net.biases, test_data)
    net.SGD(training_data, 2, 10, 3.0)
    assert capsys.readouterr().out.splitlines() == ["Epoch 0 complete", "Epoch 1 complete"]


def test_network_evaluate_counts_as_the_books_per_example_argmax(wrapped):
    np.random.seed(2)
    net = network.Network([784, 30, 10])
    test_data = wrapped[2][:2500]  # more than one chunk of rows
    assert net.evaluate(test_data) == book_correct(net.weights, net.biases, test_data)


def test_one_epoch_of_the_books_chapter1_session_prints_a_count_in_the_books_range(wrapped, capsys):
    # The book prints "Epoch 0: 9129 / 10000" for [784, 30, 10], η = 3.0, mini-batches of 10; the epoch-0 count varies
    # by a few hundred with the seed (N(0, 1) weights), and a network that learned nothing gets about 1,000. 8,500 is
    # a chapter-1 network that has learned, whatever the seed; this seed's count is what the README shows.
    training_data, _, test_data = wrapped
    np.random.seed(0)
    random.seed(0)
    net = network.Network([784, 30, 10])
    net.SGD(list(training_data), 1, 10, 3.0, test_data=test_data)
    (line,) = capsys.readouterr().out.splitlines()
    count = int(re.fullmatch(r"Epoch 0: (\d+) / 10000", line).group(1))
    assert count >= 8500
    assert count == book_correct(net.weights, net.biases, test_data)


@pytest.mark.parametrize(
    ("sizes", "error"),
    [
        ("784", TypeError),
        ([784, 30.0, 10], TypeError),
        ([784, True], TypeError),
        ([784, 0, 10], ValueError),
        ([784], ValueError),
    ],
)
def test_network_bad_sizes_are_one_line_naming_sizes(sizes, error):
    for module in (network, network2):
        with pytest.raises(error, match=r"^sizes must [^\n]*$"):
            module.Network(sizes)


def test_network_data_of_the_wrong_shape_is_one_line_naming_the_argument():
    net = network.Network([6, 5, 3])
    good = small_pairs(4, net.sizes, seed=0)
    weights = [w.copy() for w in net.weights]
    cases = [
        (lambda: net.SGD([(x[:, 0], y) for x, y in good], 1, 2, 3.0), ValueError, "training_data"),
        (lambda: net.SGD([(x, y[:2]) for x, y in good], 1, 2, 3.0), ValueError, "training_data"),
        (lambda: net.SGD([x for x, _ in good], 1, 2, 3.0), TypeError, "training_data"),
        (lambda: net.SGD(good, 1, 2, 3.0, test_data=good), ValueError, "test_data"),
        (lambda: net.SGD(good, 1, 0, 3.0), ValueError, "mini_batch_size"),
        (lambda: net.SGD(good, 1, 2, -1.0), ValueError, "eta"),
        (lambda: net.evaluate(good), ValueError, "test_data"),
        (lambda: net.backprop(good[0][0].T, good[0][1]), ValueError, "x"),
        (lambda: net.feedforward(np.ones(6)), ValueError, "a"),
    ]
    for call, error, name in cases:
        with pytest.raises(error) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(name) and "\n" not in message, message
    assert_lists_close(net.weights, weights, atol=0)  # nothing stepped


# --- network2 ---------------------------------------------------------------------------------------------------------


def test_network2_default_and_large_initializers_are_the_books_draws():
    np.random.seed(5)
    net = network2.Network([6, 5, 3])
    np.random.seed(5)
    biases = [np.random.randn(5, 1), np.random.randn(3, 1)]
    weights = [np.random.randn(5, 6) / np.sqrt(6), np.random.randn(3, 5) / np.sqrt(5)]
    assert net.cost is network2.CrossEntropyCost
    assert_lists_close(net.biases, biases, atol=0)
    assert_lists_close(net.weights, weights, atol=0)
    np.random.seed(5)
    net.large_weight_initializer()
    np.random.seed(5)
    biases = [np.random.randn(5, 1), np.random.randn(3, 1)]
    assert_lists_close(net.biases, biases, atol=0)
    assert_lists_close(net.weights, [np.random.randn(5, 6), np.random.randn(3, 5)], atol=0)


def test_network2_cost_classes_are_the_books_fn_and_delta():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(4, 1)), np.eye(4)[[2]].T
    a = sigmoid(z)
    assert network2.QuadraticCost.fn(a, y) == pytest.approx(0.5 * np.linalg.norm(a - y) ** 2, rel=1e-15)
    np.testing.assert_allclose(network2.QuadraticCost.delta(z, a, y), (a - y) * a * (1 - a), rtol=1e-15)
    expected = -np.sum(y * np.log(a) + (1 - y) * np.log(1 - a))
    assert network2.CrossEntropyCost.fn(a, y) == pytest.approx(expected, rel=1e-15)
    np.testing.assert_array_equal(network2.CrossEntropyCost.delta(z, a, y), a - y)
    assert network2.CrossEntropyCost.fn(np.array([[1.0]]), np.array([[1.0]])) == 0.0  # the book's nan_to_num


@pytest.mark.parametrize("cost", ["CrossEntropyCost", "QuadraticCost"])
def test_network2_backprop_of_one_example_matches_the_books_per_example_numpy(cost):
    np.random.seed(0)
    net = network2.Network([6, 5, 4, 3], cost=getattr(network2, cost))
    for x, y in small_pairs(3, net.sizes, seed=1):
        nabla_b, nabla_w = net.backprop(x, y)
        expected_b, expected_w = book_backprop(net.weights, net.biases, x, y, cost == "CrossEntropyCost")
        assert_lists_close(nabla_b, expected_b, atol=1e-10)
        assert_lists_close(nabla_w, expected_w, atol=1e-10)


def test_network2_update_mini_batch_is_the_books_l2_step():
    np.random.seed(0)
    net = network2.Network([6, 5, 3])
    mini_batch = small_pairs(7, net.sizes, seed=3)
    weights, biases = book_update(net.weights, net.biases, mini_batch, 0.5, 5.0, 100, cross_entropy=True)
    net.update_mini_batch(mini_batch, 0.5, 5.0, 100)
    assert_lists_close(net.weights, weights, atol=1e-10)
    assert_lists_close(net.biases, biases, atol=1e-10)


@pytest.mark.parametrize("cost", ["CrossEntropyCost", "QuadraticCost"])
def test_network2_sgd_updates_and_its_four_monitors_match_the_books_per_example_numpy(wrapped, capsys, cost):
    cross_entropy = cost == "CrossEntropyCost"
    training_data, evaluation_data = list(wrapped[0][:205]), wrapped[1][:100]
    lmbda, eta, epochs = 5.0, 0.5, 2
    np.random.seed(0)
    net = network2.Network([784, 30, 10], cost=getattr(network2, cost))
    weights, biases = net.weights, net.biases
    book_data = list(training_data)
    random.seed(6)
    monitors = net.SGD(
        training_data,
        epochs,
        10,
        eta,
        lmbda=lmbda,
        evaluation_data=evaluation_data,
        monitor_evaluation_cost=True,
        monitor_evaluation_accuracy=True,
        monitor_training_cost=True,
        monitor_training_accuracy=True,
    )
    random.seed(6)
    expected = [], [], [], []
    for _ in range(epochs):
        weights, biases = book_epoch(weights, biases, book_data, 10, eta, lmbda, cross_entropy)
        expected[0].append(book_total_cost(weights, biases, evaluation_data, lmbda, False, cross_entropy))
        expected[1].append(book_correct(weights, biases, evaluation_data))
        expected[2].append(book_total_cost(weights, biases, book_data, lmbda, True, cross_entropy))
        expected[3].append(book_correct(weights, biases, book_data, one_hot=True))
    assert_lists_close(net.weights, weights, atol=1e-10)
    assert_lists_close(net.biases, biases, atol=1e-10)
    evaluation_cost, evaluation_accuracy, training_cost, training_accuracy = monitors
    np.testing.assert_allclose(evaluation_cost, expected[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(training_cost, expected[2], rtol=0, atol=1e-9)
    assert (evaluation_accuracy, training_accuracy) == (expected[1], expected[3])
    printed = capsys.readouterr().out.split("\n\n")[:epochs]  # one paragraph an epoch, as the book prints them
    for j, paragraph in enumerate(printed):
        assert paragraph.strip("\n").splitlines() == [
            f"Epoch {j} training complete",
            f"Cost on training data: {training_cost[j]}",
            f"Accuracy on training data: {training_accuracy[j]} / 205",
            f"Cost on evaluation data: {evaluation_cost[j]}",
            f"Accuracy on evaluation data: {evaluation_accuracy[j]} / 100",
        ]


def test_network2_total_cost_adds_the_books_lambda_term_over_len_data(wrapped):
    np.random.seed(3)
    net = network2.Network([784, 30, 10])
    training_data, validation_data = wrapped[0][:2100], wrapped[1][:300]  # more than one chunk of rows
    for data, convert in ((training_data, False), (validation_data, True)):
        found = net.total_cost(data, 5.0, convert=convert)
        expected = book_total_cost(net.weights, net.biases, data, 5.0, not convert, cross_entropy=True)
        assert found == pytest.approx(expected, rel=0, abs=1e-9)
        l2_term = 0.5 * (5.0 / len(data)) * sum(np.sum(w**2) for w in net.weights)
        assert found - net.total_cost(data, 0.0, convert=convert) == pytest.approx(l2_term, rel=1e-12)


def test_network2_early_stopping_stops_after_n_epochs_without_a_better_accuracy():
    np.random.seed(0)
    net = network2.Network([6, 5, 3])
    evaluation_data = small_pairs(30, net.sizes, seed=8, labels=True)
    assert book_correct(net.weights, net.biases, evaluation_data) > 0  # the first epoch is the best so far
    # a step too small to change any count: the accuracy of every epoch is the first's, so the book stops after 1 + n
    result = net.SGD(
        small_pairs(8, net.sizes, seed=9),
        10,
        4,
        1e-12,
        evaluation_data=evaluation_data,
        monitor_evaluation_accuracy=True,
        early_stopping_n=2,
    )
    assert len(result[1]) == 3


def test_network2_save_then_load_gives_the_same_network_in_the_books_json(tmp_path):
    np.random.seed(0)
    net = network2.Network([6, 5, 3], cost=network2.QuadraticCost)
    path = tmp_path / "net.json"
    net.save(path)
    data = json.loads(path.read_text())
    assert sorted(data) == ["biases", "cost", "sizes", "weights"] and data["cost"] == "QuadraticCost"
    assert data["weights"] == [w.tolist() for w in net.weights] and data["sizes"] == [6, 5, 3]
    loaded = network2.load(path)
    assert (loaded.sizes, loaded.cost) == (net.sizes, network2.QuadraticCost)
    assert_lists_close(loaded.weights, net.weights, atol=0)
    assert_lists_close(loaded.biases, net.biases, atol=0)
    x = small_pairs(1, net.sizes, seed=0)[0][0]
    np.testing.assert_array_equal(loaded.feedforward(x), net.feedforward(x))


def test_network2_bad_cost_and_monitor_without_data_are_one_line_naming_them():
    with pytest.raises(TypeError, match=r"^cost must [^\n]*$"):
        network2.Network([6, 5, 3], cost="cross_entropy")
    net = network2.Network([6, 5, 3])
    with pytest.raises(ValueError, match=r"^evaluation_data must [^\n]*$"):
        net.SGD(small_pairs(4, net.sizes, seed=0), 1, 2, 0.5, monitor_evaluation_accuracy=True)
    with pytest.raises(ValueError, match=r"^lmbda must [^\n]*$"):
        net.SGD(small_pairs(4, net.sizes, seed=0), 1, 2, 0.5, lmbda=-1.0)
    with pytest.raises(ValueError, match=r"^data must [^\n]*$"):
        net.accuracy(small_pairs(4, net.sizes, seed=0))  # one-hot columns need convert=True


def test_network2_load_of_an_unknown_cost_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"sizes": [2, 1], "weights": [[[0.0, 0.0]]], "biases": [[[0.0]]], "cost": "Softmax"}))
    with pytest.raises(ValueError, match=r"^[^\n]*net\.json: cost must [^\n]*'Softmax'$"):
        network2.load(path)


def test_the_books_zip_objects_are_taken_as_lists():
    np.random.seed(0)
    net = network.Network([6, 5, 3])
    labelled = small_pairs(9, net.sizes, seed=4, labels=True)
    x, labels = [x for x, _ in labelled], [label for _, label in labelled]
    assert net.evaluate(zip(x, labels)) == book_correct(net.weights, net.biases, labelled)
