"""Hardening: hostile inputs with a defined result, divergence stopped with a clear message, SIGKILL during a
checkpoint write, bad configs and arguments as one-line errors, broken data files. See docs/hostile_inputs.md
and docs/guarantees.md for what each test proves."""
from __future__ import annotations

import gzip
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from test_lightning import ROOT, final_weights, run_cli, write_config
from torch_manualbp.cli import main
from torch_manualbp.functional import quadratic_cost, sigmoid_linear
from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule
from torch_manualbp.lightning.cli import ConfigError
from torch_manualbp.lightning.safety import AtomicCheckpointIO, DivergenceError, DivergenceGuard
from torch_manualbp.mnist import MNIST_FILES, load_mnist

DATA_DIR = ROOT / "data" / "mnist"
TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
quiet = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


# --- hostile inputs with a result rather than an error (the errors are rows of test_bad_input.py) -----------------


def test_empty_batch_gives_an_empty_output_and_zero_gradients():
    x = torch.rand(0, 3, requires_grad=True)
    w, b = torch.randn(2, 3, requires_grad=True), torch.randn(2, requires_grad=True)
    a = sigmoid_linear(x, w, b)
    assert a.shape == (0, 2)
    cost = quadratic_cost(a, torch.zeros(0, dtype=torch.long), reduction="sum")
    assert cost.item() == 0.0 and quadratic_cost(a, torch.zeros(0, 2), reduction="none").shape == (0,)
    cost.backward()
    assert torch.equal(w.grad, torch.zeros(2, 3)) and torch.equal(b.grad, torch.zeros(2)) and x.grad.shape == (0, 3)


def test_single_example_and_3d_inputs_are_supported_like_nn_linear():
    w, b = torch.randn(2, 3), torch.randn(2)
    x = torch.randn(4, 5, 3)
    assert sigmoid_linear(x[0, 0], w, b).shape == (2,)  # one example, no batch dimension
    torch.testing.assert_close(sigmoid_linear(x, w, b), torch.sigmoid(torch.nn.functional.linear(x, w, b)))
    assert quadratic_cost(torch.rand(4, 5, 2), torch.randint(0, 2, (4, 5)), reduction="none").shape == (4, 5)


def test_nan_in_one_example_stays_in_that_example():
    """NaN is not checked for per call (a host sync); it propagates like torch's own ops, and only where it must."""
    x = torch.rand(3, 4)
    x[1, 2] = torch.nan
    a = sigmoid_linear(x, torch.randn(2, 4), torch.randn(2))
    assert torch.isnan(a[1]).all() and torch.isfinite(a[[0, 2]]).all()
    costs = quadratic_cost(a, torch.tensor([0, 1, 0]), reduction="none")
    assert torch.isnan(costs[1]) and torch.isfinite(costs[[0, 2]]).all()


# --- divergence ----------------------------------------------------------------------------------------------------


def _batches(n_batches: int = 12, nan_at: int | None = None) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5 * n_batches, 4, generator=g)
    labels = torch.randint(0, 2, (5 * n_batches,), generator=g)
    if nan_at is not None:
        x[5 * nan_at] = torch.nan
    return DataLoader(TensorDataset(x, torch.eye(2)[labels], labels), batch_size=5)


def _trainer(tmp_path: Path, callbacks, **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu", max_steps=100, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        **kwargs,
    )  # fmt: skip


def _blowing_up() -> ManualBPClassifier:
    r"""A learning rate too large for the weight decay: w ← w − η(∂C/∂w + λw) = (1 − ηλ)w − η ∂C/∂w multiplies the
    weights by |1 − ηλ| = 29 at every step, so they overflow float32 after about 25 steps. (A large η alone cannot
    do it with sigmoid neurons and the quadratic cost: the gradients are bounded and saturated neurons have
    σ'(z) = 0 exactly, so the weights stop growing; and SGD refuses an η beyond float32's range.)"""
    torch.manual_seed(0)
    return ManualBPClassifier([4, 3, 2], eta=30.0, weight_decay=1.0)


class _Costs(L.Callback):
    """Records each step's cost independently of the guard."""

    def __init__(self) -> None:
        self.costs: dict[int, float] = {}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.costs[trainer.global_step] = loss.item()


