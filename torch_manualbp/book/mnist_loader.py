r"""The book's ``mnist_loader``: MNIST as ``load_data()`` and ``load_data_wrapper()`` return it, read from the
shipped IDX files (``data/mnist``) by :func:`torch_manualbp.mnist.load_mnist`, which checks their SHA-256.

The book unpickles ``mnist.pkl.gz``, which breaks on Python 3 (the pickle's encoding), and returns ``zip`` objects,
which Python 3 does not index. Here the split is the book's, the first 50,000 training images for training and the
last 10,000 for validation, the test file for testing, and the wrapper returns lists. The pixels are float64,
pixel / 255 (the book's pickle holds float32).

To run::

    >>> from torch_manualbp.book import mnist_loader
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
    >>> x, y = training_data[0]; x.shape, y.shape, validation_data[0][1]
    ((784, 1), (10, 1), 3)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import torch_manualbp
from torch_manualbp.mnist import MNIST_CLASSES, MNIST_INPUTS, load_mnist

__all__ = ["DATA_DIR", "TRAINING", "load_data", "load_data_wrapper", "vectorized_result"]

#: The repository's ``data/mnist``, found through the package, so that the session runs from any working directory.
DATA_DIR = Path(torch_manualbp.__file__).resolve().parents[1] / "data" / "mnist"
#: The book's split of MNIST's 60,000 training images: the first 50,000 to train on, the last 10,000 to validate.
TRAINING = 50_000


def read_mnist(data_dir: str | os.PathLike | None, call: str) -> dict:
    """:func:`~torch_manualbp.mnist.load_mnist` of ``data_dir`` (``None``: :data:`DATA_DIR`); a missing file is one
    line that also says to pass ``call`` the folder that holds the files."""
    try:
        return load_mnist(DATA_DIR if data_dir is None else Path(data_dir))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error} Or pass {call} the folder that holds them.") from None


def load_data(data_dir: str | os.PathLike | None = None) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    r"""``(training_data, validation_data, test_data)``, each a pair ``(images, labels)`` of numpy arrays.

    Args:
        data_dir: the folder of the four MNIST IDX files; ``None``: the repository's ``data/mnist`` (:data:`DATA_DIR`).

    Shape:
        - images: :math:`(n, 784)` float64, the pixels scaled to [0, 1] (pixel / 255); labels: :math:`(n)` int64.
        - n is 50,000, 10,000 and 10,000.

    Raises:
        FileNotFoundError: a file is missing (one line naming it and the folder searched).
        ValueError: a file is truncated or corrupted.
    """
    mnist = read_mnist(data_dir, "load_data(data_dir=...)")
    train_x = mnist["train_images"].reshape(-1, MNIST_INPUTS).numpy() / 255.0  # uint8 / float: float64
    train_y = mnist["train_labels"].numpy()
    test_x = mnist["test_images"].reshape(-1, MNIST_INPUTS).numpy() / 255.0
    test_y = mnist["test_labels"].numpy()
    return (train_x[:TRAINING], train_y[:TRAINING]), (train_x[TRAINING:], train_y[TRAINING:]), (test_x, test_y)


def load_data_wrapper(data_dir: str | os.PathLike | None = None) -> tuple[list, list, list]:
    r"""The data as the book's ``network.py`` takes it: lists of pairs, each image a column vector.

    Args:
        data_dir: as :func:`load_data`.

    Returns:
        ``training_data``, 50,000 pairs ``(x, y)`` with ``y`` the digit one-hot (:func:`vectorized_result`);
        ``validation_data`` and ``test_data``, 10,000 pairs ``(x, label)`` with ``label`` an ``int``.

    Shape:
        - x: :math:`(784, 1)` float64, a view of :func:`load_data`'s row; y: :math:`(10, 1)` float64.
    """
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = load_data(data_dir)
    training_data = [(x.reshape(MNIST_INPUTS, 1), vectorized_result(y)) for x, y in zip(train_x, train_y)]
    validation_data = [(x.reshape(MNIST_INPUTS, 1), int(y)) for x, y in zip(val_x, val_y)]
    test_data = [(x.reshape(MNIST_INPUTS, 1), int(y)) for x, y in zip(test_x, test_y)]
    return training_data, validation_data, test_data


def vectorized_result(j: int) -> np.ndarray:
    r"""The desired output for digit ``j``: a :math:`(10, 1)` column, 1.0 in row ``j`` and 0.0 elsewhere."""
    e = np.zeros((MNIST_CLASSES, 1))
    e[j] = 1.0
    return e
