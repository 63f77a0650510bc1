"""Chapter 3's monitors and rules in real trainings on MNIST: TrainingSetMonitor against the training set's cost and
accuracy recomputed in plain torch, HalveEtaOnPlateau and Lightning's EarlyStopping against the book's loops over
the accuracies the run logged, the fused path trained at the schedule's η (replayed with Network.sgd_step), and a
killed and resumed run that continues the schedule."""

import contextlib
import copy
import io
import re
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA_DIR, edit_config, final_weights, logged, quiet, run_cli, write_config
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger

from torch_manualbp.lightning import (
    EpochReport,
    HalveEtaOnPlateau,
    ManualBPClassifier,
    MNISTDataModule,
    TrainingSetMonitor,
)
from torch_manualbp.lightning.callbacks import regularization_term
from torch_manualbp.lightning.datamodule import ShuffledBatches
from torch_manualbp.mnist import load_mnist

pytestmark = quiet


def fit(tmp_path, model, callbacks, **trainer):
    """A short real fit on MNIST (batches of 100, the first 1,000 validation images), its printed output captured."""
    settings = dict(limit_val_batches=1, enable_checkpointing=False, enable_progress_bar=False)
    trainer = L.Trainer(
        callbacks=callbacks, logger=CSVLogger(tmp_path, name="run"), enable_model_summary=False, **settings | trainer
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=100))
    return trainer, printed.getvalue()


def epoch_rows(trainer, key: str) -> list[float]:
    """The values of ``key`` that the run logged, in step order."""
    return [row[key] for _, row in sorted(logged(trainer).items()) if key in row]


def plain_torch_cost_and_accuracy(weights, biases, x, labels, cost: str, dropout: float) -> tuple[float, float]:
    """The mean cost C₀ and the accuracy of the sigmoid network, from F's own ops in float64; with dropout, each hidden
    activation scaled by 1 − p (the book's halved outgoing weights)."""
    a = x.double()
    for w, b in zip(weights[:-1], biases[:-1]):
        a = torch.sigmoid(a @ w.double().T + b.double()) * (1 - dropout)
    z = a @ weights[-1].double().T + biases[-1].double()
    y = F.one_hot(labels, 10).double()
    if cost == "log_likelihood":
        return F.cross_entropy(z, labels).item(), (z.argmax(1) == labels).double().mean().item()
    if cost == "cross_entropy":
        c = F.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(x)
    else:
        c = 0.5 * (torch.sigmoid(z) - y).pow(2).sum() / len(x)
    return c.item(), (z.argmax(1) == labels).double().mean().item()


@pytest.mark.parametrize(
    ("cost", "lmbda", "regularization", "dropout", "subset"),
    [
        ("cross_entropy", 5.0, "l2", 0.0, 2000),
        ("log_likelihood", 0.0, "l2", 0.0, None),
        ("quadratic", 1.0, "l1", 0.5, 700),
    ],
)
def test_training_set_monitor_logs_network2s_total_cost_and_accuracy_recomputed_in_plain_torch(
    tmp_path, cost, lmbda, regularization, dropout, subset
):
    torch.manual_seed(0)
    model = ManualBPClassifier(
        [784, 30, 10], eta=0.5, cost=cost, lmbda=lmbda, regularization=regularization, dropout=dropout
    )
    trainer, printed = fit(
        tmp_path, model, [TrainingSetMonitor(subset), EpochReport()], max_epochs=2, limit_train_batches=3
    )
    assert model.fused
    mnist = load_mnist(DATA_DIR)
    n = subset or 50_000
    x, labels = mnist["train_images"][:n].reshape(n, -1).float() / 255, mnist["train_labels"][:n]
    weights = [layer.weight.detach() for layer in model.network.layers]
    biases = [layer.bias.detach() for layer in model.network.layers]
    c0, accuracy = plain_torch_cost_and_accuracy(weights, biases, x, labels, cost, dropout)
    if regularization == "l1":
        full_cost = c0 + lmbda / 50_000 * sum(w.double().abs().sum().item() for w in weights)  # (λ/n) Σ |w|
    else:
        full_cost = c0 + 0.5 * lmbda / 50_000 * sum(w.double().pow(2).sum().item() for w in weights)  # (λ/2n) Σ w²
    costs, accuracies = epoch_rows(trainer, "train/full_cost"), epoch_rows(trainer, "train/accuracy")
    assert len(costs) == len(accuracies) == 2  # one per epoch
    assert costs[-1] == pytest.approx(full_cost, rel=1e-5)
    assert accuracies[-1] == pytest.approx(accuracy, abs=1e-6)
    assert costs[0] != costs[1]  # measured after each epoch, not once
    # the per-epoch line and curves.png show them
    lines = [line for line in printed.splitlines() if line.startswith("Epoch ")]
    shown = re.search(r"training set (\d+\.\d\d)% \(cost (\d+\.\d{4})\)", lines[-1])
    assert shown, lines[-1]
    assert float(shown[1]) == pytest.approx(100 * accuracy, abs=0.006)
    assert float(shown[2]) == pytest.approx(full_cost, abs=6e-5)
    assert (Path(trainer.log_dir) / "curves.png").stat().st_size > 10_000


