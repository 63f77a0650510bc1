"""A CheckpointIO that SIGKILLs its own process halfway through writing a checkpoint (test_atomic_checkpoints.py).

Used as ``trainer.plugins`` in a YAML config, with ``PYTHONPATH=tests``; it replaces the CLI's default
``AtomicCheckpointIO`` and behaves exactly like it until the checkpoint chosen to be killed.
"""

import io
import os
import signal
from pathlib import Path

import torch

from torch_manualbp.lightning.safety import AtomicCheckpointIO


class KillMidCheckpointWrite(AtomicCheckpointIO):
    """Write half of the first checkpoint named ``name`` at or after ``step``, make those bytes durable, and die.

    Args:
        step: the first SGD update count whose checkpoint is cut short.
        name: the file name of the checkpoint to cut short (``last.ckpt``).
    """

    def __init__(self, step: int, name: str = "last.ckpt") -> None:
        super().__init__()
        self.step = step
        self.name = name
        self._armed = False

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self._armed = Path(path).name == self.name and checkpoint["manualbp_updates"] >= self.step
        super().save_checkpoint(checkpoint, path, storage_options)

    def _write(self, checkpoint, file) -> None:
        if not self._armed:
            return super()._write(checkpoint, file)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