def _diverged_at(message: str) -> int:
    found = re.search(r"training diverged at step (\d+) \(epoch \d+\)", message)
    assert found, message
    return int(found.group(1))


@quiet
def test_a_learning_rate_that_blows_up_stops_at_the_step_naming_the_parameters(tmp_path):
    costs = _Costs()
    trainer = _trainer(tmp_path, [costs, DivergenceGuard(every_n_steps=1)])
    model = _blowing_up()
    with pytest.raises(DivergenceError) as info:
        trainer.fit(model, _batches())
    message = str(info.value)
    step = _diverged_at(message)
    assert step == trainer.global_step > 10  # stopped at once, before applying another update
    finite_until = max(s for s, c in costs.costs.items() if torch.isfinite(torch.tensor(c)))
    assert finite_until >= step - 1  # every earlier step's cost was finite: the first bad one is the one named
    assert "non-finite parameters: network.layers." in message and "values)" in message
    assert "learning rate 30" in message and "eta * weight_decay = 30 > 2" in message
    assert "stopped before applying the update" in message


@quiet
def test_checking_every_n_steps_reports_the_same_step_a_few_steps_later(tmp_path):
    trainer = _trainer(tmp_path, [DivergenceGuard(every_n_steps=1)])
    with pytest.raises(DivergenceError) as every_step:
        trainer.fit(_blowing_up(), _batches())
    trainer = _trainer(tmp_path, [DivergenceGuard(every_n_steps=8)])
    with pytest.raises(DivergenceError) as every_8:
        trainer.fit(_blowing_up(), _batches())
    step = _diverged_at(str(every_step.value))
    assert (trainer.global_step + 1) % 8 == 0 and step <= trainer.global_step < step + 8
    # a non-finite cost is reported at the exact step it happened, even when found later
    if "training cost is" in str(every_step.value):
        assert _diverged_at(str(every_8.value)) == step


@quiet
def test_nan_in_the_data_is_reported_as_such_with_the_parameters_still_finite(tmp_path):
    torch.manual_seed(0)
    model = ManualBPClassifier([4, 3, 2], eta=0.5)
    trainer = _trainer(tmp_path, [DivergenceGuard(every_n_steps=1)])
    with pytest.raises(DivergenceError) as info:
        trainer.fit(model, _batches(nan_at=2))
    message = str(info.value)
    assert "training diverged at step 2 (epoch 0): the training cost is nan" in message
    assert "every parameter is finite" in message and "non-finite gradients: network.layers.0.weight" in message
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN gradients were never applied


