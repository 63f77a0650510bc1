"""Chapter 3's artificially expanded training data, against the book's own recipe (np.roll, then the wrapped-around
row or column set to zero) applied with numpy to the real MNIST files in data/mnist."""

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, book_shift

from torch_manualbp.mnist import expand_by_shifts, load_mnist


@pytest.fixture(scope="module")
def training_split():
    mnist = load_mnist(DATA_DIR)
    return mnist["train_images"][:50_000], mnist["train_labels"][:50_000]  # the book's 50,000 training images


def test_the_books_50000_images_become_250000_each_followed_by_its_four_one_pixel_shifts(training_split):
    images, labels = training_split
    expanded, expanded_labels = expand_by_shifts(images, labels)
    assert expanded.shape == (250_000, 28, 28) and expanded.dtype == torch.uint8
    assert expanded.numel() * expanded.element_size() == 196_000_000  # the memory its docstring states
    by_image = expanded.numpy().reshape(50_000, 5, 28, 28)
    original = images.numpy()
    np.testing.assert_array_equal(by_image[:, 0], original)
    # the book's order: (1, 0) down, (−1, 0) up, (1, 1) right, (−1, 1) left
    for k, (d, axis) in enumerate([(1, 0), (-1, 0), (1, 1), (-1, 1)], start=1):
        np.testing.assert_array_equal(by_image[:, k], book_shift(original, d, axis))
    np.testing.assert_array_equal(expanded_labels.numpy(), np.repeat(labels.numpy(), 5))


def test_expansion_is_deterministic_and_leaves_its_input_unchanged(training_split):
    images, labels = training_split[0][:100], training_split[1][:100]
    before = images.clone()
    first, second = expand_by_shifts(images, labels), expand_by_shifts(images, labels)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(images, before)
    # a digit touching no border keeps its ink: each shift moves it, none loses a pixel
    inner = (images[:, 0, :].sum(1) == 0) & (images[:, -1, :].sum(1) == 0)
    inner &= (images[:, :, 0].sum(1) == 0) & (images[:, :, -1].sum(1) == 0)
    ink = first[0].reshape(100, 5, 784).long().sum(-1)
    assert inner.any() and (ink[inner] == ink[inner][:, :1]).all()


@pytest.mark.parametrize(
    "images, labels, error, words",
    [
        (np.zeros((2, 28, 28)), torch.zeros(2), TypeError, "images and labels must be torch.Tensors"),
        (torch.zeros(2, 784), torch.zeros(2), ValueError, "images must have shape (N, H, W)"),
        (torch.zeros(2, 28, 28), torch.zeros(3), ValueError, "labels must have shape (2,)"),
    ],
)
def test_bad_arguments_raise_errors_naming_them(images, labels, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        expand_by_shifts(images, labels)
