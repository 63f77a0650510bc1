"""Interrupts and resumes tell the truth: a ``manualbp fit`` stopped by SIGINT, SIGTERM or SIGKILL in the middle of an
epoch and resumed prints the same epoch lines and summary as a run that was never stopped, and ends with the same
weights. SIGINT and SIGTERM lose no step: the checkpoint is written at the interrupt, and the last line is the command
that resumes.

The reference is an uninterrupted run of the same config, in its own process; every run is the real command.
"""

from __future__ import annotations

import re
import shlex
import signal

import pytest
import torch
from conftest import edit_config, final_weights, manualbp, metrics, write_config

INTERRUPT_AT = 1500  # the middle of epoch 1: an epoch is 10 Lightning batches of 100 mini-batches of 10 images
CHECKPOINT_EVERY = 700  # last.ckpt at steps 700, 1400, 2100, 2800: a SIGKILL at 1500 loses 100 steps
FAST = {"trainer": {"max_epochs": 3, "limit_train_batches": 10, "limit_val_batches": 3}}
RESUME_LINE = re.compile(
    r"^manualbp: interrupted at step (\d+) \(epoch (\d+)\); checkpoint (\S+); resume with: (manualbp fit .*)$"
)


def _epoch_lines(stdout: str) -> list[tuple[str, float]]:
    """Each ``Epoch N: ...`` line without its seconds, and the seconds."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("Epoch "):
            rest, seconds = line.rsplit(", ", 1)
            found.append((rest, float(seconds.removesuffix(" s"))))
    return found


def _summary(stdout: str) -> list[str]:
    """The summary's lines about the epochs (best and last), which must not depend on interruptions."""
    return [line for line in stdout.splitlines() if line.startswith(("Best epoch", "Last epoch"))]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("straight")
    result = manualbp("fit", "--config", write_config(tmp_path, "straight", checkpoint_every=CHECKPOINT_EVERY, **FAST))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, result


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory):
    """``signal_name -> (folder, interrupted run, resumed run, step in last.ckpt between them)``, each pair run once."""
    done = {}

    def runs(signal_name: str):
        if signal_name not in done:
            tmp_path = tmp_path_factory.mktemp(signal_name)
            done[signal_name] = (tmp_path, *_interrupt_and_resume(tmp_path, signal_name))
        return done[signal_name]

    return runs


