r"""Loading the MNIST digits from their original IDX files, without Lightning or torchvision.

The four files (``train-images-idx3-ubyte`` and friends) are found in a directory, either flat or in the
``MNIST/raw`` layout that ``torchvision.datasets.MNIST`` downloads into, gzip-compressed (``.gz``) or not.
Every file's IDX bytes (after gunzip) are checked against the SHA-256 sums below, so a truncated copy or a
different data set is reported instead of silently training on it. Loading never writes to disk;
:func:`write_torchvision_layout` writes, when asked, the ``MNIST/raw`` folder that ``torchvision.datasets.MNIST``
reads.

Example::

    >>> from torch_manualbp.mnist import load_mnist
    >>> mnist = load_mnist("data/mnist")
    >>> mnist["train_images"].shape, mnist["train_labels"][0].item()
    (torch.Size([60000, 28, 28]), 5)
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "MNIST_SIZE",
    "MNIST_INPUTS",
    "MNIST_CLASSES",
    "MNIST_FILES",
    "MNIST_SHA256",
    "IDX_IMAGES_MAGIC",
    "find_mnist_files",
    "load_mnist",
    "expand_by_shifts",
    "parse_idx_images",
    "read_idx",
    "write_torchvision_layout",
]

#: MNIST images are 28 x 28 = 784 pixels, one per input neuron, and there are 10 digits, one per output neuron.
MNIST_SIZE = 28
MNIST_INPUTS = MNIST_SIZE * MNIST_SIZE
MNIST_CLASSES = 10

#: Key in the dict returned by :func:`load_mnist` -> file name (without ``.gz``), as torchvision names them.
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: SHA-256 of each file's IDX bytes, i.e. after gunzip (the same values as ``data/mnist/SHA256SUMS``).
#: Hashing the uncompressed bytes lets a re-compressed or unpacked copy pass while any change in content fails.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# IDX magic numbers: 0x0000 08 0d -> unsigned bytes (0x08) with d dimensions; images have 3, labels 1.
#: The IDX magic number of unsigned-byte images with three dimensions (N, rows, columns), a big-endian int32.
IDX_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def _candidates(data_dir: Path, name: str) -> list[Path]:
    r"""The paths where ``name`` may live under ``data_dir``, in the order they are tried.

    The flat layout comes first (it is what the project ships); an uncompressed file is preferred to its
    ``.gz`` because it skips the gunzip.
    """
    folders = [data_dir, data_dir / "MNIST" / "raw"]
    return [folder / file for folder in folders for file in (name, name + ".gz")]


def find_mnist_files(data_dir: str | os.PathLike) -> dict[str, Path]:
    r"""Locate the four MNIST files in ``data_dir``.

    Args:
        data_dir: a directory holding the files flat or in torchvision's ``MNIST/raw`` layout,
            each either gzip-compressed (``.gz``) or raw.

    Returns:
        ``{"train_images": path, "train_labels": path, "test_images": path, "test_labels": path}``.

    Raises:
        FileNotFoundError: a file is in none of the places searched; the message names it and says what to do.
    """
    data_dir = Path(data_dir)
    found = {}
    for key, name in MNIST_FILES.items():
        paths = [p for p in _candidates(data_dir, name) if p.is_file()]
        if not paths:
            raise FileNotFoundError(_missing_message(data_dir, name))
        found[key] = paths[0]
    return found


def _missing_message(data_dir: Path, name: str) -> str:
    r"""What a user needs to read when ``name`` is not in ``data_dir``."""
    return (
        f"MNIST file {name!r} (or {name + '.gz'!r}) not found in {str(data_dir.resolve())!r}"
        f" (searched the directory itself and its 'MNIST/raw' subdirectory)."
        f" Copy the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"
        f" t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; the project ships them in data/mnist) there,"
        f" or pass download=True to the data module (MNISTDataModule) to fetch them with torchvision."
    )


def _read_bytes(path: Path) -> bytes:
    r"""The IDX bytes of ``path``, gunzipped when its name ends in ``.gz``."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut-off stream is an EOFError
        raise ValueError(
            f"MNIST file {str(path)!r} is not a valid gzip file (expected a complete gzip stream of"
            f" {len(raw)} bytes, found: {err}). The file is truncated or corrupted; copy it again."
        ) from err


