"""Off the README's path, ``manualbp`` does what was asked or says in one line why not: no answer from an untrained
network, no abbreviated option taken for another, a readable ``--help``, and output with nothing a user cannot act on
(adverts, dependencies' deprecations, warnings about the callbacks the command adds itself, a second table of the
same numbers, a log folder per evaluation).

Every run is the real command, in a subprocess or through ``torch_manualbp.cli.main``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT, edit_config, manualbp, write_config
from PIL import Image

from torch_manualbp.cli import main

DIGITS = ROOT / "experiments" / "digits"
SHORT = {"trainer": {"max_epochs": 1, "limit_train_batches": 5, "limit_val_batches": 2}}

# what Lightning and its dependencies print that a manualbp user cannot act on (issue 17)
NOISE = [
    "💡 Tip",  # adverts for litlogger and litmodels
    "LeafSpec",  # a deprecation inside a dependency, with its site-packages path
    "The dirpath has changed",  # the best checkpoint's folder is the run's log version, new on every resume
    "Please add the following callbacks",  # EpochReport, which the command itself adds to fit and not to predict
    "Detected KeyboardInterrupt",
    "Test metric",  # Lightning's table of what `test` has just printed
    "Validate metric",
]


def _one_error_line(capsys) -> str:
    return _the_error_line(capsys.readouterr().err)


def _the_error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("manualbp: error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]


def _versions(tmp_path: Path, name: str = "config") -> list[str]:
    return sorted(path.name for path in (tmp_path / "runs" / name).glob("version_*"))


# --- no answer from an untrained network ---------------------------------------------------------------------------


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_without_a_checkpoint_is_one_line_saying_what_to_pass_and_writes_nothing(
    tmp_path, capsys, subcommand
):
    config = write_config(tmp_path, **SHORT)
    assert main([subcommand, "--config", str(config), "--data.predict_path", str(DIGITS)]) == 2
    line = _one_error_line(capsys)
    assert f"{subcommand} needs a trained network" in line and "--ckpt_path last" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_ckpt_path_last_that_finds_no_last_checkpoint_is_one_line_for_every_subcommand(tmp_path, subcommand):
    config = write_config(tmp_path, **SHORT)
    result = manualbp(subcommand, "--config", config, "--ckpt_path", "last", "--data.predict_path", DIGITS)
    assert result.returncode == 2
    line = _the_error_line(result.stderr)
    assert f"ckpt_path last: no last.ckpt in {tmp_path / 'config' / 'last'}" in line, line
    if subcommand == "fit":  # not a new run that silently starts from scratch
        assert "leave --ckpt_path out to start a new run" in line
    else:
        assert "needs a trained network" in line
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_best_outside_fit_is_one_line_naming_the_summarys_best_checkpoint(tmp_path, capsys):
    config = write_config(tmp_path, **SHORT)
    assert main(["test", "--config", str(config), "--ckpt_path", "best"]) == 2
    assert "'Best checkpoint'" in _one_error_line(capsys)


# --- options -------------------------------------------------------------------------------------------------------


def test_an_abbreviated_option_is_refused_not_taken_for_the_one_it_abbreviates(tmp_path, capsys):
    config = write_config(tmp_path, **SHORT)
    assert main(["fit", "--config", str(config), "--model.et", "0.5"]) == 2
    assert "--model.et" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_help_is_plain_text_headed_by_manualbp_with_every_subcommand_in_its_usage_line():
    top = manualbp("--help")
    assert top.returncode == 0, top.stderr[-2000:]
    usage = top.stdout.splitlines()[0]
    assert usage.startswith("usage: manualbp ")
    assert all(name in usage for name in ("fit", "validate", "test", "predict", "gradcheck"))
    assert "Lightning Trainer command line tool" not in top.stdout
    fit = manualbp("fit", "--help")
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert fit.stdout.startswith("usage: manualbp [options] fit")
    assert "manualbp fit: train a network" in fit.stdout
    for markup in (":math:", ":class:", ":paramref:", "`", "\\eta", "\\lambda", "\\partial"):
        assert markup not in fit.stdout, markup
    assert "--model.eta" in fit.stdout and "η" in fit.stdout


# --- quiet, useful output ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A short session as a user has it: fit (cross-entropy), resume it for one more epoch, then test, validate and
    predict the last checkpoint, with the logger making a new version folder per run as the shipped configs do."""
    tmp_path = tmp_path_factory.mktemp("session")
    config = write_config(tmp_path, model={"cost": "cross_entropy"}, **SHORT)
    edit_config(config, lambda s: s["trainer"]["logger"]["init_args"].pop("version"))
    runs = {"fit": manualbp("fit", "--config", config)}
    runs["resume"] = manualbp("fit", "--config", config, "--ckpt_path", "last", "--trainer.max_epochs", "2")
    versions = _versions(tmp_path)
    for subcommand in ("test", "validate", "predict"):
        runs[subcommand] = manualbp(
            subcommand, "--config", config, "--ckpt_path", "last", "--data.predict_path", DIGITS
        )
    for name, result in runs.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    return tmp_path, runs, versions


@pytest.mark.parametrize("run", ["fit", "resume", "test", "validate", "predict"])
def test_output_has_no_adverts_dependency_deprecations_or_warnings_about_the_commands_own_callbacks(session, run):
    _, runs, _ = session
    output = runs[run].stdout + runs[run].stderr
    for noise in NOISE:
        assert noise not in output, (noise, output[-3000:])


