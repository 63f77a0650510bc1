"""What a real ``manualbp fit`` run logs to metrics.csv: the ``step`` column counts Lightning batches, as checkpoint
names and ``trainer.global_step`` do, the ``updates`` column SGD updates, and a run killed mid-epoch and resumed
logs the same training cost for that epoch (the mean over the whole epoch) as an uninterrupted run (issue 17, items
3 and 6)."""

import signal

import pytest
import torch
from conftest import edit_config, metrics, run_cli, write_config

KILL_AT_STEP = {"class_path": "kill_at_step.KillAtStep"}  # tests/kill_at_step.py, on the runs' PYTHONPATH
# Lightning batches of 100, SGD mini-batches of 10 (the config's): 30 batches an epoch are 300 updates.
SHORT = {
    "data": {"batch_size": 100, "monitor_test": False},
    "trainer": {"max_epochs": 2, "limit_train_batches": 30, "limit_val_batches": 1},
}


def _per_epoch(rows: list[dict], key: str) -> dict[int, tuple[int, float]]:
    """``{epoch: (step, value)}`` of the rows that hold ``key``."""
    return {int(r["epoch"]): (int(r["step"]), float(r[key])) for r in rows if r.get(key)}


def test_the_step_column_counts_lightning_batches_and_the_updates_column_sgd_updates(tmp_path):
    config = write_config(tmp_path, checkpoint_every=300, **SHORT)
    result = run_cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics(tmp_path)
    # 30 Lightning batches of 10 updates an epoch; Lightning logs an epoch's rows at its last batch's step, from 0
    for name in ("train/cost", "val/accuracy"):
        assert {epoch: step for epoch, (step, _) in _per_epoch(rows, name).items()} == {0: 29, 1: 59}
        assert {int(row["epoch"]): float(row["updates"]) for row in rows if row.get(name)} == {0: 300, 1: 600}
    saved = torch.load(tmp_path / "config" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (saved["global_step"], saved["manualbp_updates"]) == (60, 600)


def test_an_epoch_resumed_after_a_kill_logs_the_training_cost_of_the_whole_epoch(tmp_path):
    straight = write_config(tmp_path, "straight", checkpoint_every=50, **SHORT)
    killed = write_config(tmp_path, "killed", checkpoint_every=50, **SHORT)
    edit_config(killed, lambda s: s["trainer"]["callbacks"].append(KILL_AT_STEP | {"init_args": {"step": 460}}))
    assert run_cli(straight).returncode == 0
    assert run_cli(killed).returncode == -signal.SIGKILL
    saved = torch.load(tmp_path / "killed" / "last" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["manualbp_updates"] == 450 and saved["epoch"] == 1  # half way through the second epoch

    edit_config(killed, lambda s: s["trainer"]["callbacks"].pop())
    resumed = run_cli(killed, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = _per_epoch(metrics(tmp_path, "straight"), "train/cost")[1]
    got = _per_epoch(metrics(tmp_path, "killed"), "train/cost")[1]
    assert got[0] == want[0] == 59  # the epoch's last batch
    # the same 300 costs, the first 150 summed in the killed process (saved as a float) and the rest after the resume
    assert got[1] == pytest.approx(want[1], rel=1e-6)
