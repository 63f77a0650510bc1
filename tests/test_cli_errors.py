"""Bad configs and arguments, and corrupted data found during setup, are one line from `manualbp`
(`manualbp: error: ...`, exit status 2) before anything is written; MANUALBP_DEBUG=1 shows the traceback instead."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CLI_ENV, copy_mnist_files, one_error_line, quiet, write_config

from torch_manualbp.cli import main
from torch_manualbp.lightning.cli import ConfigError
from torch_manualbp.lightning.safety import AtomicCheckpointIO
from torch_manualbp.mnist import MNIST_FILES


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("config"), trainer={"max_epochs": 1})


def _with(base: Path, tmp_path: Path, section: str, key: str, value) -> Path:
    settings = yaml.safe_load(base.read_text())
    settings[section][key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


CONFIG_CASES = [
    # (id, section, key, value, words the one-line message must contain)
    ("unknown key", "model", "hidden", 30, ["does not accept", "model.hidden"]),
    ("negative size", "model", "sizes", [784, -30, 10], ["model.sizes", "positive", "-30"]),
    ("one layer", "model", "sizes", [784], ["model.sizes", "at least two"]),
    ("sizes not from 784", "model", "sizes", [100, 30, 10], ["model.sizes must start with 784", "[100, 30, 10]"]),
    ("sizes not to 10", "model", "sizes", [784, 30, 5], ["model.sizes must end with 10", "[784, 30, 5]"]),
    ("zero learning rate", "model", "eta", 0.0, ["model.eta", "positive", "0.0"]),
    ("negative learning rate", "model", "eta", -3.0, ["model.eta", "-3.0"]),
    ("learning rate beyond float32", "model", "eta", 1e39, ["model.eta", "no larger than 3.403e+38", "1e+39"]),
    ("weight decay negative", "model", "weight_decay", -0.1, ["model.weight_decay", ">= 0"]),
    ("momentum 1", "model", "momentum", 1.0, ["model.momentum", "[0, 1)"]),
    ("sizes not a list", "model", "sizes", "784,30,10", ["model.sizes"]),
    ("zero batch size", "data", "batch_size", 0, ["data.batch_size", ">= 1"]),
    ("negative eval batch", "data", "eval_batch_size", -1, ["data.eval_batch_size"]),
    (
        "missing data dir",
        "data",
        "data_dir",
        "/nonexistent/mnist",
        ["data.data_dir", "/nonexistent/mnist", "not a directory"],
    ),
    ("negative epochs", "trainer", "max_epochs", -5, ["max_epochs", "-5"]),
]


@quiet
@pytest.mark.parametrize("section,key,value,words", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_a_one_line_error_with_exit_status_2(base_config, tmp_path, capsys, section, key, value, words):
    config = _with(base_config, tmp_path, section, key, value)
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    for word in words:
        assert word in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]  # nothing written


@quiet
def test_bad_arguments_are_one_line_errors(base_config, tmp_path, capsys):
    incomplete = tmp_path / "mnist"
    incomplete.mkdir()
    for name in list(MNIST_FILES.values())[:3]:
        (incomplete / f"{name}.gz").write_bytes(b"")
    truncated = tmp_path / "cut.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    cases = [
        (["fit", "--config", str(tmp_path / "missing.yaml")], ["missing.yaml", "does not exist"]),
        (["fit", "--config", str(base_config), "--model.sizes", "[784,30]", "--model.bogus", "1"], ["model.bogus"]),
        (
            ["fit", "--config", str(base_config), "--data.data_dir", str(incomplete)],
            ["data.data_dir", "t10k-labels-idx1-ubyte", "--data.download true"],
        ),
        (
            ["fit", "--config", str(base_config), "--ckpt_path", str(tmp_path / "none.ckpt")],
            ["ckpt_path", "none.ckpt", "not a file"],
        ),
        (
            ["fit", "--config", str(base_config), "--ckpt_path", str(truncated)],
            ["ckpt_path", "cut.ckpt", "not a readable checkpoint"],
        ),
        (["fitt", "--config", str(base_config)], ["invalid choice", "'fitt'"]),
        (["test", "--config", str(base_config), "--model.eta", "0"], ["model.eta"]),
    ]
    for args, words in cases:
        assert main(args) == 2, args
        line = one_error_line(capsys)
        assert all(word in line for word in words), (args, line)


@quiet
def test_manualbp_debug_shows_the_traceback_instead(base_config, monkeypatch):
    monkeypatch.setenv("MANUALBP_DEBUG", "1")
    with pytest.raises(ConfigError, match="must start with 784"):
        main(["fit", "--config", str(base_config), "--model.sizes", "[100, 30, 10]"])


def test_the_installed_command_prints_exactly_one_line(tmp_path):
    command = [sys.executable, "-m", "torch_manualbp.cli", "fit", "--model.sizes", "[100, 30, 10]"]
    result = subprocess.run(command, cwd=tmp_path, env=CLI_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (
        "manualbp: error: model.sizes must start with 784 (MNIST images have 784 pixels), got [100, 30, 10]\n"
    )
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@quiet
def test_corrupted_data_during_fit_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    data = copy_mnist_files(tmp_path / "mnist")
    labels = gzip.decompress((data / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (data / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels[:-1], compresslevel=1))
    args = [
        "fit",
        "--data.data_dir",
        str(data),
        "--trainer.logger",
        "false",
        "--trainer.max_steps",
        "100",  # one Lightning batch of SGD updates: a count inside one is refused before the data is read
        "--trainer.default_root_dir",
        str(tmp_path / "root"),
    ]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "t10k-labels-idx1-ubyte.gz" in line and "wrong length" in line and "ValueError" in line
