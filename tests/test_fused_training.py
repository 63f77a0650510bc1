"""ManualBPClassifier's fused path (Network.sgd_step's arithmetic, no autograd) against its autograd path, compiled
against eager, and the fallbacks it announces."""

import logging

import lightning as L
import pytest
import torch
from conftest import DATA_DIR

from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule


class ObserveEveryStep(L.Callback):
    """Asks ManualBPClassifier to run every step through autograd (as LearningSpeedMonitor does for its steps)."""

    def __init__(self) -> None:
        self.backward_calls = 0

    def observes_step(self, step: int) -> bool:
        return True

    def on_after_backward(self, trainer, pl_module) -> None:
        self.backward_calls += 1


def _fit(tmp_path, steps: int, callbacks=(), **model_kwargs) -> ManualBPClassifier:
    torch.manual_seed(0)
    model = ManualBPClassifier([784, 30, 10], mini_batch_size=10, **model_kwargs)
    trainer = L.Trainer(
        max_steps=steps // 10, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
    )  # fmt: skip  # max_steps counts Lightning batches, of 10 updates here
    trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=100, seed=2))
    assert (model.updates, trainer.global_step) == (steps, steps // 10)  # counted alike on both paths
    return model


def test_fused_training_equals_autograd_and_sgd_over_the_same_mini_batches(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        fused = _fit(tmp_path, 300)
    assert "training with the fused SGD step" in caplog.text
    observer = ObserveEveryStep()
    reference = _fit(tmp_path, 300, [observer])
    assert observer.backward_calls == 300  # every step of the reference went through autograd
    # The same updates in another float32 rounding order (BP3/BP4 added into the weights by addmm_ rather than
    # formed as a gradient and then applied by SGD): ~1e-7 relative per step, grown over 300 steps at η = 3 to
    # ~1e-5 absolute on weights of order 1 (N(0, 1) init). A wrong term would differ by orders of magnitude more.
    for got, want in zip(fused.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-5)


def test_steps_a_callback_observes_go_through_autograd_and_the_rest_are_fused(tmp_path):
    class EveryFifth(ObserveEveryStep):
        def observes_step(self, step: int) -> bool:
            return step % 5 == 0

    observer = EveryFifth()
    _fit(tmp_path, 100, [observer])
    assert observer.backward_calls == 20


@pytest.mark.parametrize(
    "settings, reason", [({"momentum": 0.9}, "momentum=0.9"), ({"weight_decay": 1e-4}, "weight_decay")]
)
def test_settings_the_fused_step_cannot_run_fall_back_to_autograd_and_say_so(tmp_path, caplog, settings, reason):
    observer = ObserveEveryStep()
    observer.observes_step = lambda step: False  # observes nothing: only the fallback can send steps to autograd
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, 20, [observer], **settings)
    assert observer.backward_calls == 20
    assert "training through autograd and torch.optim.SGD, not the fused SGD step, because" in caplog.text
    assert reason in caplog.text


def test_compiled_fused_steps_equal_eager_ones(tmp_path, caplog):
    eager = _fit(tmp_path, 40)
    with caplog.at_level(logging.INFO):
        compiled = _fit(tmp_path, 40, compile=True)
    assert "compiled 10 fused SGD steps per call in" in caplog.text
    # Inductor may fuse and reorder float32 operations; 40 steps stay within a few 1e-6 relative.
    for got, want in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_compile_must_be_a_bool():
    with pytest.raises(TypeError, match="compile must be True or False"):
        ManualBPClassifier(compile="yes")
