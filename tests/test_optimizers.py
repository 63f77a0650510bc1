"""ManualBPClassifier honours or refuses every optimizer and scheduler it is given (issue 17): an optimizer other than
plain SGD trains through autograd with that optimizer, a scheduler drives η on the fused path too, and what cannot
work is a ValueError before the first update. Each run is the real module in a real Trainer, compared with plain
autograd and torch.optim on the same mini-batches."""

import logging

import lightning as L
import pytest
import torch
from conftest import DATA_DIR, quiet

from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule
from torch_manualbp.testing.reference import autograd_cost

BATCH, MINI = 100, 10  # Lightning batches of 100, SGD mini-batches of 10


class _Given(ManualBPClassifier):
    """The classifier with an optimizer (and scheduler) of the user's, as LightningCLI's ``--optimizer`` gives it."""

    def __init__(self, make, **kwargs) -> None:
        super().__init__([784, 30, 10], mini_batch_size=MINI, **kwargs)
        self.make = make

    def configure_optimizers(self):
        return self.make(self.parameters())


def _fit(model, steps: int, tmp_path, epochs: int = 1, batches: int | None = None) -> ManualBPClassifier:
    trainer = L.Trainer(
        max_steps=steps // (BATCH // MINI),  # SGD updates, as Lightning batches
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=BATCH, seed=2))
    return model


def _mini_batches(steps: int, epochs: int = 1, batches: int | None = None):
    """The training mini-batches those runs step through, in order, from a data module of the same seed."""
    data = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=BATCH, seed=2)
    data.setup("fit")
    loader, taken = data.train_dataloader(), 0
    for epoch in range(epochs):  # a pass left early makes the next pass the next epoch's order, as in training
        for b, (x, y, _) in enumerate(loader):
            if batches is not None and b == batches:
                break
            for start in range(0, len(x), MINI):
                if taken == steps:
                    return
                yield epoch, x[start : start + MINI], y[start : start + MINI]
                taken += 1


def _start(seed: int = 0) -> tuple[ManualBPClassifier, list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = ManualBPClassifier([784, 30, 10])
    return model, [p.detach().clone().requires_grad_() for p in model.network.parameters()]


def _plain_autograd(params, optimizer, steps: int, **which) -> list[torch.Tensor]:
    for _, x, y in _mini_batches(steps, **which):
        optimizer.zero_grad()
        autograd_cost(params, x, y).backward()
        optimizer.step()
    return params


@quiet
def test_adam_trains_through_autograd_with_adam_and_says_so(tmp_path, caplog):
    _, params = _start()
    want = _plain_autograd(params, torch.optim.Adam(params, lr=1e-3), 60)
    torch.manual_seed(0)
    model = _Given(lambda p: torch.optim.Adam(p, lr=1e-3))
    with caplog.at_level(logging.INFO):
        _fit(model, 60, tmp_path)
    assert "training through autograd and Adam(lr=0.001" in caplog.text
    assert "the optimizer is Adam" in caplog.text and "η is the optimizer's lr, 0.001" in caplog.text
    for got, expected in zip(model.network.parameters(), want):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-5)


@quiet
def test_sgd_with_momentum_given_as_the_optimizer_equals_torch_sgd_with_momentum(tmp_path, caplog):
    _, params = _start()
    want = _plain_autograd(params, torch.optim.SGD(params, lr=0.5, momentum=0.9), 60)
    torch.manual_seed(0)
    model = _Given(lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9))
    with caplog.at_level(logging.INFO):
        _fit(model, 60, tmp_path)
    assert "momentum=0.9 (the fused step is plain SGD)" in caplog.text
    for got, expected in zip(model.network.parameters(), want):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-5)


def _book_sgd(params, steps: int, eta_of, **which) -> list[torch.Tensor]:
    """The book's update with plain autograd, η = eta_of(epoch, step) for each step."""
    for k, (epoch, x, y) in enumerate(_mini_batches(steps, **which)):
        grads = torch.autograd.grad(autograd_cost(params, x, y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= eta_of(epoch, k) * g
    return params


@quiet
def test_a_step_lr_scheduler_changes_the_fused_paths_eta_every_epoch(tmp_path, caplog):
    _, params = _start()
    want = _book_sgd(params, 100, lambda epoch, k: 3.0 * 0.01**epoch, epochs=2, batches=5)

    def sgd_and_step_lr(p):
        optimizer = torch.optim.SGD(p, lr=3.0)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.01)]

    torch.manual_seed(0)
    model = _Given(sgd_and_step_lr)
    with caplog.at_level(logging.INFO):
        _fit(model, 100, tmp_path, epochs=2, batches=5)
    assert "training with the fused SGD step" in caplog.text
    assert model.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(3.0 * 0.01**2)
    for got, expected in zip(model.network.parameters(), want):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=2e-5)