def _parse_idx(data: bytes, path: Path, magic: int) -> Tensor:
    r"""Parse IDX bytes into a uint8 tensor of the dimensions its header gives.

    The header is a big-endian int32 magic number (``0x0803`` images, ``0x0801`` labels: type byte ``0x08``
    for unsigned bytes, then the number of dimensions) followed by one big-endian int32 per dimension.
    """
    found = struct.unpack(">i", data[:4])[0] if len(data) >= 4 else f"only {len(data)} bytes"
    if found != magic:
        raise ValueError(
            f"MNIST file {str(path)!r} has the wrong IDX magic number: expected {magic}, found {found}."
            " It is not an MNIST IDX file of this kind or it is corrupted."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"MNIST file {str(path)!r} is truncated: expected a {header}-byte header, found {len(data)}.")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise ValueError(
            f"MNIST file {str(path)!r} has the wrong length: its header {tuple(dims)} needs {expected} bytes,"
            f" found {len(data)}. The file is truncated or corrupted; copy it again."
        )
    # bytearray makes a writable copy, so torch does not warn about (or alias) an immutable buffer.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).reshape(dims)


def _check_sha256(data: bytes, path: Path, name: str) -> None:
    r"""Raise ``ValueError`` unless ``data`` hashes to the known SHA-256 of MNIST file ``name``."""
    found = hashlib.sha256(data).hexdigest()
    expected = MNIST_SHA256[name]
    if found != expected:
        raise ValueError(
            f"MNIST file {str(path)!r} failed its checksum: expected SHA-256 {expected} of the IDX bytes"
            f" (after gunzip), found {found}. The file is corrupted or is not the original MNIST {name}; copy it again."
        )


def read_idx(path: str | os.PathLike, name: str, magic: int) -> Tensor:
    r"""Read and verify one MNIST IDX file.

    Args:
        path: the file, gzip-compressed if its name ends in ``.gz``.
        name: its MNIST name (a value of :data:`MNIST_FILES`), which selects the expected SHA-256.
        magic: the IDX magic number expected, 2051 for images or 2049 for labels.

    Returns:
        uint8 tensor shaped as the header says: ``(N, 28, 28)`` images or ``(N,)`` labels.

    Raises:
        ValueError: bad gzip, wrong magic number, wrong length or checksum mismatch; the message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    # Structure first, then the checksum: "wrong magic" or "truncated" says more than a hash mismatch does.
    tensor = _parse_idx(data, path, magic)
    _check_sha256(data, path, name)
    return tensor


def parse_idx_images(path: str | os.PathLike) -> Tensor:
    r"""Read any IDX file of uint8 images (MNIST's format, not only MNIST's own files: no checksum is checked).

    Args:
        path: the file, gzip-compressed if its name ends in ``.gz``.

    Returns:
        uint8 ``(N, rows, columns)``.

    Raises:
        ValueError: bad gzip, wrong magic number or wrong length; the message names the file.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path, IDX_IMAGES_MAGIC)


def load_mnist(data_dir: str | os.PathLike = "data/mnist") -> dict[str, Tensor]:
    r"""Load and verify the four MNIST files found in ``data_dir`` (see :func:`find_mnist_files`).

    Returns:
        ``train_images`` uint8 ``(60000, 28, 28)``, ``train_labels`` int64 ``(60000,)``,
        ``test_images`` uint8 ``(10000, 28, 28)`` and ``test_labels`` int64 ``(10000,)``, all on the CPU.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is truncated or corrupted.
    """
    paths = find_mnist_files(data_dir)
    mnist = {}
    for key, path in paths.items():
        is_images = key.endswith("images")
        tensor = read_idx(path, MNIST_FILES[key], IDX_IMAGES_MAGIC if is_images else _LABELS_MAGIC)
        # int64 labels are what indexing and cross-entropy expect; pixels stay uint8 until the caller scales them.
        mnist[key] = tensor if is_images else tensor.long()
    return mnist


