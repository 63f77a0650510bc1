"""Checkpoints are written atomically: a failed write or a SIGKILL in the middle of one leaves the previous file
whole, `--ckpt_path last` ignores the temporary file, and the resumed run ends where an uninterrupted one does."""

import os
import signal

import pytest
import torch
from conftest import assert_resume_ends_like_the_straight_run, edit_config, run_cli, write_config

from torch_manualbp.lightning.safety import AtomicCheckpointIO


class _FailHalfway(AtomicCheckpointIO):
    def _write(self, checkpoint, file) -> None:
        file.write(b"half a checkpoint")
        raise OSError("disk full")


def test_atomic_save_replaces_the_file_whole_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 2
    assert os.listdir(target.parent) == ["last.ckpt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user creates, not mkstemp's 0o600


def test_a_failed_write_leaves_the_previous_checkpoint_untouched(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
    before = target.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        _FailHalfway().save_checkpoint({"step": 2}, target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]


def test_resuming_from_last_ignores_a_temporary_file_left_by_a_kill(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    stale = tmp_path / ".last.ckpt.12345.0badf00d.tmp"
    stale.write_bytes(b"half")
    found = ModelCheckpoint(dirpath=tmp_path)._find_last_checkpoints(None)  # what ckpt_path="last" chooses from
    assert found == {str(tmp_path / "last.ckpt")}
    AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    assert not stale.exists()  # the next save of the same file cleans up after the killed one


def test_sigkill_during_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(tmp_path):
    fast = {
        "model": {"mini_batch_size": None},  # one SGD step per batch of 500
        "data": {"batch_size": 500, "monitor_test": False},
        "trainer": {"max_epochs": 2, "limit_val_batches": 2},
    }
    straight = write_config(tmp_path, "straight", checkpoint_every=40, **fast)  # 100 steps per epoch
    killed = write_config(tmp_path, "killed", checkpoint_every=40, **fast)
    killer = {"class_path": "kill_mid_checkpoint.KillMidCheckpointWrite", "init_args": {"step": 120}}
    edit_config(killed, lambda settings: settings["trainer"].update(plugins=[killer]))
    assert run_cli(straight).returncode == 0

    interrupted = run_cli(killed)
    assert interrupted.returncode == -signal.SIGKILL, interrupted.stderr[-3000:]
    last_dir = tmp_path / "killed" / "last"
    saved = torch.load(last_dir / "last.ckpt", map_location="cpu", weights_only=True)
    # the previous checkpoint, whole (last.ckpt written again after epoch 0's evaluation, at step 100); the one at
    # step 120 was cut in half
    assert saved["global_step"] == 100
    (partial,) = last_dir.glob(".last.ckpt.*.tmp")
    with pytest.raises(Exception):  # noqa: B017 -- any failure to load will do: the file is cut in half
        torch.load(partial, map_location="cpu", weights_only=True)

    # resume as a user would, with the default (atomic) checkpoint writer
    assert_resume_ends_like_the_straight_run(tmp_path, killed, lambda settings: settings["trainer"].pop("plugins"))
    assert not list(last_dir.glob("*.tmp")) and not list(last_dir.glob(".*.tmp"))
