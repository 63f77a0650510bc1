"""The data module's and the classifier's chapter-3 options: a training set cut to its first images (the book's
``training_data[:1000]``), the artificially expanded training data, L1 regularisation and dropout, a population's
members with them (η and λ per member; what a population cannot apply refused in one line), checked against
an independent parse of the MNIST files, numpy shifts, plain ``Network.sgd_step`` loops over the same mini-batches,
the book's evaluation rule written out in torch, and the real command.
"""

from __future__ import annotations

import copy
import gzip
import struct

import lightning as L
import numpy as np
import pytest
import torch
from conftest import DATA_DIR, book_shift, manualbp, quiet, write_config

from torch_manualbp import Network
from torch_manualbp.cli import main
from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule


def _raw_training_images() -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 training images and labels, parsed with numpy and struct (not the package's reader)."""
    images = gzip.decompress((DATA_DIR / "train-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((DATA_DIR / "train-labels-idx1-ubyte.gz").read_bytes())
    n, rows, cols = struct.unpack(">iii", images[4:16])
    return np.frombuffer(images, np.uint8, offset=16).reshape(n, rows, cols), np.frombuffer(labels, np.uint8, offset=8)


@pytest.fixture(scope="module")
def raw():
    return _raw_training_images()


def _module(**kwargs) -> MNISTDataModule:
    data = MNISTDataModule(data_dir=str(DATA_DIR), **kwargs)
    data.setup("fit")
    return data


# --- train_size and expand ------------------------------------------------------------------------------------------


def test_train_size_keeps_the_first_images_of_the_training_set_and_the_whole_validation_and_test_sets(raw):
    images, labels = raw
    data = _module(train_size=1000)
    x, y, got_labels = data.splits["train"]
    assert x.shape == (1000, 784) and y.shape == (1000, 10)
    np.testing.assert_array_equal(x.numpy(), images[:1000].reshape(1000, 784).astype(np.float32) / 255.0)
    np.testing.assert_array_equal(got_labels.numpy(), labels[:1000])
    assert len(data.splits["val"][0]) == len(data.splits["test"][0]) == 10_000
    np.testing.assert_array_equal(data.splits["val"][2].numpy(), labels[50_000:])  # the validation set is unchanged


def test_an_epoch_of_a_cut_training_set_visits_each_of_its_images_once_in_a_new_order_each_epoch():
    data = _module(train_size=1000, batch_size=64)
    loader = data.train_dataloader()
    epochs = [torch.cat([batch[0] for batch in loader]) for _ in range(2)]
    train = data.splits["train"][0]
    for seen in epochs:
        assert seen.shape == train.shape
        assert torch.equal(torch.unique(seen, dim=0), torch.unique(train, dim=0))  # the same rows, as many
    assert not torch.equal(epochs[0], epochs[1])


def test_expand_follows_each_of_the_first_train_size_images_by_its_four_one_pixel_shifts(raw):
    images, labels = raw
    data = _module(train_size=300, expand=True)
    x, y, got_labels = data.splits["train"]
    assert x.shape == (1500, 784)  # train_size images first, then expanded: 5 × 300
    by_image = (x.numpy() * 255).round().astype(np.uint8).reshape(300, 5, 28, 28)
    first = images[:300]
    np.testing.assert_array_equal(by_image[:, 0], first)
    for k, (d, axis) in enumerate([(1, 0), (-1, 0), (1, 1), (-1, 1)], start=1):  # down, up, right, left
        np.testing.assert_array_equal(by_image[:, k], book_shift(first, d, axis))
    np.testing.assert_array_equal(got_labels.numpy(), np.repeat(labels[:300], 5))
    assert torch.equal(y.argmax(1), got_labels)
    assert torch.equal(_module(train_size=300, expand=True).splits["train"][0], x)  # deterministic


def test_expand_without_train_size_gives_the_books_250000_training_images():
    data = _module(expand=True)
    x, _, labels = data.splits["train"]
    assert x.shape == (250_000, 784) and x.dtype == torch.float32
    assert x.numel() * x.element_size() == 784_000_000  # the memory the docstring states
    assert len(labels) == 250_000 and len(data.splits["val"][0]) == 10_000


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"train_size": 0}, ValueError),
        ({"train_size": 50_001}, ValueError),
        ({"train_size": True}, TypeError),
        ({"train_size": 100.0}, TypeError),
        ({"expand": "yes"}, TypeError),
    ],
)
def test_bad_train_size_or_expand_is_an_error_naming_it(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        MNISTDataModule(data_dir=str(DATA_DIR), **kwargs)


# --- L1 and dropout in the classifier -------------------------------------------------------------------------------


class KeepBatches(L.Callback):
    """Keeps a copy of every training batch, in order: the mini-batches a reference loop must step through."""

    def __init__(self) -> None:
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batches.append(tuple(t.clone() for t in batch))


def _fit(model: ManualBPClassifier, steps: int, **data) -> KeepBatches:
    kept = KeepBatches()
    trainer = L.Trainer(
        max_steps=steps * (model.hparams.mini_batch_size or 100) // 100, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, precision="64-true",
        callbacks=[kept],
    )  # fmt: skip  # max_steps counts Lightning batches of 100 images
    trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=100, **data))
    return kept