def write_torchvision_layout(root: str | os.PathLike, data_dir: str | os.PathLike = "data/mnist") -> Path:
    r"""Write the four MNIST files of ``data_dir``, verified and un-gzipped, into ``root/MNIST/raw``, where
    ``torchvision.datasets.MNIST(root)`` reads them (without ``download=True``, which would check the MD5 of
    torchvision's own ``.gz`` files; ``data/mnist``'s image files are compressed differently).

    Each file is written to a temporary name and renamed, so an interrupted call leaves no half-written file.
    :func:`load_mnist` reads ``root`` too.

    Example::

        >>> from torch_manualbp.mnist import write_torchvision_layout
        >>> import torchvision
        >>> train = torchvision.datasets.MNIST(write_torchvision_layout("data").parents[1], train=True)

    Returns:
        the folder written, ``root/MNIST/raw``.

    Raises:
        FileNotFoundError: a file is missing from ``data_dir``.
        ValueError: a file of ``data_dir`` is truncated or corrupted (nothing of it is written).
    """
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, path in find_mnist_files(data_dir).items():
        name = MNIST_FILES[key]
        data = _read_bytes(path)
        _parse_idx(data, path, IDX_IMAGES_MAGIC if key.endswith("images") else _LABELS_MAGIC)
        _check_sha256(data, path, name)
        partial = raw / f".{name}.{os.getpid()}.tmp"
        partial.write_bytes(data)
        os.replace(partial, raw / name)
    return raw


def expand_by_shifts(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    r"""Chapter 3's artificially expanded training data, as the book's ``expand_mnist.py`` makes it: each image, then
    the same image shifted by one pixel down, up, right and left, the pixels shifted in zero; five images per image,
    so the book's 50,000 training images become 250,000.

    Deterministic: image i's five are rows ``5i`` to ``5i + 4``, in that order (the book shuffles the pairs once,
    unseeded; a training loader shuffles them anyway). Nothing is written to disk.

    Memory: the result has five times the input's bytes, 5 × 784 = 3,920 bytes per image in uint8, so 196 MB for
    50,000 images (784 MB once scaled to float32, 1.57 GB in float64), beside the input itself.

    Args:
        images: uint8 (or any dtype) images, :math:`(N, H, W)`, as :func:`load_mnist` returns them.
        labels: their labels, :math:`(N)`.

    Returns:
        ``(expanded_images, expanded_labels)``, :math:`(5N, H, W)` and :math:`(5N)`, in the inputs' dtypes.

    Raises:
        TypeError: ``images`` or ``labels`` is not a tensor.
        ValueError: ``images`` is not :math:`(N, H, W)`, or ``labels`` not :math:`(N)`.

    Examples::

        >>> mnist = load_mnist("data/mnist")
        >>> images, labels = expand_by_shifts(mnist["train_images"][:50_000], mnist["train_labels"][:50_000])
        >>> images.shape, labels.shape
        (torch.Size([250000, 28, 28]), torch.Size([250000]))
    """
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        kinds = f"{type(images).__name__}, {type(labels).__name__}"
        raise TypeError(f"images and labels must be torch.Tensors, got {kinds}")
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), one per image, got {tuple(labels.shape)}")
    n, height, width = images.shape
    expanded = images.new_zeros(n, 5, height, width)  # the shifted-in row or column stays 0
    expanded[:, 0] = images
    expanded[:, 1, 1:, :] = images[:, :-1, :]  # down one pixel: row r moves to r + 1
    expanded[:, 2, :-1, :] = images[:, 1:, :]  # up
    expanded[:, 3, :, 1:] = images[:, :, :-1]  # right: column c moves to c + 1
    expanded[:, 4, :, :-1] = images[:, :, 1:]  # left
    return expanded.reshape(5 * n, height, width), labels.repeat_interleave(5)
