"""LearningSpeedMonitor and GradientAudit in short real trainings on MNIST."""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import DATA_DIR, logged
from lightning.pytorch.loggers import CSVLogger

from torch_manualbp.lightning import GradientAudit, LearningSpeedMonitor, ManualBPClassifier, MNISTDataModule


def fit(tmp_path, model, callbacks, steps):
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, callbacks=callbacks, logger=CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False, enable_progress_bar=False, log_every_n_steps=1,
    )  # fmt: skip
    data = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=10)
    trainer.fit(model, data)
    return trainer, data


def test_learning_speed_monitor_logs_each_layers_speed_and_saturation(tmp_path):
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 30, 10], init="normal")
    start = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in model.network.layers]
    monitor = LearningSpeedMonitor(every_n_steps=10)
    trainer, _ = fit(tmp_path, model, [monitor], steps=30)
    rows = logged(trainer)
    assert sorted(monitor.history) == [0, 10, 20]
    assert sorted(step for step, row in rows.items() if "speed/layer1" in row) == [0, 10, 20]
    for l in (1, 2, 3):
        assert {f"speed/layer{l}", f"grad_w/layer{l}", f"saturated/layer{l}"} <= rows[0].keys()

    # Step 0, recomputed independently: the first batch through the initial weights, by hand.
    fresh = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=10)
    fresh.setup("fit")
    x, y, _ = next(iter(fresh.train_dataloader()))
    a, activations = x, []
    for w, b in start:
        a = torch.sigmoid(a @ w.T + b)
        activations.append(a)
    delta = (a - y) * a * (1 - a) / len(x)  # (BP1) for the mean cost
    speeds = [delta.sum(0).norm()]
    for (w, _), a in zip(reversed(start[1:]), reversed(activations[:-1])):
        delta = (delta @ w) * a * (1 - a)  # (BP2)
        speeds.insert(0, delta.sum(0).norm())  # (BP3)
    for l, (speed, a) in enumerate(zip(speeds, activations), 1):
        assert rows[0][f"speed/layer{l}"] == pytest.approx(speed.item(), rel=1e-5)
        saturated = (a * (1 - a) < 0.01).float().mean().item()
        assert rows[0][f"saturated/layer{l}"] == pytest.approx(saturated, abs=1e-6)
    chart = Path(trainer.log_dir) / "learning_speed.png"
    assert chart.stat().st_size > 10_000 and "speed/layer1" in chart.with_suffix(".md").read_text()


def test_gradient_audit_logs_agreement_with_autograd(tmp_path):
    torch.manual_seed(0)
    trainer, _ = fit(tmp_path, ManualBPClassifier([784, 30, 10]), [GradientAudit(every_n_steps=5)], steps=20)
    audits = {step: row["audit/max_rel_diff"] for step, row in logged(trainer).items() if "audit/max_rel_diff" in row}
    assert sorted(audits) == [0, 5, 10, 15] and max(audits.values()) < 1e-5


def test_gradient_audit_of_a_cross_entropy_run_compares_with_autograd_on_that_cost(tmp_path):
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 10], eta=0.5, cost="cross_entropy")
    trainer, _ = fit(tmp_path, model, [GradientAudit(every_n_steps=5)], steps=20)
    audits = [row["audit/max_rel_diff"] for row in logged(trainer).values() if "audit/max_rel_diff" in row]
    assert len(audits) == 4 and max(audits) < 1e-5


class DoubledCost(ManualBPClassifier):
    """A training step whose gradients are twice the quadratic cost's: what the audit must catch."""

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        self.last_mini_batch = (x, y)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(2 * self.network.cost(x, y))
        optimizer.step()


def test_gradient_audit_fails_loudly_on_a_wrong_gradient(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="gradient audit failed at step 0"):
        fit(tmp_path, DoubledCost([784, 30, 10]), [GradientAudit(every_n_steps=5)], steps=20)


def test_callbacks_reject_bad_arguments():
    with pytest.raises(ValueError, match="every_n_steps"):
        LearningSpeedMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="saturation"):
        LearningSpeedMonitor(saturation=0.3)
    with pytest.raises(ValueError, match="tolerance"):
        GradientAudit(tolerance=0)
