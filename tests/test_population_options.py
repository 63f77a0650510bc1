"""A population in ManualBPClassifier has a network's options or a one-line refusal: L1 and dropout with λ and η per
member make, member by member, the updates of a plain ``Network.sgd_step`` loop from that member's seed (float64, the
same Lightning batches); what would need autograd or one η for all is refused in one line by the command."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import DATA_DIR, quiet, write_config

from torch_manualbp import Network
from torch_manualbp.cli import main
from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule

F64 = dict(rtol=1e-10, atol=1e-10)


class KeepBatches(L.Callback):
    """Keeps a copy of every training batch, in order: the mini-batches the reference loops step through."""

    def __init__(self) -> None:
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batches.append(tuple(t.clone() for t in batch))


def _fit(model: ManualBPClassifier, steps: int, **data) -> KeepBatches:
    kept = KeepBatches()
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="64-true", callbacks=[kept],
    )  # fmt: skip
    trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=100, **data))
    return kept


def _seeded_network(sizes, seed: int, **kwargs) -> Network:
    """The network ``torch.manual_seed(seed)`` then ``Network(sizes)`` draws, in float64: a member's start."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Network(sizes, init="normal", **kwargs).double()  # the classifier's default init


def _sgd_loop(network: Network, batches, **step) -> None:
    """``Network.sgd_step`` on each mini-batch of 10 of each batch, in order."""
    for x, _, labels in batches:
        for start in range(0, len(x), 10):
            network.sgd_step(x[start : start + 10], labels[start : start + 10], **step)


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
        _sgd_loop(network, kept.batches, eta=etas[k], lmbda=lmbdas[k], n=1000, regularization="l1")
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
        _sgd_loop(network, kept.batches, eta=etas[k], dropout=0.5, generator=generator)
        _assert_member_equals(model, k, network)
    first, second = (model.population.member_parameters(k)[0][0] for k in (0, 1))
    plain = _seeded_network([784, 30, 20, 10], 0, cost="cross_entropy")
    _sgd_loop(plain, kept.batches, eta=etas[0])
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


SHORT = {"trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}}
SPEED = "torch_manualbp.lightning.LearningSpeedMonitor"


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
    ],
)
def test_what_a_population_cannot_apply_is_one_line_and_exit_status_2(tmp_path, capsys, args, words):
    config = write_config(tmp_path, population={"seeds": [0, 1]}, **SHORT)
    assert main(["fit", "--config", str(config), *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("manualbp: error:")]
    assert len(lines) == 1 and words in lines[0], err[-3000:]
    assert "Traceback" not in err