def _sgd_loop(network: Network, batches, steps_each: int, **step) -> None:
    """``Network.sgd_step`` on each mini-batch of 10 of each batch, in order: the reference the module must equal."""
    for x, _, labels in batches:
        for start in range(0, steps_each * 10, 10):
            network.sgd_step(x[start : start + 10], labels[start : start + 10], **step)


@quiet
@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_l1_training_makes_the_updates_of_a_plain_l1_sgd_step_loop_float64(cost):
    torch.manual_seed(0)
    settings = {"lmbda": 5.0, "training_set_size": 1000, "regularization": "l1"}
    model = ManualBPClassifier([784, 30, 10], eta=0.5, cost=cost, **settings)
    reference = copy.deepcopy(model.network).double()
    kept = _fit(model, 40, train_size=1000)
    _sgd_loop(reference, kept.batches, 10, eta=0.5, lmbda=5.0, n=1000, regularization="l1")
    for got, want in zip(model.network.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@quiet
def test_dropout_training_makes_the_updates_of_a_plain_dropout_sgd_step_loop_with_the_same_generator_float64():
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 20, 10], eta=0.5, cost="cross_entropy", dropout=0.5)
    reference = copy.deepcopy(model.network).double()
    plain = copy.deepcopy(reference)
    generator = torch.Generator()
    generator.set_state(model.sgd.generator_state())  # the masks' stream, from where the module's starts
    kept = _fit(model, 30)
    _sgd_loop(reference, kept.batches, 10, eta=0.5, dropout=0.5, generator=generator)
    for got, want in zip(model.network.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    _sgd_loop(plain, kept.batches, 10, eta=0.5)
    assert not torch.allclose(plain.layers[0].weight, reference.layers[0].weight)  # the masks did change the steps


@quiet
def test_dropout_networks_are_evaluated_with_the_outgoing_weights_of_hidden_neurons_scaled_by_the_fraction_kept():
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 10], eta=0.5, cost="cross_entropy", dropout=0.5)
    data = _module(batch_size=100)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=100, limit_val_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    x, _, labels = data.splits["val"]
    x, labels = x[:2000], labels[:2000]
    (w1, b1), (w2, b2) = [(layer.weight, layer.bias) for layer in model.network.layers]
    with torch.no_grad():
        hidden = torch.sigmoid(x @ w1.T + b1)
        want = torch.sigmoid(hidden @ (0.5 * w2).T + b2)  # the book: the hidden layer's outgoing weights halved
        torch.testing.assert_close(model(x), want)
        accuracy = (want.argmax(1) == labels).float().mean()
    assert trainer.callback_metrics["val/accuracy"] == pytest.approx(accuracy.item(), abs=1e-6)
    assert not torch.equal(model.network(x).argmax(1), want.argmax(1))  # the unscaled network answers otherwise


