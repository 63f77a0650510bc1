"""Lightning counts the classifier's steps itself, through its public API (issue 26, "one truth for progress"):
``trainer.global_step`` is the number of Lightning batches trained, on the fused path, on autograd's and for a
population alike; the SGD updates are the classifier's ``updates``, kept in checkpoints; ``manualbp`` turns the
step counts a user gives in updates (``every_n_train_steps`` here) into batches, and refuses a checkpoint written
when ``global_step`` counted updates rather than resume it wrongly."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import manualbp, quiet, run_cli, write_config
from torch.utils.data import DataLoader, TensorDataset

from torch_manualbp.lightning import ManualBPClassifier

#: Lightning batches of 100 images, SGD mini-batches of 10: 10 updates a batch, 3 batches an epoch.
SHORT = {
    "data": {"batch_size": 100, "monitor_test": False},
    "trainer": {"max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 1},
}


def _batches(rows: int = 60, batch_size: int = 20) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(rows, 784, generator=g)
    labels = torch.randint(0, 10, (rows,), generator=g)
    return DataLoader(TensorDataset(x, torch.eye(10)[labels], labels), batch_size=batch_size)


def _fit(model: ManualBPClassifier, epochs: int = 2) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, _batches())
    return trainer


@quiet
@pytest.mark.parametrize(
    "settings",
    [{}, {"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}}, {"seeds": [0, 1]}],
    ids=["fused", "autograd", "population"],
)
def test_global_step_counts_lightning_batches_and_updates_count_sgd_updates_on_every_path(settings):
    model = ManualBPClassifier([784, 8, 10], mini_batch_size=5, **settings)  # 4 updates a batch of 20
    trainer = _fit(model)
    assert trainer.global_step == 2 * 3  # 2 epochs of 3 batches
    assert model.updates == 2 * 3 * 4
    assert model.fused == ("optimizer" not in settings)


@quiet
def test_a_second_fit_of_the_same_model_counts_its_updates_from_zero():
    model = ManualBPClassifier([784, 8, 10], mini_batch_size=5)
    _fit(model, epochs=1)
    trainer = _fit(model, epochs=1)
    assert (trainer.global_step, model.updates) == (3, 12)


def test_periodic_checkpoints_come_every_n_train_steps_sgd_updates(tmp_path):
    config = write_config(tmp_path, checkpoint_every=20, **SHORT)  # every 2 batches of 10 updates
    result = run_cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "config" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (saved["manualbp_updates"], saved["global_step"]) == (60, 6)  # the end of training: 6 batches
    state = next(v for k, v in saved["callbacks"].items() if "'every_n_train_steps': 2," in k)  # 20 updates: 2 batches
    assert state["last_model_path"].endswith("last.ckpt")


def test_every_n_train_steps_inside_a_lightning_batch_is_one_line(tmp_path):
    config = write_config(tmp_path, checkpoint_every=25, **SHORT)
    result = run_cli(config)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("manualbp: error: trainer.callbacks[1].every_n_train_steps 25 counts SGD updates")
    assert line.endswith("use 20 or 30"), line


def test_a_checkpoint_that_counted_updates_in_global_step_is_refused_for_fit_and_still_validates(tmp_path):
    config = write_config(tmp_path, **SHORT)
    assert run_cli(config).returncode == 0
    last = tmp_path / "config" / "last" / "last.ckpt"
    old = torch.load(last, map_location="cpu", weights_only=False)
    del old["manualbp_updates"]  # as torch_manualbp wrote it before Lightning counted batches
    old_path = tmp_path / "old.ckpt"
    torch.save(old, old_path)
    resumed = run_cli(config, "--trainer.max_epochs", "3", "--ckpt_path", str(old_path))
    assert resumed.returncode == 2
    assert (
        resumed.stderr.strip()
        .splitlines()[-1]
        .startswith("manualbp: error: ckpt_path: this checkpoint was written by an earlier torch_manualbp")
    )
    validated = manualbp("validate", "--config", config, "--ckpt_path", str(old_path))
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert "Validation:" in validated.stdout