def test_the_l1_term_is_lambda_over_n_times_the_sum_of_absolute_weights_and_l2_half_lambda_over_n_of_squares():
    weights = [torch.tensor([[1.0, -2.0], [0.5, 0.0]]), torch.tensor([[-3.0, 4.0]])]
    assert regularization_term(weights, 2.0, 10, "l1").item() == pytest.approx(2.0 / 10 * 10.5)
    assert regularization_term(weights, 2.0, 10, "l2").item() == pytest.approx(0.5 * 2.0 / 10 * 30.25)
    assert regularization_term(weights, 0.0, 10, "l2").item() == 0.0


def book_schedule(correct: list[int], eta: float, patience: int, factor: float, floor: float):
    """The chapter's problem as a loop over the validation counts: the η trained with in each epoch, and the epoch
    after which training stops (None: it does not)."""
    best, waited, start, etas = -1, 0, eta, []
    for epoch, count in enumerate(correct):
        etas.append(eta)
        if count > best:
            best, waited = count, 0
        else:
            waited += 1
        if waited == patience:  # no improvement in `patience` epochs
            eta, waited = eta * factor, 0
            if eta <= start * floor:
                return etas, epoch
    return etas, None


def test_halve_eta_on_plateau_follows_the_books_schedule_and_the_fused_path_trains_at_its_eta(tmp_path):
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 10], eta=0.5, cost="cross_entropy")
    start = copy.deepcopy(model.network)
    schedule = HalveEtaOnPlateau(patience=1, floor=1 / 4)
    trainer, _ = fit(tmp_path, model, [schedule], max_epochs=40, limit_train_batches=1)
    assert model.fused
    correct = [round(c) for c in epoch_rows(trainer, "val/correct")]
    etas, stop = book_schedule(correct, 0.5, patience=1, factor=0.5, floor=1 / 4)
    assert stop is not None and stop < 39  # the run was stopped by the schedule, not by max_epochs
    assert trainer.current_epoch == stop + 1 and len(correct) == stop + 1
    assert epoch_rows(trainer, "schedule/eta")[:-1] == etas[1:]  # logged after each epoch: the next epoch's η
    assert epoch_rows(trainer, "schedule/eta")[-1] == 0.5 / 4

    # the same steps by Network.sgd_step at the book's η of each epoch: the first batch of 100 of each epoch's order
    data = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=100)
    data.setup("fit")
    for epoch, eta in enumerate(etas):
        x, y, _ = next(iter(ShuffledBatches(*data.splits["train"], 100, seed=0, epoch=epoch, limit=1)))
        for i in range(0, 100, 10):
            start.sgd_step(x[i : i + 10], y[i : i + 10], eta)
    for mine, replayed in zip(model.network.parameters(), start.parameters()):
        torch.testing.assert_close(mine, replayed, rtol=1e-5, atol=1e-5)


