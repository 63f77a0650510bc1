r"""Tests of the MNIST loader and data module against the real files bundled in ``data/mnist``.

Each test checks against something independent of the code under test: a separate numpy/struct parse of the
gz files, well-known facts about MNIST, or an uninterrupted run of the same iterator.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import DATA_DIR, copy_mnist_files

from torch_manualbp.lightning.datamodule import MNISTDataModule, OrderedBatches, ShuffledBatches
from torch_manualbp.mnist import MNIST_FILES, load_mnist

NAMES = list(MNIST_FILES.values())


def _parse_idx_gz(path: Path) -> np.ndarray:
    r"""A deliberately separate IDX reader (numpy + struct), used as the reference."""
    data = gzip.decompress(path.read_bytes())
    magic, n = struct.unpack(">ii", data[:8])
    if magic == 2049:
        return np.frombuffer(data, dtype=np.uint8, offset=8)
    rows, cols = struct.unpack(">ii", data[8:16])
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return {key: _parse_idx_gz(DATA_DIR / f"{name}.gz") for key, name in MNIST_FILES.items()}


@pytest.fixture(scope="module")
def mnist() -> dict[str, torch.Tensor]:
    return load_mnist(DATA_DIR)


@pytest.fixture(scope="module")
def datamodule() -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=10)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def idx_bytes() -> dict[str, bytes]:
    r"""The gunzipped IDX bytes of each file, by file name."""
    return {name: gzip.decompress((DATA_DIR / f"{name}.gz").read_bytes()) for name in NAMES}


def _ids_batches(num: int, batch_size: int, **kwargs) -> ShuffledBatches:
    r"""Batches over ``num`` examples whose "labels" are their indices, so each example can be traced."""
    images = torch.arange(num, dtype=torch.float32)[:, None].expand(num, 784)
    targets = torch.zeros(num, 10)
    return ShuffledBatches(images, targets, torch.arange(num), batch_size, **kwargs)


def _epoch_ids(batches) -> list[torch.Tensor]:
    return [labels for _, _, labels in batches]


# --- loading -------------------------------------------------------------------------------------------------------


def test_loaded_tensors_equal_an_independent_parse_of_the_gz_files(mnist, reference):
    for key, expected in reference.items():
        assert mnist[key].dtype == (torch.uint8 if key.endswith("images") else torch.int64)
        np.testing.assert_array_equal(mnist[key].numpy(), expected)


def test_known_facts_about_mnist_hold(mnist):
    assert mnist["train_images"].shape == (60_000, 28, 28)
    assert mnist["test_images"].shape == (10_000, 28, 28)
    assert len(mnist["train_labels"]) == 60_000 and len(mnist["test_labels"]) == 10_000
    assert mnist["train_labels"][0].item() == 5
    assert mnist["test_labels"][0].item() == 7
    assert abs(mnist["train_images"].double().div(255).mean().item() - 0.1307) < 1e-3


def test_every_digit_occurs_in_both_sets(mnist):
    assert torch.equal(mnist["train_labels"].unique(), torch.arange(10))
    assert torch.equal(mnist["test_labels"].unique(), torch.arange(10))


# --- Nielsen's split and the batch format --------------------------------------------------------------------------


def test_split_sizes_are_50000_train_10000_validation_10000_test(datamodule):
    sizes = {name: [len(t) for t in split] for name, split in datamodule.splits.items()}
    assert sizes == {"train": [50_000] * 3, "val": [10_000] * 3, "test": [10_000] * 3}


def test_validation_row_0_is_raw_training_image_50000(datamodule, reference):
    expected = torch.from_numpy(reference["train_images"][50_000].reshape(784).astype(np.float32) / 255)
    assert torch.equal(datamodule.splits["val"][0][0], expected)
    assert datamodule.splits["val"][2][0].item() == int(reference["train_labels"][50_000])


def test_train_split_is_the_first_50000_and_test_split_is_t10k(datamodule, reference):
    x_train, _, labels_train = datamodule.splits["train"]
    x_test, _, labels_test = datamodule.splits["test"]
    np.testing.assert_array_equal(labels_train.numpy(), reference["train_labels"][:50_000])
    np.testing.assert_array_equal(labels_test.numpy(), reference["test_labels"])
    np.testing.assert_array_equal((x_train[-1] * 255).round().numpy(), reference["train_images"][49_999].reshape(784))
    np.testing.assert_array_equal((x_test[0] * 255).round().numpy(), reference["test_images"][0].reshape(784))


def test_pixels_are_float32_rows_of_784_in_the_unit_interval(datamodule):
    for x, _, _ in datamodule.splits.values():
        assert x.dtype == torch.float32 and x.shape[1] == 784
        assert x.min().item() == 0.0 and x.max().item() == 1.0


def test_labels_are_digits_and_one_hot_targets_match_them(datamodule):
    for _, y, labels in datamodule.splits.values():
        assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() <= 9
        assert y.dtype == torch.float32 and y.shape == (len(labels), 10)
        assert torch.equal(y.sum(dim=1), torch.ones(len(labels)))
        assert torch.equal(y.argmax(dim=1), labels)


def test_batches_are_x_y_labels_with_the_documented_shapes(datamodule):
    x, y, labels = next(iter(datamodule.train_dataloader()))
    assert (x.shape, y.shape, labels.shape) == ((10, 784), (10, 10), (10,))
    assert (x.dtype, y.dtype, labels.dtype) == (torch.float32, torch.float32, torch.int64)
    x, y, labels = next(iter(datamodule.val_dataloader()))
    assert (x.shape, y.shape, labels.shape) == ((1000, 784), (1000, 10), (1000,))


def test_loaders_have_nielsens_number_of_batches(datamodule):
    assert len(datamodule.train_dataloader()) == 5000
    assert len(datamodule.val_dataloader()) == 10
    assert len(datamodule.test_dataloader()) == 10


def test_hyperparameters_are_saved():
    dm = MNISTDataModule(batch_size=20, seed=7)
    expected = {
        "data_dir": "data/mnist",
        "batch_size": 20,
        "eval_batch_size": 1000,
        "download": False,
        "seed": 7,
        "monitor_test": False,
        "predict_path": None,
        "train_size": None,
        "expand": False,
    }
    assert dm.hparams == expected
    assert dm.splits == {}  # no data work before setup()


# --- broken and missing files --------------------------------------------------------------------------------------


def test_corrupted_images_file_names_the_file(tmp_path, idx_bytes):
    copy_mnist_files(tmp_path)
    data = bytearray(idx_bytes["train-images-idx3-ubyte"])
    data[16 + 28 * 14 + 14] ^= 0xFF  # one pixel of the first image: structure intact, content wrong
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(data), compresslevel=1))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz") as err:
        load_mnist(tmp_path)
    assert "SHA-256" in str(err.value) and "ba891046e6505d7a" in str(err.value)


def test_truncated_gz_file_raises_value_error_naming_the_file(tmp_path):
    copy_mnist_files(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*gzip"):
        load_mnist(tmp_path)


def test_wrong_magic_number_raises_value_error(tmp_path, idx_bytes):
    copy_mnist_files(tmp_path, skip="train-labels-idx1-ubyte")
    data = bytearray(idx_bytes["train-labels-idx1-ubyte"])
    data[3] = 0x03  # 2049 -> 2051: a labels file that claims to hold images
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*expected 2049, found 2051"):
        load_mnist(tmp_path)


def test_truncated_raw_file_reports_expected_and_found_length(tmp_path, idx_bytes):
    copy_mnist_files(tmp_path, skip="t10k-images-idx3-ubyte")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes["t10k-images-idx3-ubyte"][:-784])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*needs 7840016 bytes, found 7839232"):
        load_mnist(tmp_path)


def test_missing_file_message_names_the_file_the_directory_and_what_to_do(tmp_path):
    copy_mnist_files(tmp_path, skip="t10k-images-idx3-ubyte")
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte" in message and str(tmp_path.resolve()) in message
    assert "Copy" in message and "download=True" in message


def test_data_module_without_download_raises_for_missing_files(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*download=True"):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError):
        dm.setup("fit")
    assert not (tmp_path / "empty").exists()  # nothing written


def test_loading_writes_nothing(tmp_path):
    copy_mnist_files(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    load_mnist(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d[:-1], r"wrong length: its header \(60000,\) needs 60008 bytes, found 60007"),
        (lambda d: d + b"\x07", r"wrong length: its header \(60000,\) needs 60008 bytes, found 60009"),
        # a well-formed labels file of 59,999 labels (one fewer than there are images): only the checksum knows
        (lambda d: struct.pack(">ii", 2049, 59_999) + d[8:-1], r"failed its checksum"),
        (lambda d: b"", r"wrong IDX magic number: expected 2049, found only 0 bytes"),
        (lambda d: d[:6], r"truncated: expected a 8-byte header, found 6"),
    ],
    ids=["one label short", "one label too many", "consistent but 59999 labels", "empty", "header cut"],
)
def test_labels_file_of_the_wrong_length_is_a_clear_error_and_nothing_is_kept(tmp_path, idx_bytes, edit, message):
    data_dir = copy_mnist_files(tmp_path, skip="train-labels-idx1-ubyte")
    (data_dir / "train-labels-idx1-ubyte").write_bytes(edit(idx_bytes["train-labels-idx1-ubyte"]))
    before = sorted(os.listdir(data_dir))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte") as info:
        load_mnist(data_dir)
    assert re.search(message, str(info.value)), str(info.value)
    data = MNISTDataModule(data_dir=str(data_dir))
    with pytest.raises(ValueError, match=message):
        data.setup("fit")
    assert data.splits == {}  # no partial cache: a later setup() reads the files again
    assert sorted(os.listdir(data_dir)) == before  # and nothing was written


# --- other layouts ---------------------------------------------------------------------------------------------------


def test_raw_uncompressed_files_load_the_same_data(tmp_path, idx_bytes, mnist):
    for name, data in idx_bytes.items():
        (tmp_path / name).write_bytes(data)
    loaded = load_mnist(tmp_path)
    assert all(torch.equal(loaded[key], mnist[key]) for key in MNIST_FILES)


def test_torchvision_mnist_raw_layout_is_found(tmp_path, mnist):
    copy_mnist_files(tmp_path / "MNIST" / "raw")
    loaded = load_mnist(tmp_path)
    assert all(torch.equal(loaded[key], mnist[key]) for key in MNIST_FILES)
    dm = MNISTDataModule(data_dir=str(tmp_path))
    dm.prepare_data()  # finds the files: no download attempted
    dm.setup("test")
    assert len(dm.splits["test"][0]) == 10_000


# --- shuffling -------------------------------------------------------------------------------------------------------


def test_shuffling_is_reproducible_for_the_same_seed(datamodule):
    x, y, labels = datamodule.splits["train"]
    first = _epoch_ids(ShuffledBatches(x, y, torch.arange(50_000), 10, seed=1))
    torch.manual_seed(123)  # the global RNG must not matter
    again = _epoch_ids(ShuffledBatches(x, y, torch.arange(50_000), 10, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_shuffling_differs_between_seeds_and_between_epochs():
    batches = _ids_batches(1000, 10, seed=0)
    epoch_0, epoch_1 = torch.cat(_epoch_ids(batches)), torch.cat(_epoch_ids(batches))
    assert not torch.equal(epoch_0, epoch_1)
    for seed in (1, 2**32):  # 2**32: the CPU generator keeps only 32 bits of a seed; orders must still differ
        assert not torch.equal(epoch_0, torch.cat(_epoch_ids(_ids_batches(1000, 10, seed=seed))))
    assert not torch.equal(epoch_0, torch.arange(1000))


def test_every_training_example_appears_exactly_once_per_epoch(datamodule):
    x, y, _ = datamodule.splits["train"]
    batches = ShuffledBatches(x, y, torch.arange(50_000), 10, seed=0)
    for _ in range(2):
        rows, ids = zip(*((images, ids) for images, _, ids in batches))
        ids = torch.cat(ids)
        assert torch.equal(ids.sort().values, torch.arange(50_000))
        assert torch.equal(torch.cat(rows), x[ids])  # each row travels with its id (one gather: per-batch is slow)


def test_last_partial_batch_is_kept():
    sizes = [len(ids) for ids in _epoch_ids(_ids_batches(95, 10))]
    assert sizes == [10] * 9 + [5]


def test_iter_without_next_does_not_start_an_epoch():
    batches = _ids_batches(100, 10)
    iter(batches)  # what Lightning does once to check that the object is iterable
    assert torch.equal(torch.cat(_epoch_ids(batches)), torch.cat(_epoch_ids(_ids_batches(100, 10))))


def test_a_pass_stopped_early_is_followed_by_the_next_epoch():
    batches = _ids_batches(100, 10)
    it = iter(batches)
    next(it), next(it)  # like limit_train_batches=2
    stopped = torch.cat(_epoch_ids(batches))
    reference = _ids_batches(100, 10)
    _epoch_ids(reference)
    assert torch.equal(stopped, torch.cat(_epoch_ids(reference)))


# --- resuming --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [7, 10, 23])  # mid-epoch, exactly at an epoch's end, in the third epoch
def test_state_dict_resumes_at_the_same_batch(stop):
    reference = _ids_batches(95, 10, seed=5)
    uninterrupted = [ids for _ in range(3) for ids in _epoch_ids(reference)]
    first = _ids_batches(95, 10, seed=5)
    seen, it = [], iter(first)
    while len(seen) < stop:
        try:
            seen.append(next(it)[2])
        except StopIteration:
            it = iter(first)
    state = first.state_dict()
    resumed = _ids_batches(95, 10, seed=5)
    resumed.load_state_dict(state)
    while len(seen) < 30:
        seen.extend(_epoch_ids(resumed))
    assert all(torch.equal(a, b) for a, b in zip(seen, uninterrupted, strict=True))


def test_load_state_dict_rejects_a_different_global_batch_size():
    state = _ids_batches(100, 10).state_dict()
    with pytest.raises(ValueError, match="global_batch_size"):
        _ids_batches(100, 5).load_state_dict(state)
    _ids_batches(100, 5, world_size=2).load_state_dict(state)  # same global batch: fine


class _Recorder(L.LightningModule):
    r"""Records the labels of every training batch; the tiny linear model only gives the optimizer a step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(784, 10))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y, labels = batch
        self.seen.append(labels.clone())
        return ((x @ self.weight - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _small_datamodule(full: MNISTDataModule) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=10, seed=3)
    dm.splits = {name: tuple(t[:95] for t in split) for name, split in full.splits.items()}  # 10 batches, last 5
    return dm


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kwargs,
    )