@quiet
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_a_classifier_of_another_activation_makes_a_plain_sgd_step_loops_updates_float64(activation):
    # Network.sgd_step with each activation equals autograd + SGD (tests/test_network_activations.py)
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 10], eta=0.5, cost="cross_entropy", init="scaled", activation=activation)
    reference = copy.deepcopy(model.network).double()
    kept = _fit(model, 30)
    _sgd_loop(reference, kept.batches, 10, eta=0.5)
    for got, want in zip(model.network.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    population = ManualBPClassifier([784, 30, 10], eta=[0.5, 1.0], seeds=[0, 1], activation=activation)
    assert population.population.activation.name == activation


# --- a population's options: each member as a plain loop from its seed ------------------------------------------

F64 = dict(rtol=1e-10, atol=1e-10)


def _seeded_network(sizes, seed: int, **kwargs) -> Network:
    """The network ``torch.manual_seed(seed)`` then ``Network(sizes)`` draws, in float64: a member's start."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Network(sizes, init="normal", **kwargs).double()  # the classifier's default init


def _assert_member_equals(model: ManualBPClassifier, k: int, network: Network) -> None:
    weights, biases = model.population.member_parameters(k)
    for got, want in zip(
        weights + biases, [layer.weight for layer in network.layers] + [l.bias for l in network.layers]
    ):
        torch.testing.assert_close(got, want, **F64)


@quiet
@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_a_population_with_l1_trains_each_member_as_a_plain_l1_loop_from_its_seed_with_its_eta_and_lmbda(cost):
    seeds, etas, lmbdas = [3, 5], [0.5, 2.0], [5.0, 1.0]
    model = ManualBPClassifier(
        [784, 30, 10], eta=etas, lmbda=lmbdas, seeds=seeds, cost=cost, regularization="l1", training_set_size=1000
    )
    kept = _fit(model, 40, train_size=1000)
    for k, seed in enumerate(seeds):
        network = _seeded_network([784, 30, 10], seed, cost=cost)
        _sgd_loop(network, kept.batches, 10, eta=etas[k], lmbda=lmbdas[k], n=1000, regularization="l1")
        _assert_member_equals(model, k, network)


@quiet
def test_a_population_with_dropout_trains_each_member_with_its_own_masks_as_a_plain_dropout_loop():
    torch.manual_seed(0)
    seeds, etas = [0, 1, 2], [0.5, 1.0, 3.0]
    model = ManualBPClassifier([784, 30, 20, 10], eta=etas, seeds=seeds, cost="cross_entropy", dropout=0.5)
    states = model.sgd.generator_state()  # (K, state): each member's masks' stream, from where its training starts
    kept = _fit(model, 30)
    for k, seed in enumerate(seeds):
        network = _seeded_network([784, 30, 20, 10], seed, cost="cross_entropy")
        generator = torch.Generator()
        generator.set_state(states[k].clone())
        _sgd_loop(network, kept.batches, 10, eta=etas[k], dropout=0.5, generator=generator)
        _assert_member_equals(model, k, network)
    first, second = (model.population.member_parameters(k)[0][0] for k in (0, 1))
    plain = _seeded_network([784, 30, 20, 10], 0, cost="cross_entropy")
    _sgd_loop(plain, kept.batches, 10, eta=etas[0])
    assert not torch.allclose(plain.layers[0].weight, first)  # the masks did change member 0's steps


def test_a_populations_forward_is_every_members_output_and_member_k_is_that_members_alone():
    model = ManualBPClassifier([784, 30, 10], seeds=[0, 1, 2], dropout=0.5)
    x = torch.rand(5, 784)
    a = model(x)
    assert a.shape == (3, 5, 10)
    for k, seed in enumerate((0, 1, 2)):
        network = _seeded_network([784, 30, 10], seed).float()
        with torch.no_grad():
            hidden = torch.sigmoid(x @ network.layers[0].weight.T + network.layers[0].bias)
            want = torch.sigmoid(hidden @ (0.5 * network.layers[1].weight).T + network.layers[1].bias)
        torch.testing.assert_close(a[k], want)  # the book's evaluation: outgoing hidden weights × (1 − p)
    alone = ManualBPClassifier([784, 30, 10], seeds=[0, 1, 2], dropout=0.5, member=1)
    torch.testing.assert_close(alone(x), a[1])


def test_member_on_a_single_network_or_out_of_range_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="^member picks a member of a population"):
        ManualBPClassifier([784, 30, 10], member=0)
    with pytest.raises(ValueError, match=r"^member must be a member's index in 0\.\.1"):
        ManualBPClassifier([784, 30, 10], seeds=[0, 1], member=2)


# --- through the command --------------------------------------------------------------------------------------------

SHORT = {"trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("manualbp: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--data.train_size", "0"], "data.train_size must lie in 1..50000"),
        (["--model.dropout", "1.0"], "model.dropout must be a fraction in [0, 1)"),
        (["--model.regularization", "l3"], "model.regularization"),
        (["--model.dropout", "0.5", "--model.sizes", "[784, 10]"], "has no hidden layer"),
        (["--model.lmbda", "0.1", "--data.train_size", "1000"], "set model.training_set_size: 1000"),
        (["--model.lmbda", "5", "--data.expand", "true"], "set model.training_set_size: 250000"),
        (["--model.momentum", "0.9", "--population.seeds", "[0, 1]"], "a population trains on the fused SGD step"),
    ],
)
def test_bad_chapter_3_settings_are_one_line_and_exit_status_2(tmp_path, capsys, args, words):
    config = write_config(tmp_path, **SHORT)
    assert main(["fit", "--config", str(config), *args]) == 2
    assert words in _error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model.momentum", "0.9"], "model.regularization='l1' is applied by the fused SGD step only"),
        (["--optimizer", "Adam"], "model.dropout=0.5 is applied by the fused SGD step only"),
    ],
)
def test_l1_or_dropout_on_a_run_that_goes_through_autograd_is_one_line(tmp_path, capsys, args, words):
    settings = {"lmbda": 5.0, "regularization": "l1"} if "momentum" in args[0] else {"dropout": 0.5}
    config = write_config(tmp_path, model={"sizes": [784, 30, 10], **settings}, **SHORT)
    assert main(["fit", "--config", str(config), *args]) == 2
    line = _error_line(capsys)
    assert words in line and "through autograd" in line, line


def test_a_dropout_run_through_the_command_trains_and_reports_the_scaled_networks_accuracy(tmp_path):
    config = write_config(
        tmp_path, model={"sizes": [784, 30, 10], "eta": 3.0, "dropout": 0.5}, data={"train_size": 5000}, **SHORT
    )
    result = manualbp("fit", "--config", config, "--trainer.limit_train_batches", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training with the fused SGD step" in result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("Epoch 0"))
    assert "/ 1000" in line, line  # limit_val_batches 1: the first 1,000 validation images


SPEED = "torch_manualbp.lightning.LearningSpeedMonitor"
HALVE = "torch_manualbp.lightning.HalveEtaOnPlateau"
MONITOR = "torch_manualbp.lightning.TrainingSetMonitor"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model.momentum", "0.9"], "a population trains on the fused SGD step only, and this run needs autograd"),
        (["--model.weight_decay", "0.1"], "a population trains on the fused SGD step only"),
        (["--optimizer", "Adam"], "optimizer: a population trains by the book's SGD alone"),
        (["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1"], "--lr_scheduler: a population's members"),
        (["--model.lr_schedule", "cosine"], "model.lr_schedule='cosine': a population's members keep their own η"),
        (["--trainer.precision", "bf16-mixed"], "needs autograd: precision=bf16-mixed (autocast)"),
        (["--trainer.callbacks+", SPEED], "LearningSpeedMonitor observe single steps through autograd"),
        (["--trainer.callbacks+", HALVE], "HalveEtaOnPlateau work on one network"),
        (["--trainer.callbacks+", MONITOR], "TrainingSetMonitor work on one network"),
        # its optimizer only counts Lightning's batches, at lr 0: the members' η are their own
        (["--trainer.callbacks+", "LearningRateMonitor"], "LearningRateMonitor work on one network"),
    ],
)
def test_what_a_population_cannot_apply_is_one_line_and_exit_status_2(tmp_path, capsys, args, words):
    config = write_config(tmp_path, population={"seeds": [0, 1]}, **SHORT)
    assert main(["fit", "--config", str(config), *args]) == 2
    assert words in _error_line(capsys)


def test_a_step_observer_beside_another_activation_is_one_line_and_exit_status_2(tmp_path, capsys):
    config = write_config(tmp_path, **SHORT)
    args = ["--model.activation", "relu", "--trainer.callbacks+", SPEED]
    assert main(["fit", "--config", str(config), *args]) == 2
    assert "LearningSpeedMonitor watch sigmoid layers, and model.activation is 'relu'" in _error_line(capsys)