def _interrupt_and_resume(tmp_path, signal_name: str):
    """Run the config with a callback that sends ``signal_name`` at step INTERRUPT_AT, then resume it as a user
    would: the printed command after SIGINT or SIGTERM, ``--ckpt_path last`` after SIGKILL. Returns both runs and the
    step that ``last.ckpt`` held between them."""
    config = write_config(tmp_path, "killed", checkpoint_every=CHECKPOINT_EVERY, **FAST)
    killer = {"class_path": "kill_at_step.KillAtStep", "init_args": {"step": INTERRUPT_AT, "signal_name": signal_name}}
    edit_config(config, lambda s: s["trainer"]["callbacks"].append(killer))
    interrupted = manualbp("fit", "--config", config)
    saved = torch.load(tmp_path / "killed" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    edit_config(config, lambda s: s["trainer"]["callbacks"].pop())
    if signal_name == "SIGKILL":
        resumed = manualbp("fit", "--config", config, "--ckpt_path", "last")
    else:
        command = shlex.split(RESUME_LINE.match(interrupted.stderr.splitlines()[-1])[4])
        assert command[:2] == ["manualbp", "fit"]
        resumed = manualbp(*command[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return interrupted, resumed, saved["manualbp_updates"]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_save_the_step_they_stop_at_and_end_with_the_command_that_resumes(
    interrupted_and_resumed, straight, signal_name
):
    tmp_path, interrupted, resumed, saved_step = interrupted_and_resumed(signal_name)
    signum = signal.Signals[signal_name]
    assert interrupted.returncode == 128 + signum  # the shell's status for a process stopped by that signal
    assert "Detected KeyboardInterrupt" not in interrupted.stdout + interrupted.stderr
    match = RESUME_LINE.match(interrupted.stderr.splitlines()[-1])
    assert match, interrupted.stderr[-2000:]
    checkpoint = str(tmp_path / "killed" / "last" / "last.ckpt")
    assert (int(match[1]), int(match[2]), match[3]) == (INTERRUPT_AT, 1, checkpoint)
    assert saved_step == INTERRUPT_AT  # nothing lost
    _assert_the_resumed_run_reports_and_ends_as_the_straight_one(tmp_path, straight, interrupted, resumed)


def test_sigkill_then_resume_from_last_reports_and_ends_as_an_uninterrupted_run(interrupted_and_resumed, straight):
    tmp_path, interrupted, resumed, saved_step = interrupted_and_resumed("SIGKILL")
    assert interrupted.returncode == -signal.SIGKILL
    assert saved_step == 1400  # the last checkpoint before the kill
    _assert_the_resumed_run_reports_and_ends_as_the_straight_one(tmp_path, straight, interrupted, resumed)


def _assert_the_resumed_run_reports_and_ends_as_the_straight_one(tmp_path, straight, interrupted, resumed) -> None:
    straight_dir, want = straight
    want_lines = _epoch_lines(want.stdout)
    got_lines = _epoch_lines(interrupted.stdout) + _epoch_lines(resumed.stdout)
    assert len(want_lines) == len(got_lines) == 3, interrupted.stdout + resumed.stdout
    for (want_line, _), (got_line, seconds) in zip(want_lines, got_lines):
        assert got_line == want_line  # counts, accuracy and the training cost over the whole epoch
        # the work done in the epoch, not the time since the interpreter started (a tiny epoch may print 0.0 s)
        assert 0 <= seconds < 60, got_lines
    assert _summary(resumed.stdout) == _summary(want.stdout)
    finished = re.search(r"^Finished 3 epochs in (\d+\.\d) s of work over 2 processes", resumed.stdout, re.MULTILINE)
    assert finished and float(finished[1]) < 120, resumed.stdout
    want_weights, got_weights = final_weights(straight_dir, "straight"), final_weights(tmp_path, "killed")
    assert want_weights.keys() == got_weights.keys()
    for key in want_weights:
        assert torch.equal(got_weights[key], want_weights[key]), key


def test_the_resumed_epochs_training_cost_equals_the_uninterrupted_runs(interrupted_and_resumed, straight):
    _, _, resumed, _ = interrupted_and_resumed("SIGTERM")
    assert _epoch_lines(resumed.stdout)[0][0] == _epoch_lines(straight[1].stdout)[1][0]


def test_an_interrupted_second_run_into_the_same_folder_keeps_the_first_runs_last_checkpoint(tmp_path):
    one_epoch = {"trainer": {**FAST["trainer"], "max_epochs": 1}}
    first = write_config(tmp_path, "first", checkpoint_every=CHECKPOINT_EVERY, **one_epoch)
    assert manualbp("fit", "--config", first).returncode == 0
    folder = tmp_path / "first" / "last"
    first_bytes = (folder / "last.ckpt").read_bytes()
    second = write_config(tmp_path, "second", checkpoint_every=CHECKPOINT_EVERY, **one_epoch)
    killer = {"class_path": "kill_at_step.KillAtStep", "init_args": {"step": 300, "signal_name": "SIGINT"}}

    def into_the_first_runs_folder_with_the_killer(settings):
        settings["trainer"]["callbacks"][1]["init_args"]["dirpath"] = str(folder)
        settings["trainer"]["callbacks"].append(killer)

    edit_config(second, into_the_first_runs_folder_with_the_killer)
    interrupted = manualbp("fit", "--config", second)  # stopped at step 300, before its first periodic save (700)
    match = RESUME_LINE.match(interrupted.stderr.splitlines()[-1])
    assert match and match[3] == str(folder / "last-v1.ckpt"), interrupted.stderr[-2000:]
    assert (folder / "last.ckpt").read_bytes() == first_bytes
    edit_config(second, lambda settings: settings["trainer"]["callbacks"].pop())
    ambiguous = manualbp("fit", "--config", second, "--ckpt_path", "last")
    assert ambiguous.returncode == 2
    assert ambiguous.stderr.strip().splitlines()[-1] == (
        f"manualbp: error: ckpt_path last: 2 last checkpoints ({folder / 'last-v1.ckpt'}, {folder / 'last.ckpt'});"
        " pass --ckpt_path <one of them>"
    )
    resumed = manualbp(*shlex.split(match[4])[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(path.name for path in folder.iterdir()) == ["last-v1.ckpt", "last.ckpt"]  # it went on in its own
    steps = [
        torch.load(folder / name, map_location="cpu", weights_only=True)["manualbp_updates"]
        for name in ("last.ckpt", "last-v1.ckpt")
    ]
    assert steps[0] == steps[1] > 300  # the same run's saves as the first's, past the interrupt
    assert (folder / "last.ckpt").read_bytes() == first_bytes


def _rows(tmp_path, name: str) -> list[dict[str, str]]:
    return [row for row in metrics(tmp_path, name)]


def _assert_same_rows(got: list[dict[str, str]], want: list[dict[str, str]]) -> None:
    assert [(row["epoch"], row["step"], sorted(k for k, v in row.items() if v)) for row in got] == [
        (row["epoch"], row["step"], sorted(k for k, v in row.items() if v)) for row in want
    ]
    for got_row, want_row in zip(got, want):  # the resumed epoch's training cost: summed in two processes
        for key, value in want_row.items():
            if value:
                assert float(got_row[key]) == pytest.approx(float(value), rel=1e-6), key


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_resumed_run_into_its_own_log_folder_keeps_the_metrics_of_the_steps_before_its_checkpoint(
    interrupted_and_resumed, straight, signal_name
):
    # Lightning's CSVLogger deletes metrics.csv when a run starts in an existing version folder (these configs fix
    # version 0): the resumed run's file holds the epochs logged before the checkpoint too, as the straight run's
    tmp_path, *_ = interrupted_and_resumed(signal_name)
    _assert_same_rows(_rows(tmp_path, "killed"), _rows(straight[0], "straight"))


def test_resuming_from_an_end_of_epoch_checkpoint_logs_what_the_straight_run_logs(tmp_path, straight):
    config = write_config(tmp_path, "from_best", checkpoint_every=CHECKPOINT_EVERY, **FAST)
    edit_config(config, lambda s: s["trainer"].update(max_epochs=2))
    assert manualbp("fit", "--config", config).returncode == 0
    best = next((tmp_path / "runs" / "from_best" / "version_0" / "checkpoints").glob("best-epoch=*.ckpt"))
    edit_config(config, lambda s: s["trainer"].update(max_epochs=3))
    resumed = manualbp("fit", "--config", config, "--ckpt_path", best)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epoch = int(best.stem.split("=")[1])
    want_lines = _epoch_lines(straight[1].stdout)[epoch + 1 :]
    assert [line for line, _ in _epoch_lines(resumed.stdout)] == [line for line, _ in want_lines]
    _assert_same_rows(_rows(tmp_path, "from_best"), _rows(straight[0], "straight"))
