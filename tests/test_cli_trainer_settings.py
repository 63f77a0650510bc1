"""Trainer settings on the ``manualbp`` command mean what Lightning's docs say (issue 26, findings 5, 6 and 7).

Every run is the real command in a subprocess, from a fresh working directory, with the shipped
``experiments/nielsen_ch1.yaml`` (its relative ``runs`` folders included) and a few batches of training.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, NIELSEN, edit_config, manualbp, write_config

SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]


def _fit(cwd, *args):
    return manualbp("fit", "--config", NIELSEN, "--data.data_dir", DATA_DIR, *args, cwd=cwd)


def _files(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_fast_dev_run_ends_with_one_line_and_writes_nothing(tmp_path):
    result = _fit(tmp_path, "--trainer.fast_dev_run", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last_line = result.stdout.rstrip().splitlines()[-1]
    assert last_line.startswith("fast_dev_run: 1 training batch") and "no checkpoint" in last_line, result.stdout
    assert _files(tmp_path) == []  # no curves.png, no runs/nielsen_ch1/last.ckpt, no config.yaml in the cwd


def test_bf16_mixed_trains_through_autograd_as_it_says(tmp_path):
    result = _fit(tmp_path, *SHORT, "--trainer.precision", "bf16-mixed", "--trainer.default_root_dir", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training through autograd" in result.stdout + result.stderr
    # 200 SGD updates at η = 3 take the network well past chance (10%, the untrained N(0, 1) network's ~10%)
    accuracy = float(re.search(r"Last epoch 0: validation \d+ / 10000 \(([\d.]+)%\)", result.stdout)[1])
    assert accuracy > 25, result.stdout
    weights = torch.load(tmp_path / "runs" / "nielsen_ch1" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float32 for t in weights["state_dict"].values())  # autocast keeps fp32 parameters


def test_default_root_dir_holds_the_configs_relative_logs_and_checkpoints(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = _fit(cwd, *SHORT, "--trainer.default_root_dir", "D")
    assert result.returncode == 0, result.stderr[-3000:]
    files = _files(cwd)
    assert all(name.startswith("D/") for name in files), files
    assert "D/runs/nielsen_ch1/last.ckpt" in files  # the config's dirpath runs/nielsen_ch1, under D
    assert "D/runs/nielsen_ch1/version_0/metrics.csv" in files  # the config's logger save_dir runs, under D
    assert "D/runs/nielsen_ch1/version_0/checkpoints/best-epoch=0.ckpt" in files
    assert "Last checkpoint: D/runs/nielsen_ch1/last.ckpt" in result.stdout


def test_ckpt_path_last_among_two_runs_last_checkpoints_is_one_line_naming_both(tmp_path):
    config = write_config(tmp_path, trainer={"max_epochs": 1, "limit_train_batches": 1})
    folder = tmp_path / "config" / "last"
    folder.mkdir(parents=True)
    for name in ("last.ckpt", "last-v1.ckpt"):  # a first run's and a second run's, into the same folder
        (folder / name).write_bytes(b"")
    result = manualbp("fit", "--config", config, "--ckpt_path", "last")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.rstrip().splitlines()[-1]
    assert line.startswith("manualbp: error: ckpt_path last: 2 last checkpoints"), line
    assert str(folder / "last.ckpt") in line and str(folder / "last-v1.ckpt") in line and "--ckpt_path" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "setting, value, advice",
    [
        ("accumulate_grad_batches", "2", "set --model.mini_batch_size instead"),
        ("gradient_clip_val", "1.0", "does not clip gradients"),
    ],
)
def test_settings_a_self_stepping_module_cannot_honour_are_one_line_saying_what_to_do(tmp_path, setting, value, advice):
    result = _fit(tmp_path, *SHORT, f"--trainer.{setting}", value)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"manualbp: error: trainer.{setting} {value} is not supported") and advice in line, line
    assert "automatic optimization" not in result.stderr  # Lightning's advice, which a manualbp user cannot follow
    assert _files(tmp_path) == []


def test_without_save_last_the_summary_names_no_last_checkpoint_and_the_newest_file_to_resume_from(tmp_path):
    config = write_config(tmp_path, "no_last", checkpoint_every=100)

    def keep_no_last(settings):
        settings["trainer"]["callbacks"][1]["init_args"]["save_last"] = False
        settings["trainer"]["callbacks"][1]["init_args"]["save_top_k"] = 1

    edit_config(config, keep_no_last)
    result = manualbp("fit", "--config", config, *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("Last checkpoint:"))
    newest = re.fullmatch(
        r"Last checkpoint: none written \(no ModelCheckpoint has save_last\); the newest is (\S+):"
        r" resume with --ckpt_path <that file>",
        line,
    )
    assert newest and Path(newest[1]).is_file(), line
    resumed = manualbp("fit", "--config", config, *SHORT, "--trainer.max_epochs", "2", "--ckpt_path", newest[1])
    assert resumed.returncode == 0, resumed.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="TensorBoard is installed here")
def test_a_tensorboard_logger_without_tensorboard_is_one_line_naming_the_extra(tmp_path):
    result = _fit(tmp_path, *SHORT, "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("manualbp: error: trainer.logger: TensorBoardLogger needs TensorBoard") and (
        "pip install -e '.[tensorboard]'" in lines[-1]
    ), lines[-1]
    assert len(lines[-1]) < 250


@pytest.mark.parametrize(
    "setting, value, choices", [("max_steps", 1550, "1500 or 1600"), ("val_check_interval", 50, "100")]
)
def test_step_counts_that_fall_inside_a_lightning_batch_are_one_line_with_the_whole_batches_either_side(
    tmp_path, setting, value, choices
):
    result = _fit(tmp_path, f"--trainer.{setting}", str(value))
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"manualbp: error: trainer.{setting} {value} counts SGD updates") and line.endswith(
        f"use {choices}"
    ), line
    assert _files(tmp_path) == []


def test_max_steps_stops_after_that_many_sgd_updates(tmp_path):
    result = _fit(tmp_path, "--trainer.max_steps", "300", "--trainer.limit_val_batches", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "`max_steps=300` reached (3 Lightning batches of 100 SGD updates)" in result.stdout + result.stderr
    rows = [row for row in csv.DictReader(open(tmp_path / "runs" / "nielsen_ch1" / "version_0" / "metrics.csv"))]
    assert [(row["step"], float(row["updates"])) for row in rows if row.get("train/cost")] == [("2", 300)]
    saved = torch.load(tmp_path / "runs" / "nielsen_ch1" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (saved["manualbp_updates"], saved["global_step"]) == (300, 3)


def test_val_check_interval_counts_sgd_updates_and_prints_each_mid_epoch_evaluation(tmp_path):
    result = _fit(
        tmp_path,
        *SHORT[:2],
        "--trainer.limit_train_batches",
        "10",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.val_check_interval",
        "300",
        "--data.monitor_test",
        "false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [row for row in csv.DictReader(open(tmp_path / "runs" / "nielsen_ch1" / "version_0" / "metrics.csv"))]
    validated = [
        (round(float(row["updates"])), round(float(row["val/correct"]))) for row in rows if row.get("val/correct")
    ]
    assert [step for step, _ in validated] == [300, 600, 900]  # updates, not Lightning batches (100 each)
    printed = re.findall(r"^Step (\d+) \(epoch 0\): Validation: (\d+) / 2000 ", result.stdout, re.MULTILINE)
    assert [(int(step), int(correct)) for step, correct in printed] == validated
    epoch_line = next(line for line in result.stdout.splitlines() if line.startswith("Epoch 0:"))
    assert epoch_line.startswith(f"Epoch 0: {validated[-1][1]} / 2000 validation images")
    assert epoch_line.endswith("(the evaluation of step 900)")