def test_test_and_validate_print_the_books_line_once_and_evaluations_make_no_log_folder(session):
    tmp_path, runs, versions_after_fit = session
    tested = [line for line in runs["test"].stdout.splitlines() if line.strip()]
    assert len([line for line in tested if "test" in line.lower()]) == 1, runs["test"].stdout
    assert re.fullmatch(r"Test: \d+ / 10000 \(\d+\.\d\d%\), test cost \d\.\d{4}", tested[-1])
    validated = runs["validate"].stdout.splitlines()[-1]
    assert re.fullmatch(
        r"Validation: \d+ / 2000 \(\d+\.\d\d%\), validation cost \d\.\d{4}; Test: \d+ / 2000 \(\d+\.\d\d%\),"
        r" test cost \d\.\d{4}",
        validated,
    ), runs["validate"].stdout
    assert versions_after_fit == ["version_0", "version_1"]  # fit and its resume
    assert _versions(tmp_path) == versions_after_fit  # test, validate and predict wrote no log
    assert not (ROOT / "config.yaml").exists()  # nor a copy of the config where they ran


def test_the_chart_names_the_runs_cost(session):
    tmp_path, _, _ = session
    chart = Image.open(tmp_path / "runs" / "config" / "version_0" / "curves.png")
    assert chart.text["Title"] == "accuracy and cross-entropy cost per epoch"


def test_a_scheduler_given_without_an_optimizer_drives_the_classifiers_own_sgd(tmp_path):
    # LightningCLI builds --lr_scheduler only beside --optimizer; alone it used to be dropped without a word
    config = write_config(tmp_path, checkpoint_every=100, trainer={"max_epochs": 2, "limit_train_batches": 5})
    scheduler = ("--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.01")
    result = manualbp("fit", "--config", config, *scheduler)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "will be overridden" not in result.stderr
    checkpoint = torch.load(tmp_path / "config" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    (state,) = checkpoint["lr_schedulers"]
    # stepped after epoch 0; last.ckpt is written at epoch 1's last batch, before that epoch's step
    assert state["step_size"] == 1 and state["gamma"] == 0.01 and state["last_epoch"] == 1
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(3.0 * 0.01)


def test_a_scheduler_beside_the_classifiers_own_lr_schedule_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path, model={"lr_schedule": "cosine"})
    assert main(["fit", "--config", str(config), "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1"]) == 2
    assert "--lr_scheduler and model.lr_schedule both set the learning rate's schedule" in _one_error_line(capsys)


def test_a_shipped_config_trains_from_another_working_directory_its_data_dir_beside_the_config(tmp_path):
    # data_dir: ../data/mnist in experiments/nielsen_ch1.yaml is the repository's MNIST; the outputs (runs/...) go to
    # the working directory, as any command's relative outputs do
    config = ROOT / "experiments" / "nielsen_ch1.yaml"
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    result = manualbp("fit", "--config", config, *short, "--data.monitor_test", "false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "nielsen_ch1" / "version_0" / "metrics.csv").is_file()
    assert (tmp_path / "runs" / "nielsen_ch1" / "last.ckpt").is_file()


def test_a_relative_data_dir_on_the_command_line_is_relative_to_the_working_directory(tmp_path):
    config = ROOT / "experiments" / "nielsen_ch1.yaml"
    result = manualbp("fit", "--config", config, "--data.data_dir", "data/mnist", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"manualbp: error: data.data_dir '{tmp_path / 'data' / 'mnist'}' is not a directory")
    )
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_predict_on_image_files_needs_no_mnist_folder(session, tmp_path):
    # the session's last checkpoint, read from a working directory with no data/ and a data_dir that does not exist
    checkpoint = next((session[0] / "config" / "last").glob("last*.ckpt"))
    with_data = session[1]["predict"].stdout
    result = manualbp(
        "predict", "--config", session[0] / "config.yaml", "--ckpt_path", checkpoint, "--data.predict_path", DIGITS,
        "--data.data_dir", tmp_path / "no_mnist_here", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [line for line in result.stdout.splitlines() if ": predicted " in line]
    assert answers and answers == [line for line in with_data.splitlines() if ": predicted " in line]


def test_read_config_takes_a_relative_data_dir_beside_the_file_and_keeps_absolute_and_home_paths(tmp_path):
    from torch_manualbp.lightning.cli import read_config

    config = tmp_path / "configs" / "run.yaml"
    config.parent.mkdir()
    for written, want in (("../mnist", tmp_path / "mnist"), ("/data/mnist", Path("/data/mnist"))):
        config.write_text(f"model:\n  eta: 0.5\ndata:\n  data_dir: {written}\n  batch_size: 10\n")
        assert read_config(config) == {"model": {"eta": 0.5}, "data": {"data_dir": str(want), "batch_size": 10}}
    config.write_text("data:\n  data_dir: ~/mnist\n")
    assert read_config(config)["data"]["data_dir"] == str(Path.home() / "mnist")
    assert read_config(ROOT / "experiments" / "nielsen_ch1.yaml")["data"]["data_dir"] == str(ROOT / "data" / "mnist")
