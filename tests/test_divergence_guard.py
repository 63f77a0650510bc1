"""Divergence stopped with a clear message: DivergenceGuard names the step, the non-finite parameters and gradients
and the learning rate, and no checkpoint of non-finite weights is written (docs/hostile_inputs.md, "Training")."""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet, run_cli, write_config
from torch.utils.data import DataLoader, TensorDataset

from torch_manualbp.lightning import ManualBPClassifier
from torch_manualbp.lightning.safety import AtomicCheckpointIO, DivergenceError, DivergenceGuard


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
        tmp_path, "diverged", checkpoint_every=every, model={"eta": 30.0, "weight_decay": 1.0, "mini_batch_size": None},
        data={"monitor_test": False, "batch_size": 10}, trainer={"max_epochs": 30},
    )  # fmt: skip
    result = run_cli(config)
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
