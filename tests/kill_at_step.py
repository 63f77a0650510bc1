"""A callback that SIGKILLs its own training process, to test resuming after a crash (test_lightning.py)."""
import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """Kill the process, with no chance to clean up, once ``step`` optimizer steps are done.

    Lightning runs checkpoint callbacks after all others, so a checkpoint due at ``step`` is not written.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
