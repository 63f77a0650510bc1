r"""Your own digits, made to look like MNIST's, for ``manualbp predict``.

MNIST's images were made from scanned digits in three steps: each digit was fitted into a 20 x 20 box keeping its
aspect ratio (anti-aliased, hence the grey levels), then placed in a 28 x 28 field so that its centre of mass lies at
the field's centre, as a light digit on a black background. :func:`mnist_like` repeats those steps on any image PIL
can read; :func:`load_images` reads a file, a directory of files, or an IDX images file (MNIST's own format, whose
28 x 28 images are used as they are). No Lightning here; the ``predict`` wiring is in
:mod:`torch_manualbp.lightning`.

Example::

    >>> from PIL import Image
    >>> from torch_manualbp.images import mnist_like
    >>> pixels, inverted = mnist_like(Image.open("my_seven.png"))  # float32 (784,) in [0, 1]
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from .mnist import IDX_IMAGES_MAGIC, MNIST_SIZE, parse_idx_images

__all__ = ["DIGIT_BOX", "LoadedImage", "load_images", "mnist_like"]

#: MNIST's digits were fitted into a 20 x 20 box inside the 28 x 28 field (``MNIST_SIZE``).
DIGIT_BOX = 20


@dataclass(frozen=True)
class LoadedImage:
    r"""One image to predict, or the reason it could not be read.

    Attributes:
        name: the file, with ``[i]`` appended for the i-th image of an IDX file.
        pixels: float32 ``(784,)`` in [0, 1], a light digit on black, or ``None`` if it could not be read.
        note: what was done to it that the user should know (``"inverted: ..."``), or why it could not be read.
    """

    name: str
    pixels: Tensor | None
    note: str = ""


def mnist_like(image: Image.Image) -> tuple[Tensor, bool]:
    r"""An image of one digit as MNIST would have it: 28 x 28 pixels in [0, 1], a light digit on black.

    Steps: grayscale (transparent areas count as white paper); if the background is light (the median of the border
    pixels above mid-grey) the image is inverted, since MNIST's digits are light on dark; the background level
    becomes 0 and the strongest stroke 1 (MNIST's digits came from black-and-white scans: full ink); the digit's
    bounding box (every pixel above the background) is resized, aspect kept, so that its longer side is 20 pixels
    (anti-aliased, as MNIST's were); it is placed in a 28 x 28 field so that its centre of mass falls on pixel
    (14, 14), where MNIST's digits have theirs. An MNIST image saved as a PNG comes back unchanged when its
    brightest pixel is 255 (nine in ten are), otherwise scaled so that it is 1.

    Args:
        image: a PIL image of a single digit, any mode and size.

    Returns:
        ``(pixels, inverted)``: float32 ``(784,)`` rows of the 28 x 28 field, and whether the image was inverted.

    Raises:
        TypeError: ``image`` is not a PIL image.
        ValueError: the image holds nothing but background (no digit).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    gray = _grayscale(image)  # float32 (H, W), 0 black .. 255 white
    inverted = bool(_border(gray).median() > 127.5)
    if inverted:
        gray = 255.0 - gray
    background, darkest = _border(gray).median(), gray.max()
    if darkest <= background:
        raise ValueError("image holds no digit: no pixel is darker than the background")
    ink = ((gray - background) / (darkest - background)).clamp(0.0, 1.0)  # paper 0, the strongest stroke 1
    rows, cols = ink.gt(0).any(1).nonzero(), ink.gt(0).any(0).nonzero()
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    digit = TF.resize(digit[None], size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)[0].clamp(0, 1)
    return _centre_by_mass(digit).reshape(-1), inverted


def _grayscale(image: Image.Image) -> Tensor:
    r"""Luminance of ``image`` as float32 ``(H, W)`` in [0, 255]; transparent pixels become white (paper)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return TF.pil_to_tensor(image.convert("L"))[0].to(torch.float32)


def _border(gray: Tensor) -> Tensor:
    r"""The pixels along the four edges of ``gray`` ``(H, W)``, where a photographed or drawn digit has its paper."""
    return torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def _centre_by_mass(digit: Tensor) -> Tensor:
    r"""``digit`` ``(h, w)`` placed in a 28 x 28 field with its centre of mass on pixel (14, 14), rounded to whole
    pixels like MNIST's; whatever the shift pushes beyond the field is cut off."""
    height, width = digit.shape
    mass = digit.sum()
    centre_row = (digit.sum(1) * torch.arange(height, dtype=digit.dtype)).sum() / mass
    centre_col = (digit.sum(0) * torch.arange(width, dtype=digit.dtype)).sum() / mass
    top = round(MNIST_SIZE / 2 - centre_row.item())
    left = round(MNIST_SIZE / 2 - centre_col.item())
    field = torch.zeros(MNIST_SIZE, MNIST_SIZE, dtype=digit.dtype)
    # the overlap of the field with the digit's rectangle [top, top + height) x [left, left + width)
    r0, r1 = max(top, 0), min(top + height, MNIST_SIZE)
    c0, c1 = max(left, 0), min(left + width, MNIST_SIZE)
    field[r0:r1, c0:c1] = digit[r0 - top : r1 - top, c0 - left : c1 - left]
    return field


def load_images(path: str | os.PathLike) -> list[LoadedImage]:
    r"""Every image at ``path``, made MNIST-like, in a stable order; a file that cannot be read is kept as an entry
    without pixels whose note says why, so that the others are still answered.

    Args:
        path: an image file (PNG, JPEG, ... anything PIL reads), an IDX images file (optionally ``.gz``), or a
            directory of such files (its hidden files and subdirectories are skipped; the rest in name order).

    Returns:
        One :class:`LoadedImage` per image (an IDX file gives one per image it holds).

    Raises:
        FileNotFoundError: ``path`` does not exist, or is a directory without files.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"predict_path {str(path)!r} is a directory without any file in it")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"predict_path {str(path)!r} is neither an image file, an IDX file nor a directory")
    return [image for file in files for image in _load_file(file)]


def _load_file(file: Path) -> list[LoadedImage]:
    r"""The images of one file, or one entry saying why it cannot be read."""
    try:
        if _is_idx_images(file):
            images = parse_idx_images(file)
            if images.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
                raise ValueError(f"IDX images must be 28 x 28 (MNIST's format), found {tuple(images.shape[1:])}")
            pixels = images.reshape(len(images), -1).to(torch.float32) / 255.0
            return [LoadedImage(f"{file}[{i}]", row) for i, row in enumerate(pixels)]
        with Image.open(file) as image:
            pixels, inverted = mnist_like(image)
        note = "inverted: a dark digit on a light background" if inverted else ""
        return [LoadedImage(str(file), pixels, note)]
    except (OSError, ValueError, Image.DecompressionBombError, EOFError) as err:
        return [LoadedImage(str(file), None, _reason(err))]


def _is_idx_images(file: Path) -> bool:
    r"""Whether ``file`` starts (after gunzip, for a ``.gz`` name) with the IDX magic number of 3-d uint8 images."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as stream:
            return int.from_bytes(stream.read(4), "big") == IDX_IMAGES_MAGIC
    except (OSError, EOFError):
        return False  # not gzip after all: PIL will say what it is not


def _reason(err: BaseException) -> str:
    r"""The error as one line."""
    return " ".join(str(err).split()) or type(err).__name__
