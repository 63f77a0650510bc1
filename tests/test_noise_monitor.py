"""GradientNoiseMonitor in short real trainings on MNIST, against per-example gradients from torch.func."""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import DATA_DIR, logged
from lightning.pytorch.loggers import CSVLogger
from torch.func import grad, vmap

from torch_manualbp.lightning import GradientNoiseMonitor, ManualBPClassifier, MNISTDataModule
from torch_manualbp.observe import gradient_statistics


def fit(tmp_path, model, monitor, steps, batch_size):
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, callbacks=[monitor], logger=CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False, enable_progress_bar=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=batch_size))
    return trainer


def per_example_gradients(params, x, y):
    """Each example's gradient of C_x = ½‖y − aᴸ‖², the network written in plain ops, as one (N, P) matrix."""

    def cost_x(params, x_i, y_i):
        a = x_i
        for w, b in zip(params[0::2], params[1::2]):
            a = torch.sigmoid(a @ w.T + b)
        return 0.5 * ((a - y_i) ** 2).sum()

    grads = vmap(grad(cost_x), in_dims=(None, 0, 0))(params, x, y)
    return [g.reshape(len(x), -1) for g in grads]


def test_noise_monitor_logs_b_simple_snr_and_norm_percentiles_of_the_batch_about_to_be_trained_on(tmp_path):
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 10], init="normal", mini_batch_size=None)  # a step per batch of 50
    start = [p.detach().double().clone() for p in model.network.parameters()]
    monitor = GradientNoiseMonitor(every_n_steps=10)
    trainer = fit(tmp_path, model, monitor, steps=25, batch_size=50)
    rows = logged(trainer)
    assert sorted(monitor.history) == [0, 10, 20]
    assert sorted(step for step, row in rows.items() if "b_simple/all" in row) == [0, 10, 20]

    # Step 0, recomputed independently: the first batch through the initial weights, per example by torch.func.
    data = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=50)
    data.setup("fit")
    x, y, _ = next(iter(data.train_dataloader()))
    g = per_example_gradients(start, x.double(), y.double())
    n = len(x)

    def b_simple(g):  # McCandlish et al. appendix A with B_small = 1, B_big = N; smoothing cancels at the start
        mean_of_sq_norms, sq_norm_of_mean = (g**2).sum(1).mean(), (g.mean(0) ** 2).sum()
        trace = (mean_of_sq_norms - sq_norm_of_mean) / (1 - 1 / n)
        return trace / ((n * sq_norm_of_mean - mean_of_sq_norms) / (n - 1))

    first = rows[0]
    assert first["b_simple/all"] == pytest.approx(b_simple(torch.cat(g, 1)).item(), rel=1e-4)
    for l in (1, 2):
        layer = torch.cat(g[2 * l - 2 : 2 * l], 1)
        assert first[f"b_simple/layer{l}"] == pytest.approx(b_simple(layer).item(), rel=1e-4)
        variance = layer.var(0, correction=0)
        varies = variance > torch.finfo(torch.float32).eps * variance.max()  # the monitor's rule, for float32
        snr = (layer.mean(0)[varies] ** 2 / variance[varies]).median()
        assert first[f"snr/layer{l}"] == pytest.approx(snr.item(), rel=1e-3)
    norms = torch.cat(g, 1).norm(dim=1)
    for q in (10, 50, 90):
        assert first[f"per_example_norm/p{q}"] == pytest.approx(torch.quantile(norms, q / 100).item(), rel=1e-4)
    assert (Path(trainer.log_dir) / "gradient_noise.png").stat().st_size > 10_000


class RawEstimates(L.Callback):
    """|G|² and S of each batch at its start, unsmoothed, as gradient_statistics gives them (tested on its own)."""

    def __init__(self):
        self.estimates = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        stats = gradient_statistics(pl_module.network, batch[0], batch[1])
        self.estimates[trainer.global_step] = (stats.true_grad_sq_norm.item(), stats.trace_covariance.item())


def test_noise_monitor_smooths_the_two_estimates_apart_then_divides(tmp_path):
    torch.manual_seed(0)
    monitor, raw = GradientNoiseMonitor(every_n_steps=5, smoothing=0.5), RawEstimates()
    trainer = L.Trainer(
        max_steps=11, limit_val_batches=0, callbacks=[raw, monitor], logger=False, default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False,
    )  # fmt: skip
    model = ManualBPClassifier([784, 30, 10], mini_batch_size=None)  # a step per batch of 20
    trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=20))
    (g0, s0), (g5, s5) = raw.estimates[0], raw.estimates[5]
    assert monitor.history[0]["b_simple/all"] == pytest.approx(s0 / g0, rel=1e-5)
    # averages 0.5·(0.5·x₀) + 0.5·x₅ of |G|² and of S, divided; not the average of the two ratios
    expected = (0.25 * s0 + 0.5 * s5) / (0.25 * g0 + 0.5 * g5)
    assert monitor.history[5]["b_simple/all"] == pytest.approx(expected, rel=1e-5)


def test_noise_monitor_catches_up_when_a_batch_makes_many_steps(tmp_path):
    torch.manual_seed(0)
    monitor = GradientNoiseMonitor(every_n_steps=25)
    model = ManualBPClassifier([784, 30, 10], mini_batch_size=10)  # 10 SGD steps per Lightning batch of 100
    fit(tmp_path, model, monitor, steps=8, batch_size=100)  # max_steps counts Lightning batches: 80 updates
    assert sorted(monitor.history) == [0, 30, 60]


def test_noise_monitor_rejects_bad_arguments_and_one_example_batches(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps must be a positive int"):
        GradientNoiseMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match=r"smoothing must lie in \[0, 1\)"):
        GradientNoiseMonitor(smoothing=1.0)
    with pytest.raises(ValueError, match="GradientNoiseMonitor needs batches of at least 2 examples"):
        fit(tmp_path, ManualBPClassifier([784, 30, 10]), GradientNoiseMonitor(every_n_steps=1), steps=2, batch_size=1)
