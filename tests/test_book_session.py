"""The book's own session through ``torch_manualbp.book``: ``mnist_loader``, ``network`` and ``network2`` with the
book's names and signatures, each claim checked against an independent computation written here: the IDX bytes read
with gzip and numpy, and the book's per-example algorithm in numpy (its column vectors, its loop over examples)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import DATA_DIR

from torch_manualbp.book import mnist_loader

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
