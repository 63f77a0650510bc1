"""The shipped configs train on the fast path: Lightning batches of 1,000 images cut into the book's mini-batches of
10 make exactly the updates of one mini-batch per Lightning batch, in the same order, for each config's own network,
cost and regularisation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import DATA_DIR, ROOT, quiet

from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule

CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))
# the one config kept at a mini-batch per Lightning batch, for the callbacks that observe single steps
ONE_STEP_PER_BATCH = {"vanishing_gradient.yaml"}


def _settings(config: Path) -> tuple[dict, dict]:
    settings = yaml.safe_load(config.read_text())
    return settings.get("model", {}), settings.get("data", {})


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_holds_many_of_the_books_mini_batches_per_lightning_batch(config):
    model, data = _settings(config)
    if config.name in ONE_STEP_PER_BATCH:
        pytest.skip("its LearningSpeedMonitor and GradientAudit observe single steps")
    mini_batch_size = model.get("mini_batch_size", 10)
    assert mini_batch_size == 10 and data["batch_size"] % mini_batch_size == 0 and data["batch_size"] >= 1000


@quiet
@pytest.mark.parametrize("name", ["nielsen_ch3.yaml", "nielsen_ch3_30.yaml", "nielsen_ch1_100_cross_entropy.yaml"])
def test_a_configs_fused_layout_makes_the_updates_of_one_mini_batch_per_lightning_batch(tmp_path, name):
    model_settings, data_settings = _settings(ROOT / "experiments" / name)
    weights = []
    for batch_size, mini_batch_size in ((10, None), (data_settings["batch_size"], model_settings["mini_batch_size"])):
        torch.manual_seed(0)
        model = ManualBPClassifier(**{**model_settings, "mini_batch_size": mini_batch_size})
        per_batch = batch_size // (mini_batch_size or batch_size)
        trainer = L.Trainer(
            max_steps=300 // per_batch, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip  # max_steps counts Lightning batches
        trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=batch_size))
        assert (model.updates, trainer.global_step) == (300, 300 // per_batch)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))  # the same updates in the same order