@quiet
def test_no_checkpoint_of_non_finite_weights_is_written_and_the_last_good_one_stays(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    # every_n_steps=1000: the periodic check comes too late; the check before each checkpoint must catch it
    trainer = _trainer(tmp_path, [DivergenceGuard(every_n_steps=1000), checkpoint], enable_checkpointing=True)
    with pytest.raises(DivergenceError) as info:
        trainer.fit(_blowing_up(), _batches())
    step = _diverged_at(str(info.value))
    assert f"the parameters are non-finite after {step} updates" in str(info.value)
    assert "the checkpoint due now was not written" in str(info.value)
    assert str(tmp_path / "ckpt" / "last.ckpt") in str(info.value)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == step - 1  # the checkpoint just before the blow-up, whole and finite
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert os.listdir(tmp_path / "ckpt") == ["last.ckpt"]  # no temporary file left behind


class _SetBiasToInf(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == 3:
            with torch.no_grad():
                pl_module.network.layers[1].bias[0] = torch.inf  # σ(∞) = 1: the cost stays finite


@quiet
@pytest.mark.parametrize("every,step", [(1, 3), (None, 99)])  # the default checks the parameters every 100 steps
def test_a_non_finite_parameter_under_a_finite_cost_is_caught(tmp_path, every, step):
    torch.manual_seed(0)
    guard = DivergenceGuard(every_n_steps=1) if every is None else DivergenceGuard(1, parameters_every_n_steps=every)
    trainer = _trainer(tmp_path, [guard, _SetBiasToInf()])
    with pytest.raises(DivergenceError) as info:
        trainer.fit(ManualBPClassifier([4, 3, 2], eta=0.5), _batches())
    message = str(info.value)
    assert f"training diverged at step {step} (epoch {step // 12}): the parameters are non-finite" in message
    assert "non-finite parameters: network.layers.1.bias (1 of 2 values)" in message


def test_divergence_guard_rejects_a_bad_interval():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="every_n_steps"):
            DivergenceGuard(every_n_steps=bad)
        with pytest.raises(ValueError, match="parameters_every_n_steps"):
            DivergenceGuard(parameters_every_n_steps=bad)


def test_cli_run_that_diverges_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    every = 5
    config = write_config(
        tmp_path, "diverged", model={"eta": 30.0, "weight_decay": 1.0, "mini_batch_size": None},
        data={"monitor_test": False, "batch_size": 10}, trainer={"max_epochs": 30},
    )  # fmt: skip
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["callbacks"][1]["init_args"]["every_n_train_steps"] = every
    config.write_text(yaml.safe_dump(settings))
    result = run_cli(config, env=ENV)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("manualbp: error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0])
    step = _diverged_at(errors[0])
    assert "non-finite parameters: network.layers." in errors[0] and "learning rate 30" in errors[0]
    assert step < 100  # stopped at once: not 30 epochs of NaN
    saved = torch.load(tmp_path / "diverged" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    assert step - every <= saved["global_step"] < step  # the last checkpoint before the divergence, untouched
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


# --- atomic checkpoints --------------------------------------------------------------------------------------------


class _FailHalfway(AtomicCheckpointIO):
    def _write(self, checkpoint, file) -> None:
        file.write(b"half a checkpoint")
        raise OSError("disk full")


def test_atomic_save_replaces_the_file_whole_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 2
    assert os.listdir(target.parent) == ["last.ckpt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user creates, not mkstemp's 0o600


def test_a_failed_write_leaves_the_previous_checkpoint_untouched(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
    before = target.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        _FailHalfway().save_checkpoint({"step": 2}, target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]


def test_resuming_from_last_ignores_a_temporary_file_left_by_a_kill(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    stale = tmp_path / ".last.ckpt.12345.0badf00d.tmp"
    stale.write_bytes(b"half")
    found = ModelCheckpoint(dirpath=tmp_path)._find_last_checkpoints(None)  # what ckpt_path="last" chooses from
    assert found == {str(tmp_path / "last.ckpt")}
    AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    assert not stale.exists()  # the next save of the same file cleans up after the killed one


def test_sigkill_during_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(tmp_path):
    fast = {
        "model": {"mini_batch_size": None},  # one SGD step per batch of 500
        "data": {"batch_size": 500, "monitor_test": False},
        "trainer": {"max_epochs": 2, "limit_val_batches": 2},
    }
    straight = write_config(tmp_path, "straight", **fast)
    killed = write_config(tmp_path, "killed", **fast)
    for path in (straight, killed):
        config = yaml.safe_load(path.read_text())
        config["trainer"]["callbacks"][1]["init_args"]["every_n_train_steps"] = 40  # 100 steps per epoch
        if path == killed:
            killer = {"class_path": "kill_mid_checkpoint.KillMidCheckpointWrite", "init_args": {"step": 120}}
            config["trainer"]["plugins"] = [killer]
        path.write_text(yaml.safe_dump(config))
    assert run_cli(straight, env=ENV).returncode == 0

    interrupted = run_cli(killed, env=ENV)
    assert interrupted.returncode == -signal.SIGKILL, interrupted.stderr[-3000:]
    last_dir = tmp_path / "killed" / "last"
    saved = torch.load(last_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 80  # the previous checkpoint, whole; the one at step 120 was cut in half
    (partial,) = last_dir.glob(".last.ckpt.*.tmp")
    with pytest.raises(Exception):
        torch.load(partial, map_location="cpu", weights_only=True)

    config = yaml.safe_load(killed.read_text())
    del config["trainer"]["plugins"]  # resume as a user would, with the default (atomic) checkpoint writer
    killed.write_text(yaml.safe_dump(config))
    resumed = run_cli(killed, "--ckpt_path", "last", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = final_weights(tmp_path, "straight"), final_weights(tmp_path, "killed")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert not list(last_dir.glob("*.tmp")) and not list(last_dir.glob(".*.tmp"))


# --- bad configs and arguments: one line, exit status 2 --------------------------------------------------------------


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("config"), trainer={"max_epochs": 1})


def _with(base: Path, tmp_path: Path, section: str, key: str, value) -> Path:
    settings = yaml.safe_load(base.read_text())
    settings[section][key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("manualbp: error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]


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
    ("missing data dir", "data", "data_dir", "/nonexistent/mnist", ["data.data_dir", "/nonexistent/mnist", "not a directory"]),
    ("negative epochs", "trainer", "max_epochs", -5, ["max_epochs", "-5"]),
]


@quiet
@pytest.mark.parametrize("section,key,value,words", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_a_one_line_error_with_exit_status_2(base_config, tmp_path, capsys, section, key, value, words):
    config = _with(base_config, tmp_path, section, key, value)
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
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
        (["fit", "--config", str(base_config), "--data.data_dir", str(incomplete)], ["data.data_dir", "t10k-labels-idx1-ubyte", "--data.download true"]),
        (["fit", "--config", str(base_config), "--ckpt_path", str(tmp_path / "none.ckpt")], ["ckpt_path", "none.ckpt", "not a file"]),
        (["fit", "--config", str(base_config), "--ckpt_path", str(truncated)], ["ckpt_path", "cut.ckpt", "not a readable checkpoint"]),
        (["fitt", "--config", str(base_config)], ["invalid choice", "'fitt'"]),
        (["test", "--config", str(base_config), "--model.eta", "0"], ["model.eta"]),
    ]  # fmt: skip
    for args, words in cases:
        assert main(args) == 2, args
        line = _one_error_line(capsys)
        assert all(word in line for word in words), (args, line)


@quiet
def test_manualbp_debug_shows_the_traceback_instead(base_config, monkeypatch):
    monkeypatch.setenv("MANUALBP_DEBUG", "1")
    with pytest.raises(ConfigError, match="must start with 784"):
        main(["fit", "--config", str(base_config), "--model.sizes", "[100, 30, 10]"])


def test_the_installed_command_prints_exactly_one_line(tmp_path):
    command = [sys.executable, "-m", "torch_manualbp.cli", "fit", "--model.sizes", "[100, 30, 10]"]
    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (
        "manualbp: error: model.sizes must start with 784 (MNIST images have 784 pixels), got [100, 30, 10]\n"
    )
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@quiet
def test_corrupted_data_during_fit_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    data = tmp_path / "mnist"
    data.mkdir()
    for name in MNIST_FILES.values():
        (data / f"{name}.gz").write_bytes((DATA_DIR / f"{name}.gz").read_bytes())
    labels = gzip.decompress((data / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (data / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels[:-1], compresslevel=1))
    args = ["fit", "--data.data_dir", str(data), "--trainer.logger", "false", "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(tmp_path / "root")]  # fmt: skip
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "t10k-labels-idx1-ubyte.gz" in line and "wrong length" in line and "ValueError" in line


# --- data files ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_labels() -> bytes:
    return gzip.decompress((DATA_DIR / "train-labels-idx1-ubyte.gz").read_bytes())


def _data_dir_with(tmp_path: Path, name: str, data: bytes) -> Path:
    """The four files, with ``name`` (raw, un-gzipped) replaced by ``data``."""
    for other in MNIST_FILES.values():
        if other != name:
            (tmp_path / f"{other}.gz").write_bytes((DATA_DIR / f"{other}.gz").read_bytes())
    (tmp_path / name).write_bytes(data)
    return tmp_path


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
def test_labels_file_of_the_wrong_length_is_a_clear_error_and_nothing_is_kept(tmp_path, train_labels, edit, message):
    data_dir = _data_dir_with(tmp_path, "train-labels-idx1-ubyte", edit(train_labels))
    before = sorted(os.listdir(data_dir))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte") as info:
        load_mnist(data_dir)
    assert re.search(message, str(info.value)), str(info.value)
    data = MNISTDataModule(data_dir=str(data_dir))
    with pytest.raises(ValueError, match=message):
        data.setup("fit")
    assert data.splits == {}  # no partial cache: a later setup() reads the files again
    assert sorted(os.listdir(data_dir)) == before  # and nothing was written

