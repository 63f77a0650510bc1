"""A ``manualbp fit`` resumed from a checkpoint taken at the end of an epoch (``best-epoch=K.ckpt``, which
ModelCheckpoint writes after that epoch's validation) prints every later epoch line, and writes every later
metrics.csv row, exactly as the run that was never stopped (issue 26, finding 1: the resumed run trained epoch K+1
on another epoch's shuffle).

The reference is an uninterrupted run of the same config in its own process; every run is the real command.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import manualbp, metrics, write_config

SETTINGS = {
    "quadratic": {"sizes": [784, 30, 10], "eta": 3.0, "init": "normal", "mini_batch_size": 10},
    "cross_entropy_l2": {
        "sizes": [784, 30, 10],
        "eta": 0.5,
        "init": "normal",
        "mini_batch_size": 10,
        "cost": "cross_entropy",
        "lmbda": 5.0,
    },
}


def sections(model: dict, epochs: int) -> dict:
    return {
        "model": model,
        "data": {"monitor_test": False},
        "trainer": {"max_epochs": epochs, "limit_train_batches": 3, "limit_val_batches": 1},
    }


def epoch_lines(stdout: str) -> dict[int, str]:
    lines = {int(m.group(1)): m.group(0) for m in re.finditer(r"^Epoch (\d+): .*?; training cost \S+", stdout, re.M)}
    assert lines, stdout
    return lines


def fit(tmp_path: Path, name: str, model: dict, epochs: int, *args: str) -> str:
    result = manualbp("fit", "--config", write_config(tmp_path, name, **sections(model, epochs)), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def rows_after(rows: list[dict], epoch: int) -> list[dict]:
    return [row for row in rows if row.get("epoch") and int(row["epoch"]) > epoch]


@pytest.mark.parametrize("setting", SETTINGS)
def test_a_run_resumed_from_its_best_epoch_checkpoint_prints_the_uninterrupted_runs_later_epochs(tmp_path, setting):
    model = SETTINGS[setting]
    straight = epoch_lines(fit(tmp_path, "straight", model, 4))
    fit(tmp_path, "first", model, 2)
    (best,) = (tmp_path / "runs" / "first").rglob("best-epoch=*.ckpt")
    saved_epoch = int(re.search(r"best-epoch=(\d+)", best.name).group(1))
    resumed = epoch_lines(fit(tmp_path, "resumed", model, 4, "--ckpt_path", best))
    assert resumed == {e: line for e, line in straight.items() if e > saved_epoch}
    later = rows_after(metrics(tmp_path, "straight"), saved_epoch)
    assert rows_after(metrics(tmp_path, "resumed"), saved_epoch) == later
