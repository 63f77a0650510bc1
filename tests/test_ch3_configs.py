"""The chapter-3 experiment configs (experiments/ch3_*.yaml) build what they name, on the fused path's terms, and
experiments/ch3_figures.py counts their SGD steps as the data module and the classifier make them.

The runs themselves are in docs/chapter3.md (each config trained for its full length, every one on the fused path);
here only what a config can get wrong without training: a setting the classes refuse, a callback that does not
import, a batch that is not whole mini-batches."""

import importlib

import pytest
import yaml
from conftest import DATA_DIR, ROOT, import_experiment

from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule

CONFIGS = sorted((ROOT / "experiments").glob("ch3_*.yaml"))


def test_there_are_the_nine_chapter_3_configs():
    assert len(CONFIGS) == 9


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_a_chapter_3_config_builds_its_model_data_and_callbacks_with_whole_mini_batches(config):
    settings = yaml.safe_load(config.read_text())
    model = ManualBPClassifier(**settings["model"])
    data = MNISTDataModule(**settings["data"] | {"data_dir": str(DATA_DIR)})
    assert data.hparams.batch_size % model.hparams.mini_batch_size == 0  # every batch whole fused steps
    for callback in settings["trainer"]["callbacks"]:
        module, name = callback["class_path"].rsplit(".", 1)
        getattr(importlib.import_module(module), name)(**callback.get("init_args", {}))
    assert (
        f"name: {config.stem}" in config.read_text()
        and f"To run: manualbp fit --config {config.relative_to(ROOT)}" in (config.read_text())
    )


def test_ch3_figures_counts_the_sgd_steps_of_an_epoch_of_the_expanded_and_the_plain_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    figures = import_experiment("ch3_figures")
    data = MNISTDataModule(data_dir=str(DATA_DIR), train_size=1000, expand=True, batch_size=1000)
    data.setup("fit")
    assert figures.steps_per_epoch("ch3_expanded") == len(data.splits["train"][0]) // 10 == 500
    assert figures.steps_per_epoch("ch3_overfitting") == 100
