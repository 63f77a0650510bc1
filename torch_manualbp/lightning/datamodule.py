r"""MNIST as a Lightning data module, split and batched the way Nielsen's book does it.

Each split is held whole as three tensors (pixels, one-hot targets, labels), on the training device once a
trainer is attached, and mini-batches are cut from them by :class:`ShuffledBatches` (training) and
:class:`OrderedBatches` (validation, test). No ``DataLoader`` over per-item datasets: with Nielsen's
mini-batches of 10 images, collating ten tiny samples per step would cost more than the step itself.

A batch is a tuple ``(x, y, labels)``:

* ``x``: float32 ``(B, 784)``, pixels scaled to ``[0, 1]``, one image per row;
* ``y``: float32 ``(B, 10)``, one-hot target vectors (the book's ``vectorized_result``);
* ``labels``: int64 ``(B,)``, the digits themselves.

Under DDP (``world_size > 1``) each optimisation step consumes one *global* chunk of ``batch_size * world_size``
consecutive examples of the shared, identically seeded order, and rank ``r`` takes the contiguous slice
``[r * batch_size, (r + 1) * batch_size)`` of that chunk. Two ranks with ``batch_size=5`` therefore see, step by
step, exactly the examples one process with ``batch_size=10`` sees.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import lightning as L
import torch
from torch import Tensor

from torch_manualbp.images import LoadedImage, load_images
from torch_manualbp.mnist import MNIST_CLASSES, MNIST_INPUTS, expand_by_shifts, find_mnist_files, load_mnist

__all__ = [
    "ImageBatches",
    "MNISTDataModule",
    "OrderedBatches",
    "ShuffledBatches",
    "check_train_size",
    "training_images",
]

Batch = tuple[Tensor, Tensor, Tensor]
PredictBatch = tuple[Tensor, list[str], list[str], list[bool]]  # x, file names, notes, readable

#: Nielsen's split of the 60,000 training images: the first 50,000 train, the last 10,000 validate.
NUM_TRAIN = 50_000
#: Images per training image with ``expand=True``: itself and its four one-pixel shifts (the book's expand_mnist.py).
EXPANSION = 5


def check_train_size(train_size) -> None:
    """Raise a ``TypeError``/``ValueError`` naming ``train_size`` unless it is ``None`` or a number of training images
    in 1..50,000."""
    if train_size is None:
        return
    if isinstance(train_size, bool) or not isinstance(train_size, int):
        raise TypeError(f"train_size must be a whole number of training images or None, got {train_size!r}")
    if not 1 <= train_size <= NUM_TRAIN:
        raise ValueError(f"train_size must lie in 1..{NUM_TRAIN} (of the training images) or be None, got {train_size}")


def training_images(train_size: int | None = None, expand: bool = False) -> int:
    """How many training examples ``MNISTDataModule(train_size=, expand=)`` trains on: the n of the book's λ/n
    (``ManualBPClassifier``'s ``training_set_size``)."""
    return (NUM_TRAIN if train_size is None else train_size) * (EXPANSION if expand else 1)


def _shard(size: int, rank: int, world_size: int) -> tuple[int, int]:
    r"""Bounds of rank ``rank``'s contiguous part of a chunk of ``size`` examples split over ``world_size`` ranks.

    A full chunk (``size = batch_size * world_size``) gives rank ``r`` exactly ``[r * batch_size, (r+1) * batch_size)``.
    The final, partial chunk of an epoch is split into near-equal parts (sizes differ by at most one) so that no
    example is dropped or repeated; when it holds fewer examples than there are ranks, some ranks get an empty batch.
    """
    return rank * size // world_size, (rank + 1) * size // world_size


def _permutation(n: int, seed: int, epoch: int) -> Tensor:
    r"""The order of the ``n`` examples in ``epoch``: a permutation from a private generator seeded by (seed, epoch).

    The generator is local, so the order depends on nothing but ``seed`` and ``epoch`` (not on the global RNG,
    the device, or how many batches were drawn before). It is drawn on the CPU for the same reason.
    """
    # The CPU generator (mt19937) keeps only the low 32 bits of its seed, so packing the pair as
    # (seed << 32) | epoch would give every seed the same orders. Hash the pair into 32 well-mixed bits instead.
    digest = hashlib.sha256(f"torch_manualbp.mnist:{seed}:{epoch}".encode()).digest()
    generator = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:4], "big"))
    return torch.randperm(n, generator=generator)