@quiet
def test_a_scheduler_with_interval_step_changes_eta_at_every_sgd_update(tmp_path):
    _, params = _start()
    want = _book_sgd(params, 30, lambda epoch, k: 3.0 * 0.9**k)

    def sgd_and_exponential_per_step(p):
        optimizer = torch.optim.SGD(p, lr=3.0)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    torch.manual_seed(0)
    model = _fit(_Given(sgd_and_exponential_per_step), 30, tmp_path)
    assert model.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(3.0 * 0.9**30)
    for got, expected in zip(model.network.parameters(), want):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=2e-5)


@quiet
@pytest.mark.parametrize(
    "settings, make, word",
    [
        ({"momentum": 0.5}, lambda p: torch.optim.SGD(p, lr=3.0), "model.momentum=0.5"),
        ({"lmbda": 5.0}, lambda p: torch.optim.Adam(p), "model.lmbda=5"),
        ({"compile": True}, lambda p: torch.optim.Adam(p), "compile=True"),
    ],
)
def test_settings_the_given_optimizer_would_ignore_are_refused_before_training(tmp_path, settings, make, word):
    torch.manual_seed(0)
    model = _Given(make, **settings)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=word):
        _fit(model, 10, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any update


@quiet
def test_compile_on_a_run_through_autograd_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match="compile=True compiles the fused SGD step, which this run cannot use: momentum"
    ):
        _fit(ManualBPClassifier([784, 30, 10], mini_batch_size=MINI, momentum=0.9, compile=True), 10, tmp_path)


@quiet
def test_reduce_lr_on_plateau_is_stepped_with_its_monitored_metric_after_validation(tmp_path):
    from lightning.pytorch.cli import ReduceLROnPlateau

    def sgd_and_plateau(p):
        optimizer = torch.optim.SGD(p, lr=3.0)
        # mode="max" on a falling cost: no epoch after the first improves on it, so each one cuts η by 10
        return [optimizer], [ReduceLROnPlateau(optimizer, monitor="val/cost", mode="max", factor=0.1, patience=0)]

    torch.manual_seed(0)
    model = _Given(sgd_and_plateau)
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=BATCH, seed=2))
    assert model.fused
    assert model.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(3.0 * 0.1**2)


@quiet
def test_reduce_lr_on_plateau_without_a_monitor_is_refused(tmp_path):
    def sgd_and_plain_plateau(p):
        optimizer = torch.optim.SGD(p, lr=3.0)
        return [optimizer], [torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)]

    with pytest.raises(ValueError, match="ReduceLROnPlateau needs a monitor"):
        _fit(_Given(sgd_and_plain_plateau), 10, tmp_path)


def test_the_classifiers_optimizer_and_lr_scheduler_settings_build_what_they_name():
    # the form LightningCLI's --optimizer / --lr_scheduler hand over (link_to), built by configure_optimizers
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}
    step = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 2, "gamma": 0.5}}
    model = ManualBPClassifier([784, 30, 10], optimizer=adam, lr_scheduler=step)
    (optimizer,), (scheduler,) = model.configure_optimizers()  # LightningCLI.configure_optimizers' form
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 0.01
    assert [p.data_ptr() for p in optimizer.param_groups[0]["params"]] == [p.data_ptr() for p in model.parameters()]
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR and scheduler.step_size == 2
    (alone,), _ = ManualBPClassifier([784, 30, 10], eta=0.5, lr_scheduler=step).configure_optimizers()
    assert type(alone) is torch.optim.SGD and alone.defaults["lr"] == 0.5


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"optimizer": "Adam"}, "optimizer must be None or a dict"),
        ({"lr_scheduler": {"init_args": {}}}, "lr_scheduler must be None or a dict"),
        (
            {"lr_schedule": "cosine", "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR"}},
            "lr_scheduler and lr_schedule both set",
        ),
    ],
)
def test_a_bad_optimizer_or_lr_scheduler_setting_is_refused_naming_it(settings, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ManualBPClassifier([784, 30, 10], **settings)
