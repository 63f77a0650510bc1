"""A callback that sends its own training process a signal, to test interrupts and resuming after a crash
(test_lightning.py, test_interrupts.py)."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """Send the process ``signal_name`` (by default SIGKILL: no chance to clean up) once, when ``step`` SGD updates
    are done (the classifier's ``updates``).

    Lightning runs checkpoint callbacks after all others, so a checkpoint due at ``step`` is not written before it.
    """

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signum = signal.Signals[signal_name]
        self._sent = False

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if pl_module.updates >= self.step and not self._sent:
            self._sent = True
            os.kill(os.getpid(), self.signum)
