"""A ``manualbp fit`` with dropout, stopped in the middle of an epoch by SIGINT or SIGKILL and resumed from
``last.ckpt``, ends with exactly the weights of a run that was never stopped: the checkpoint carries where the
dropout masks' random stream stood, so the resumed run draws the masks the uninterrupted one drew.

The reference is an uninterrupted run of the same config, in its own process; every run is the real command.
"""

from __future__ import annotations

import pytest
import torch
from conftest import edit_config, final_weights, manualbp, write_config

INTERRUPT_AT = 1500  # the middle of epoch 1: an epoch is 10 Lightning batches of 100 mini-batches of 10 images
CHECKPOINT_EVERY = 500  # last.ckpt at 500, 1000, 1500 (unless killed first) and 2000, the run's last step
DROPOUT = {
    "model": {"sizes": [784, 30, 10], "eta": 3.0, "init": "normal", "mini_batch_size": 10, "dropout": 0.5},
    "trainer": {"max_epochs": 2, "limit_train_batches": 10, "limit_val_batches": 1},
}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("straight")
    config = write_config(tmp_path, "straight", checkpoint_every=CHECKPOINT_EVERY, **DROPOUT)
    result = manualbp("fit", "--config", config)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = final_weights(tmp_path, "straight")
    assert torch.load(tmp_path / "straight" / "last" / "last.ckpt", weights_only=True)["manualbp_updates"] == 2000
    return weights


@pytest.mark.parametrize("signal_name, saved_step", [("SIGINT", INTERRUPT_AT), ("SIGKILL", 1000)])
def test_a_dropout_run_stopped_mid_epoch_and_resumed_ends_with_the_uninterrupted_runs_weights(
    tmp_path, straight, signal_name, saved_step
):
    config = write_config(tmp_path, "killed", checkpoint_every=CHECKPOINT_EVERY, **DROPOUT)
    killer = {"class_path": "kill_at_step.KillAtStep", "init_args": {"step": INTERRUPT_AT, "signal_name": signal_name}}
    edit_config(config, lambda s: s["trainer"]["callbacks"].append(killer))
    interrupted = manualbp("fit", "--config", config)
    assert interrupted.returncode != 0
    saved = torch.load(tmp_path / "killed" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["manualbp_updates"] == saved_step
    assert saved["manualbp_dropout_generator"].dtype == torch.uint8  # the masks' generator, where it stood
    edit_config(config, lambda s: s["trainer"]["callbacks"].pop())
    resumed = manualbp("fit", "--config", config, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = final_weights(tmp_path, "killed")
    assert got.keys() == straight.keys()
    for key in straight:
        assert torch.equal(got[key], straight[key]), key
