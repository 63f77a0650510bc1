"""A ``manualbp fit`` resumed from any kind of checkpoint prints every later epoch line, and writes every later
metrics.csv row, exactly as the run that was never stopped: one taken at the end of an epoch (``best-epoch=K.ckpt``,
which ModelCheckpoint writes after that epoch's validation; issue 26, finding 1: the resumed run trained epoch K+1 on
another epoch's shuffle), a periodic ``last.ckpt`` from the middle of an epoch (the run killed after it), the one
SIGTERM writes, and a finished run's ``last.ckpt`` extended to more epochs (finding 2: it lost the last epoch's
evaluation and counted 3 epochs of 4); for the quadratic cost, cross-entropy with L2, dropout and a population. The
summary's epoch count and its best and last epochs are the uninterrupted run's too.

The reference is an uninterrupted run of the same config in its own process; every run is the real command.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import edit_config, manualbp, metrics, write_config

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
    "dropout": {"sizes": [784, 30, 10], "eta": 0.5, "init": "scaled", "cost": "cross_entropy", "dropout": 0.5},
    "population": {"sizes": [784, 30, 10], "eta": 3.0, "init": "normal", "seeds": [0, 1]},
}
#: Each epoch is 300 SGD updates (limit_train_batches 3 of 100); last.ckpt every 500: in the middle of epoch 1
EVERY = 500


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


def fit(tmp_path: Path, name: str, model: dict, epochs: int, *args: str, killer: dict | None = None) -> str:
    config = write_config(tmp_path, name, checkpoint_every=EVERY, **sections(model, epochs))
    if killer:
        edit_config(config, lambda settings: settings["trainer"]["callbacks"].append(killer))
    result = manualbp("fit", "--config", config, *args)
    expected = {None: 0, "SIGTERM": 128 + 15, "SIGKILL": -9}[killer and killer["init_args"]["signal_name"]]
    assert result.returncode == expected, result.stderr[-3000:]
    return result.stdout


def best_and_last(stdout: str) -> list[str]:
    """The summary's lines on the best and last epochs (a population's: its best, median and every member)."""
    kinds = ("Best epoch", "Best member", "Last epoch", "Median member", "  member", "Ensemble")
    return [line for line in stdout.splitlines() if line.startswith(kinds)]


def rows_after(rows: list[dict], epoch: int) -> list[dict]:
    return [row for row in rows if row.get("epoch") and int(row["epoch"]) > epoch]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """``setting -> (folder, epoch lines, summary's best and last epoch)`` of the uninterrupted 4-epoch run, each run
    once."""
    done = {}

    def run(setting: str):
        if setting not in done:
            folder = tmp_path_factory.mktemp(f"straight_{setting}")
            stdout = fit(folder, "straight", SETTINGS[setting], 4)
            done[setting] = (folder, epoch_lines(stdout), best_and_last(stdout))
        return done[setting]

    return run


def _first_run_and_its_checkpoint(tmp_path: Path, model: dict, kind: str) -> tuple[Path, int]:
    """A first run stopped as ``kind`` says, the checkpoint to resume from, and the last epoch it holds complete."""
    if kind == "best":
        fit(tmp_path, "first", model, 2)
        (best,) = (tmp_path / "runs" / "first").rglob("best-epoch=*.ckpt")
        return best, int(re.search(r"best-epoch=(\d+)", best.name).group(1))
    if kind == "extend":  # a finished run of 2 epochs, extended to 4: its last.ckpt, written at epoch 1's end
        fit(tmp_path, "first", model, 2)
        checkpoint = tmp_path / "first" / "last" / "last.ckpt"
        assert torch.load(checkpoint, map_location="cpu", weights_only=True)["manualbp_updates"] == 600
        return checkpoint, 1
    if kind == "periodic":  # killed at update 600 (epoch 1's last batch): the last periodic save is at 500
        killer = {"class_path": "kill_at_step.KillAtStep", "init_args": {"step": 600, "signal_name": "SIGKILL"}}
        fit(tmp_path, "first", model, 4, killer=killer)
        step = 500
    else:
        killer = {"class_path": "kill_at_step.KillAtStep", "init_args": {"step": 400, "signal_name": "SIGTERM"}}
        fit(tmp_path, "first", model, 4, killer=killer)  # written at the interrupt, at update 400 of epoch 1
        step = 400
    checkpoint = tmp_path / "first" / "last" / "last.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert (saved["manualbp_updates"], saved["global_step"]) == (step, step // 100)  # Lightning counts batches
    return checkpoint, 0


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """The same rows, columns and integers; the floats to 1e-6 relative (a resumed epoch's training cost is summed
    partly before the checkpoint and partly after it)."""
    assert [sorted(k for k, v in row.items() if v) for row in got] == [
        sorted(k for k, v in row.items() if v) for row in want
    ]
    for got_row, want_row in zip(got, want):
        for key, value in want_row.items():
            if value:
                assert float(got_row[key]) == pytest.approx(float(value), rel=1e-6), key


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("kind", ["best", "periodic", "interrupt", "extend"])
def test_a_run_resumed_from_any_checkpoint_prints_and_logs_the_uninterrupted_runs_later_epochs(
    tmp_path, straight, kind, setting
):
    model = SETTINGS[setting]
    straight_folder, straight_lines, straight_summary = straight(setting)
    checkpoint, saved_epoch = _first_run_and_its_checkpoint(tmp_path, model, kind)
    stdout = fit(tmp_path, "resumed", model, 4, "--ckpt_path", checkpoint)
    assert epoch_lines(stdout) == {e: line for e, line in straight_lines.items() if e > saved_epoch}
    assert "not evaluated" not in stdout  # no line for an epoch the earlier process ended
    assert "\nFinished 4 epochs in " in stdout  # the run's epochs, over its processes
    assert best_and_last(stdout) == straight_summary
    later = rows_after(metrics(straight_folder, "straight"), saved_epoch)
    assert_same_rows(rows_after(metrics(tmp_path, "resumed"), saved_epoch), later)