def test_lightnings_early_stopping_is_the_books_no_improvement_in_n_rule(tmp_path):
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 10], eta=20.0, cost="cross_entropy")
    stopping = EarlyStopping(monitor="val/accuracy", mode="max", patience=2)
    trainer, _ = fit(tmp_path, model, [stopping], max_epochs=20, limit_train_batches=1)
    correct = [round(c) for c in epoch_rows(trainer, "val/correct")]
    best, waited, stop = -1, 0, None  # network2.py's early_stopping_n loop
    for epoch, count in enumerate(correct):
        best, waited = (count, 0) if count > best else (best, waited + 1)
        if waited == 2:
            stop = epoch
            break
    assert stop is not None and stop < 19  # stopped early
    assert len(correct) == stop + 1  # after the epoch the book's loop stops at


def test_halve_eta_on_plateau_refuses_bad_settings_and_a_scheduler_beside_it(tmp_path):
    for bad in ({"mode": "up"}, {"patience": 0}, {"patience": 1.5}, {"factor": 1.0}, {"floor": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HalveEtaOnPlateau(**bad)
    with pytest.raises(ValueError, match="subset"):
        TrainingSetMonitor(subset=0)
    model = ManualBPClassifier([784, 30, 10], lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr_scheduler"):
        fit(tmp_path, model, [HalveEtaOnPlateau()], max_epochs=1, limit_train_batches=1)


KILLER = {"class_path": "kill_at_step.KillAtStep", "init_args": {"step": 230}}


def test_a_run_killed_mid_schedule_resumes_the_schedule_and_ends_as_the_uninterrupted_run(tmp_path):
    # 5 batches of 100 (50 SGD steps) an epoch; last.ckpt every batch: the kill at step 230 resumes from 220, in the
    # middle of epoch 4, with η halved once; the second halving, after it, stops the run (η at 1/4 of its start). A
    # resume that lost the schedule's state would take the restored η for the start and stop later, or its count and
    # best value and halve elsewhere.
    rules = [
        {"class_path": "torch_manualbp.lightning.HalveEtaOnPlateau", "init_args": {"patience": 1, "floor": 1 / 4}},
        {"class_path": "torch_manualbp.lightning.TrainingSetMonitor", "init_args": {"subset": 1000}},
    ]
    fast = {
        "model": {"eta": 5.0, "cost": "cross_entropy"},
        "data": {"batch_size": 100, "monitor_test": False},
        "trainer": {"max_epochs": 12, "limit_train_batches": 5, "limit_val_batches": 0.1},  # 1,000 images
    }
    configs = {name: write_config(tmp_path, name, checkpoint_every=10, **fast) for name in ("straight", "killed")}
    for name, config in configs.items():
        added = rules + ([KILLER] if name == "killed" else [])
        edit_config(config, lambda s, added=added: s["trainer"]["callbacks"].extend(added))
    straight = run_cli(configs["straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "training stops" in straight.stderr and "max_epochs=12` reached" not in straight.stderr
    interrupted = run_cli(configs["killed"])
    assert interrupted.returncode == -signal.SIGKILL
    saved = torch.load(tmp_path / "killed" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["manualbp_updates"] == 220
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("HalveEtaOnPlateau"))
    assert state["halvings"] == 1  # killed after the first halving; the second, which stops the run, comes after
    edit_config(configs["killed"], lambda s: s["trainer"]["callbacks"].pop())
    resumed = run_cli(configs["killed"], "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = final_weights(tmp_path, "straight"), final_weights(tmp_path, "killed")
    for key in want:
        assert torch.equal(got[key], want[key]), key
    last_epoch = [line for line in straight.stdout.splitlines() if line.startswith("Epoch ")][-1].split(":")[0]
    assert [line for line in resumed.stdout.splitlines() if line.startswith("Epoch ")][-1].startswith(last_epoch)
