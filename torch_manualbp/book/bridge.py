r"""Between the book's numpy lists and the package: what ``network`` and ``network2`` share.

The book keeps its parameters as lists of numpy arrays (``weights[l]`` of shape ``(sizes[l+1], sizes[l])``,
``biases[l]`` a column ``(sizes[l+1], 1)``) and its data as lists of pairs of column vectors. The package's
:class:`~torch_manualbp.Network` holds a mini-batch as rows and a bias as a vector. Here, one conversion each way:
the pairs checked once (:func:`check_pairs`) and copied, a chunk of rows at a time, into float64 buffers
(:func:`row_chunks`), and the numpy lists copied into a float64 :class:`~torch_manualbp.Network`
(:class:`PackageNetwork`), whose parameters are read back after training. Every check says in one line which argument
is wrong.

A chunk at a time, because a whole training set of rows would be 314 MB copied for each epoch's order, where the
package's engine takes a block of a few thousand rows as fast as the whole (one call of its native loop per block).
"""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Integral

import numpy as np
import torch

from torch_manualbp.network import Network
from torch_manualbp.sgd import MiniBatchSGD

__all__ = [
    "CHUNK_ROWS",
    "PackageNetwork",
    "check_example",
    "check_mini_batch_size",
    "check_pairs",
    "check_sizes",
    "row_chunks",
]

#: About how many examples are copied into rows at a time (rounded to whole mini-batches when training): 2,000 rows of
#: 784 float64 pixels are 12.5 MB, a buffer allocated once per call.
CHUNK_ROWS = 2000


def check_sizes(sizes) -> list[int]:
    r"""``sizes`` as a list of ints, or a ``TypeError``/``ValueError`` naming it unless it is a list (or tuple) of at
    least two ints >= 1, input layer first, as ``Network([784, 30, 10])``."""
    if not isinstance(sizes, (list, tuple)) or not all(
        isinstance(s, Integral) and not isinstance(s, bool) for s in sizes
    ):
        raise TypeError(f"sizes must be a list of ints, one per layer, e.g. [784, 30, 10]; got {sizes!r}")
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(
            f"sizes must list at least two layers of at least one neuron each, e.g. [784, 30, 10]; got {sizes!r}"
        )
    return [int(s) for s in sizes]


def check_mini_batch_size(mini_batch_size) -> int:
    r"""``mini_batch_size``, or a ``TypeError``/``ValueError`` naming it unless it is an int >= 1."""
    if not isinstance(mini_batch_size, Integral) or isinstance(mini_batch_size, bool):
        raise TypeError(f"mini_batch_size must be an int, got {type(mini_batch_size).__name__}")
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be at least 1 example, got {mini_batch_size}")
    return int(mini_batch_size)


def _found(value) -> str:
    """What ``value`` is, in a few words for a one-line message: a numpy array's shape, else its type."""
    return f"an array of shape {value.shape}" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"


def _is_column(value, rows: int) -> bool:
    return isinstance(value, np.ndarray) and value.shape == (rows, 1)


def _is_label(value, classes: int) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and 0 <= value < classes


def check_example(x, y, n_in: int, n_out: int) -> None:
    r"""A ``ValueError`` naming ``x`` or ``y`` unless they are numpy columns of shapes ``(n_in, 1)`` and
    ``(n_out, 1)``: one example, as the book's ``backprop(x, y)`` takes it."""
    for name, value, rows in (("x", x, n_in), ("y", y, n_out)):
        if not _is_column(value, rows):
            raise ValueError(f"{name} must be a numpy column of shape ({rows}, 1), got {_found(value)}")


def check_pairs(data, name: str, n_in: int, n_out: int, labels: bool) -> list:
    r"""``data`` as a list of pairs ``(x, y)``, or a ``TypeError``/``ValueError`` naming ``name`` unless it is a
    non-empty list (or other iterable, a ``zip`` say) of pairs whose ``x`` is a numpy column of shape ``(n_in, 1)``
    and whose ``y`` is an int label in ``[0, n_out)`` (``labels``) or a numpy column of shape ``(n_out, 1)``."""
    if isinstance(data, np.ndarray) or not hasattr(data, "__iter__"):
        raise TypeError(f"{name} must be a list of (x, y) pairs, got {_found(data)}")
    data = data if isinstance(data, list) else list(data)
    if not data:
        raise ValueError(f"{name} must be a non-empty list of (x, y) pairs, got none")
    for pair in data:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name} must be a list of (x, y) pairs, got an item that is {_found(pair)}")
        x, y = pair
        if not _is_column(x, n_in):
            raise ValueError(f"{name} must hold x as numpy columns of shape ({n_in}, 1), got {_found(x)}")
        if labels and not _is_label(y, n_out):
            found = repr(y) if isinstance(y, Integral) else _found(y)
            raise ValueError(f"{name} must hold y as int labels in [0, {n_out}), got {found}")
        if not labels and not _is_column(y, n_out):
            raise ValueError(f"{name} must hold y as numpy columns of shape ({n_out}, 1), got {_found(y)}")
    return data


