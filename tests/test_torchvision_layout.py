"""``write_torchvision_layout`` writes a folder that ``torchvision.datasets.MNIST`` itself reads (torchvision is the
independent reader), holding exactly the digits the package loads."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA_DIR

from torch_manualbp.mnist import load_mnist, write_torchvision_layout

torchvision = pytest.importorskip("torchvision")


def test_torchvision_mnist_reads_the_written_layout_and_finds_the_packages_digits(tmp_path):
    raw = write_torchvision_layout(tmp_path, DATA_DIR)
    assert raw == tmp_path / "MNIST" / "raw"
    assert not list(raw.glob(".*"))  # no temporary file left
    ours = load_mnist(DATA_DIR)
    for train, prefix in ((True, "train"), (False, "test")):
        theirs = torchvision.datasets.MNIST(tmp_path, train=train, download=False)
        assert torch.equal(theirs.data, ours[f"{prefix}_images"])
        assert torch.equal(theirs.targets, ours[f"{prefix}_labels"])


def test_a_corrupted_source_file_is_refused_by_name(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for path in DATA_DIR.glob("*.gz"):
        (source / path.name).write_bytes(path.read_bytes())
    labels = source / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-20])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        write_torchvision_layout(tmp_path / "out", source)