@pytest.mark.filterwarnings("ignore:.*(val_dataloader|LeafSpec|ckpt_path).*")
def test_lightning_resumes_a_mid_epoch_checkpoint_at_the_same_batch(tmp_path, datamodule):
    from lightning.pytorch.callbacks import ModelCheckpoint

    reference = _Recorder()
    _trainer(max_epochs=3, enable_checkpointing=False).fit(reference, _small_datamodule(datamodule))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=15, save_top_k=-1)
    before = _Recorder()
    _trainer(max_steps=15, callbacks=[checkpoint]).fit(before, _small_datamodule(datamodule))
    saved = torch.load(checkpoint.best_model_path, weights_only=False)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["position"] == 5  # epoch 1, batch 5 next
    after = _Recorder()
    _trainer(max_epochs=3, enable_checkpointing=False).fit(
        after, _small_datamodule(datamodule), ckpt_path=checkpoint.best_model_path
    )
    assert len(before.seen) + len(after.seen) == len(reference.seen) == 30
    assert all(torch.equal(a, b) for a, b in zip(before.seen + after.seen, reference.seen, strict=True))


# --- DDP sharding ----------------------------------------------------------------------------------------------------


def test_two_ranks_with_batch_5_see_per_step_what_one_rank_with_batch_10_sees():
    single = _epoch_ids(_ids_batches(50_000, 10, seed=2))
    ranks = [_epoch_ids(_ids_batches(50_000, 5, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 5000
    for step, ids in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][step], ranks[1][step]]), ids)