class _TensorBatches:
    r"""Shared machinery: mini-batches cut from whole-split tensors, sharded over ``world_size`` ranks.

    Args:
        images: float32 ``(N, 784)``.
        targets: float32 ``(N, 10)`` one-hot.
        labels: int64 ``(N,)``.
        batch_size: examples per batch on this rank.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes sharing each step's global chunk.
    """

    def __init__(
        self, images: Tensor, targets: Tensor, labels: Tensor, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if not len(images) == len(targets) == len(labels):
            lengths = (len(images), len(targets), len(labels))
            raise ValueError(f"images, targets and labels differ in length: {lengths}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.tensors = (images, targets, labels)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    @property
    def num_examples(self) -> int:
        r"""Examples in the whole split (all ranks together)."""
        return len(self.tensors[0])

    @property
    def global_batch_size(self) -> int:
        r"""Examples consumed by one step over all ranks."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        r"""Batches per epoch, the same on every rank; the last (partial) chunk is kept, as Nielsen keeps it."""
        return math.ceil(self.num_examples / self.global_batch_size)

    def _batch(self, step: int, order: Tensor | None) -> Batch:
        r"""This rank's batch of step ``step``; ``order`` is the epoch's permutation, or ``None`` for file order."""
        chunk_start = step * self.global_batch_size
        chunk_size = min(self.global_batch_size, self.num_examples - chunk_start)
        begin, end = _shard(chunk_size, self.rank, self.world_size)
        if order is None:  # contiguous slices are views: no copy at all
            return tuple(t[chunk_start + begin : chunk_start + end] for t in self.tensors)  # type: ignore[return-value]
        index = order[chunk_start + begin : chunk_start + end]
        return tuple(t.index_select(0, index) for t in self.tensors)  # type: ignore[return-value]


class OrderedBatches(_TensorBatches):
    r"""Evaluation batches in file order, sharded over ranks like the training batches.

    Sharding (rather than giving every rank everything) keeps validation cheap under DDP; metrics that sync
    across processes (torchmetrics) then count each example exactly once.
    """

    def __iter__(self) -> Iterator[Batch]:
        for step in range(len(self)):
            yield self._batch(step, None)


class ShuffledBatches(_TensorBatches):
    r"""Training batches, reshuffled every epoch, reproducible, and resumable mid-epoch.

    Epoch ``e`` visits the examples in the order of a permutation drawn from a generator seeded by
    ``(seed, e)``, cut into ``len(self)`` steps (see :func:`_shard` for DDP). Every example appears exactly once
    per epoch.

    The position is tracked as "the next batch to hand out": ``epoch`` and ``position`` (batches of that epoch
    already handed out). :meth:`state_dict` / :meth:`load_state_dict` save and restore them, which Lightning 2.x
    does by itself: its fit loop stores ``state_dict()`` of every train iterable that has both methods in the
    checkpoint (``"combined_loader"``) and calls ``load_state_dict()`` before the first ``iter()`` on resume.
    The saved position is exact because Lightning does not prefetch from an iterable that has ``__len__``, so
    when a checkpoint is taken the iterable has handed out exactly the batches the trainer has run.

    Epochs are counted by passes rather than read from the trainer, so the class works without one: a pass that
    runs to the end of the epoch leaves the state at ``(epoch + 1, 0)``; a pass abandoned early makes the next
    pass start the next epoch; a pass right after :meth:`load_state_dict` resumes the saved position. An epoch
    that the trainer shortens on purpose (``limit_train_batches``) ends at ``limit`` batches, so a checkpoint
    taken after its last batch already points at the next epoch, as for a whole epoch. The pass only starts at its
    first ``next()``, not at ``iter()``: Lightning calls ``iter()`` once just to check that the object is iterable,
    and that must not count as an epoch.

    Only one pass may be in progress at a time (they share the position).

    Args:
        seed: the shuffling seed.
        epoch: the epoch of the first pass (the data module passes ``trainer.current_epoch``, so that
            ``reload_dataloaders_every_n_epochs`` keeps the same sequence of orders).
        limit: the number of batches an epoch ends after, when the trainer takes fewer than ``len(self)``;
            ``None``: all of them.
        others: see :class:`_TensorBatches`.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        limit: int | None = None,
    ) -> None:
        super().__init__(images, targets, labels, batch_size, rank, world_size)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive number of batches or None, got {limit!r}")
        self.seed = seed
        self.epoch = epoch
        self.epoch_length = len(self) if limit is None else min(limit, len(self))
        self.position = 0
        self._resuming = False

    def __iter__(self) -> Iterator[Batch]:
        if self._resuming:
            self._resuming = False
        elif self.position:  # the previous pass stopped early: this one is the next epoch
            self.epoch, self.position = self.epoch + 1, 0
        epoch = self.epoch
        order = _permutation(self.num_examples, self.seed, epoch).to(self.tensors[0].device)
        for step in range(self.position, self.epoch_length):
            batch = self._batch(step, order)
            # Move the state past this batch *before* handing it out: a checkpoint taken while the trainer works
            # on it must resume with the next one. After the epoch's last batch the next one is the next epoch's first.
            self.epoch, self.position = (epoch, step + 1) if step + 1 < self.epoch_length else (epoch + 1, 0)
            yield batch

    def state_dict(self) -> dict[str, int]:
        r"""Where the next batch comes from, plus what must match on resume for the position to mean the same."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_examples": self.num_examples,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        r"""Make the next pass continue at the saved ``(epoch, position)``.

        Raises:
            ValueError: the seed, global batch size (``batch_size * world_size``) or data size differ from the
                saved ones, so the saved position would point at different examples.
        """
        for key in ("seed", "global_batch_size", "num_examples"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume ShuffledBatches: saved {key}={state_dict[key]}, now {getattr(self, key)};"
                    " an exact mid-epoch resume needs the same seed, batch_size * world_size and data"
                )
        self.epoch = state_dict["epoch"]
        self.position = state_dict["position"]
        self._resuming = True


class MNISTDataModule(L.LightningDataModule):
    r"""MNIST with Nielsen's split: 50,000 training, 10,000 validation (the last 10,000 training images), 10,000 test.

    Args:
        data_dir: directory with the four MNIST IDX files, flat or in torchvision's ``MNIST/raw`` layout, gzipped
            or not; the project ships them in ``data/mnist`` so nothing needs the network.
        batch_size: examples per Lightning batch. With ``ManualBPClassifier``'s ``mini_batch_size`` set (the book's
            10 by default) each batch is cut into ``batch_size / mini_batch_size`` of the book's mini-batches, one
            SGD step each, in order (1,000 by default, as in ``experiments/nielsen_ch1.yaml``: 100 steps per batch,
            so that ``MNISTDataModule()`` with ``ManualBPClassifier()`` is the book's chapter-1 run on the fast
            path); with ``mini_batch_size=None`` it is the SGD mini-batch itself. Under DDP it is the size *per
            process*; one batch then consumes ``batch_size * world_size`` examples.
        eval_batch_size: batch size for validation and test, which only run forward passes and so can afford
            large batches.
        download: fetch the files with ``torchvision.datasets.MNIST`` if they are missing; off by default so that
            a missing file is an error instead of a silent network access.
        seed: seed of the per-epoch shuffling, which is independent of the global RNG so that changing the
            model's initialisation does not change the data order.
        monitor_test: also evaluate the test set at every validation, as a second validation dataloader, the
            way chapter 1 prints a test accuracy after every epoch. Off by default: choosing an epoch or a
            model by its test accuracy is peeking; the book's figures are reproduced with it on.
        predict_path: what ``manualbp predict`` answers: an image file, a directory of images or an IDX images
            file (see :func:`torch_manualbp.images.load_images`).
        train_size: train on the first ``train_size`` of the 50,000 training images only (the book's
            ``training_data[:1000]`` for its overfitting run in chapter 3), shuffled every epoch as the whole set is;
            ``None`` (default): all 50,000. Validation and test keep their 10,000 images each.
        expand: chapter 3's artificially expanded training data: each training image followed by its four one-pixel
            shifts (down, up, right, left; :func:`~torch_manualbp.mnist.expand_by_shifts`, the book's
            ``expand_mnist.py``, deterministic), 250,000 images for the whole set, shuffled every epoch. With
            ``train_size`` the first ``train_size`` images are taken first, then expanded: ``5 * train_size``
            examples. Memory: 250,000 × 784 float32 pixels is 784 MB (on the training device), plus 196 MB of uint8
            while they are made; validation and test are not expanded.
    """

    def __init__(
        self,
        data_dir: str = "data/mnist",
        batch_size: int = 1000,
        eval_batch_size: int = 1000,
        download: bool = False,
        seed: int = 0,
        monitor_test: bool = False,
        predict_path: str | None = None,
        train_size: int | None = None,
        expand: bool = False,
    ) -> None:
        super().__init__()
        check_train_size(train_size)
        if not isinstance(expand, bool):
            raise TypeError(f"expand must be True or False, got {expand!r}")
        self.save_hyperparameters()
        # name -> (images, targets, labels); filled by setup(), nothing is read before.
        self.splits: dict[str, Batch] = {}
        self._train_batches: ShuffledBatches | None = None  # the last train_dataloader(), whose epoch state_dict saves
        self._resumed_epoch: int | None = None  # the epoch a checkpoint's next training pass is, until it starts

    def prepare_data(self) -> None:
        r"""Download the files with torchvision if they are missing and ``download=True``; else check they exist.

        Lightning runs this on one process per node, before :meth:`setup`, so a download happens once. ``predict``
        reads only ``predict_path``: it needs no MNIST files.
        """
        if self.trainer is not None and self.trainer.state.fn == "predict":
            return
        try:
            find_mnist_files(self.hparams.data_dir)
        except FileNotFoundError:
            if not self.hparams.download:
                raise
            from torchvision.datasets import MNIST  # imported here: only a download needs torchvision

            MNIST(root=self.hparams.data_dir, download=True)  # fetches all four files into data_dir/MNIST/raw
            find_mnist_files(self.hparams.data_dir)

    def setup(self, stage: str | None = None) -> None:
        r"""Load, verify and split the data (once, whatever the stage: all of it takes about half a second); for
        ``stage="predict"`` nothing: the images come from ``predict_path``."""
        if self.splits or stage == "predict":
            return
        mnist = load_mnist(self.hparams.data_dir)
        images, labels = mnist["train_images"], mnist["train_labels"]
        train_size = self.hparams.train_size or NUM_TRAIN
        train_images, train_labels = images[:train_size], labels[:train_size]
        if self.hparams.expand:  # each image, then its shifts: rows 5i..5i+4 come from image i
            train_images, train_labels = expand_by_shifts(train_images, train_labels)
        self.splits = {
            "train": _as_split(train_images, train_labels),
            "val": _as_split(images[NUM_TRAIN:], labels[NUM_TRAIN:]),
            "test": _as_split(mnist["test_images"], mnist["test_labels"]),
        }

    def train_dataloader(self) -> ShuffledBatches:
        r"""Shuffled mini-batches of the training images (the 50,000, or ``train_size``, expanded if ``expand``),
        ``batch_size`` per process."""
        train, (rank, world_size) = self._split("train"), self._rank_and_world_size()
        epoch, limit = 0, None
        if self.trainer is not None:
            epoch = self.trainer.current_epoch
            length = math.ceil(len(train[0]) / (self.hparams.batch_size * world_size))
            limit = _epoch_limit(length, self.trainer.limit_train_batches)
        if self._resumed_epoch is not None:
            # A checkpoint's: the pass it was in, or after an epoch's end (best, every_n_epochs, where Lightning
            # restores no loader state and its current_epoch is still the finished one) the next epoch's.
            epoch, self._resumed_epoch = self._resumed_epoch, None
        batches = ShuffledBatches(*train, self.hparams.batch_size, self.hparams.seed, epoch, rank, world_size, limit)
        self._train_batches = batches
        return batches

    def state_dict(self) -> dict[str, int]:
        r"""Saved in checkpoints: the epoch of the training pass the next batch comes from (Lightning saves the
        position within it mid-epoch, from :meth:`ShuffledBatches.state_dict`)."""
        return {} if self._train_batches is None else {"train_epoch": self._train_batches.epoch}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resumed_epoch = state_dict.get("train_epoch")

    def val_dataloader(self) -> OrderedBatches | list[OrderedBatches]:
        r"""The 10,000 validation images in order, ``eval_batch_size`` per process; then the test images
        if ``monitor_test``."""
        val = OrderedBatches(*self._split("val"), self.hparams.eval_batch_size, *self._rank_and_world_size())
        return [val, self.test_dataloader()] if self.hparams.monitor_test else val

    def test_dataloader(self) -> OrderedBatches:
        r"""The 10,000 test images in order, ``eval_batch_size`` per process."""
        return OrderedBatches(*self._split("test"), self.hparams.eval_batch_size, *self._rank_and_world_size())

    def predict_dataloader(self) -> ImageBatches:
        r"""The images at ``predict_path`` made MNIST-like, ``eval_batch_size`` per batch (:class:`ImageBatches`)."""
        if not self.hparams.predict_path:
            raise ValueError("data.predict_path must name an image file, a directory of images or an IDX images file")
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return ImageBatches(load_images(self.hparams.predict_path), self.hparams.eval_batch_size, device)

    def _split(self, name: str) -> Batch:
        r"""Split ``name``, moved once to the trainer's device so that batches are cut there without host copies."""
        if not self.splits:
            raise RuntimeError("MNISTDataModule.setup() must run before its dataloaders are requested")
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.splits[name] = tuple(t.to(device) for t in self.splits[name])  # type: ignore[assignment]
        return self.splits[name]

    def _rank_and_world_size(self) -> tuple[int, int]:
        r"""``(global_rank, world_size)`` of the attached trainer, ``(0, 1)`` without one."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size


def _epoch_limit(length: int, limit_train_batches: int | float | None) -> int | None:
    r"""The batches per epoch the trainer will take of ``length`` (as Lightning counts ``limit_train_batches``:
    an int is a number of batches, a float a fraction, rounded down), or ``None`` when it takes them all."""
    if limit_train_batches is None:
        return None
    if isinstance(limit_train_batches, int):
        taken = min(length, limit_train_batches)
    else:
        taken = int(length * limit_train_batches)
    return taken if 0 < taken < length else None


def _as_split(images: Tensor, labels: Tensor) -> Batch:
    r"""uint8 ``(N, 28, 28)`` images and int64 labels -> float32 rows in [0, 1], one-hot targets, labels."""
    x = images.reshape(len(images), -1).to(torch.float32) / 255.0
    y = torch.nn.functional.one_hot(labels, num_classes=MNIST_CLASSES).to(torch.float32)
    return x, y, labels


class ImageBatches:
    r"""Batches ``(x, names, notes, readable)`` of :class:`~torch_manualbp.images.LoadedImage` s, in their order.

    ``x`` is float32 ``(B, 784)`` on ``device``, with a row of zeros for an image that could not be read (its note
    says why; ``readable`` is ``False``), so that every file keeps its place and gets its line.
    """

    def __init__(self, images: list[LoadedImage], batch_size: int, device: torch.device) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.batch_size, self.device = images, batch_size, device

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[PredictBatch]:
        for start in range(0, len(self.images), self.batch_size):
            chunk = self.images[start : start + self.batch_size]
            x = torch.stack(
                [image.pixels if image.pixels is not None else torch.zeros(MNIST_INPUTS) for image in chunk]
            )
            readable = [image.pixels is not None for image in chunk]
            yield x.to(self.device), [image.name for image in chunk], [image.note for image in chunk], readable