def row_chunks(data: list, labels: bool, rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    r"""The pairs of ``data`` (checked by :func:`check_pairs`), in order, ``rows`` at a time, as ``(x, y)`` with one
    example per row: ``x`` float64 :math:`(m, n_{in})`, ``y`` int64 labels :math:`(m)` (``labels``) or float64
    targets :math:`(m, n_{out})`. The arrays are buffers reused by the next chunk."""
    x0, y0 = data[0]
    x_buffer = np.empty((min(rows, len(data)), x0.shape[0]))
    y_buffer = np.empty(len(x_buffer), dtype=np.int64) if labels else np.empty((len(x_buffer), y0.shape[0]))
    for start in range(0, len(data), rows):
        chunk = data[start : start + rows]
        x, y = x_buffer[: len(chunk)], y_buffer[: len(chunk)]
        for i, (x_i, y_i) in enumerate(chunk):
            x[i] = x_i[:, 0]
            y[i] = y_i if labels else y_i[:, 0]
        yield x, y


class PackageNetwork:
    r"""A float64 :class:`~torch_manualbp.Network` of ``sizes`` and ``cost`` that a book network's numpy lists are
    copied into (:meth:`load`) before the package computes with them, and read back from (:meth:`weights_and_biases`)
    after it trained them.

    Args:
        sizes: the layers, input first (checked by :func:`check_sizes`).
        cost: the package's cost name, ``"quadratic"`` or ``"cross_entropy"``.
    """

    def __init__(self, sizes: list[int], cost: str) -> None:
        # on the meta device, then allocated without drawing: torch's global generator is left as it was
        self.network = Network(sizes, cost=cost, device="meta", dtype=torch.float64).to_empty(device="cpu")

    @torch.no_grad()
    def load(self, weights: list[np.ndarray], biases: list[np.ndarray]) -> PackageNetwork:
        r"""Copy the book's ``weights`` and ``biases`` into the package's network; a ``ValueError`` naming the list
        unless each array has the book's shape for its layer. Returns itself."""
        layers = self.network.layers
        for name, arrays in (("weights", weights), ("biases", biases)):
            if not isinstance(arrays, (list, tuple)) or len(arrays) != len(layers):
                raise ValueError(f"{name} must be a list of {len(layers)} numpy arrays, one per layer")
        for l, (layer, w, b) in enumerate(zip(layers, weights, biases)):
            shapes = {"weights": tuple(layer.weight.shape), "biases": (layer.weight.shape[0], 1)}
            for name, array in (("weights", w), ("biases", b)):
                if not isinstance(array, np.ndarray) or array.shape != shapes[name]:
                    found = array.shape if isinstance(array, np.ndarray) else type(array).__name__
                    raise ValueError(f"{name}[{l}] must be a numpy array of shape {shapes[name]}, got {found}")
            layer.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float64)))
            layer.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float64)[:, 0]))
        return self

    def weights_and_biases(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        r"""The package's parameters as the book's lists: new numpy arrays, weights ``(out, in)``, biases columns
        ``(out, 1)``."""
        weights, biases = self.network.weights_and_biases()
        return [w.detach().numpy().copy() for w in weights], [b.detach().numpy()[:, None].copy() for b in biases]

    @torch.no_grad()
    def outputs(self, x: np.ndarray) -> np.ndarray:
        r"""The output activations :math:`a^L` of the rows of ``x`` by the package's feedforward, :math:`(n, out)`."""
        return self.network(torch.from_numpy(x)).numpy()

    def cost_sum(self, x: np.ndarray, y: np.ndarray) -> float:
        r""":math:`\sum_x C_x` over the rows ``x`` and their float targets ``y``, by the package's cost."""
        return float(self.network.output_and_cost(torch.from_numpy(x), torch.from_numpy(y))[1]) * len(x)

    def correct(self, x: np.ndarray, labels: np.ndarray) -> int:
        r"""How many rows of ``x`` get their label as the most active output neuron (the first, in a tie)."""
        return int((self.outputs(x).argmax(axis=1) == labels).sum())

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        r"""``(nabla_b, nabla_w)`` of the mean cost of the rows ``x`` with float targets ``y``, by the package's
        ``Network.backprop`` (BP1-BP4), as the book's lists (bias gradients as columns)."""
        result = self.network.backprop(torch.from_numpy(x), torch.from_numpy(y))
        return [nb.numpy()[:, None].copy() for nb in result.nabla_b], [nw.numpy().copy() for nw in result.nabla_w]

    def engine(self, mini_batch_size: int, lmbda: float = 0.0, n: int | None = None) -> MiniBatchSGD:
        r"""The package's engine over this network: the book's SGD steps, ``mini_batch_size`` examples a step, with
        ``lmbda`` the L2 step over a training set of ``n`` (its fastest backend: the native loop where it builds)."""
        return MiniBatchSGD(self.network, mini_batch_size, lmbda=lmbda, n=n)

    def train(self, engine: MiniBatchSGD, data: list, eta: float) -> None:
        r"""The book's SGD steps over the checked pairs ``data`` in their order, by ``engine``, a chunk of whole
        mini-batches at a time (the last mini-batch possibly smaller, as the book's)."""
        rows = max(1, CHUNK_ROWS // engine.mini_batch_size) * engine.mini_batch_size
        for x, y in row_chunks(data, labels=False, rows=rows):
            engine.run(torch.from_numpy(x), torch.from_numpy(y), eta)
            engine.forget()  # the engine keeps each block for a rewind, which the book has no use for