def test_ranks_split_the_final_partial_chunk_without_dropping_or_repeating():
    ranks = [_epoch_ids(_ids_batches(95, 10, seed=2, rank=r, world_size=3)) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]  # same number of steps on every rank
    assert [len(r[-1]) for r in ranks] == [1, 2, 2]  # the last 5 examples, split as evenly as possible
    assert torch.equal(torch.cat([ids for r in ranks for ids in r]).sort().values, torch.arange(95))


def test_evaluation_batches_are_in_file_order_and_sharded(datamodule):
    x, y, labels = datamodule.splits["val"]
    ranks = [OrderedBatches(x, y, labels, 1000, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 5
    steps = [torch.cat([b[2] for b in step]) for step in zip(*ranks)]
    assert torch.equal(torch.cat(steps), labels)


def test_an_epoch_shortened_by_limit_ends_at_the_limit_and_the_next_starts_a_new_order():
    images, labels = torch.rand(40, 784), torch.arange(40) % 10
    targets = torch.nn.functional.one_hot(labels, 10).float()
    limited = ShuffledBatches(images, targets, labels, batch_size=4, seed=1, limit=3)
    whole = ShuffledBatches(images, targets, labels, batch_size=4, seed=1)
    first = [b[2] for b in limited]
    assert len(first) == 3 and limited.state_dict()["epoch"] == 1 and limited.state_dict()["position"] == 0
    whole_epochs = [[b[2] for b in whole] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(first, whole_epochs[0][:3]))  # the same order, cut short
    second = [b[2] for b in limited]
    assert all(torch.equal(a, b) for a, b in zip(second, whole_epochs[1][:3]))  # the next epoch's order
    with pytest.raises(ValueError, match="limit must be a positive number of batches"):
        ShuffledBatches(images, targets, labels, batch_size=4, limit=0)
