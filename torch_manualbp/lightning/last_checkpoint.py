r"""``LastAtEpochEnd``: the run's last checkpoint written again once an epoch is evaluated, so that it is an
end-of-epoch checkpoint.

A ``ModelCheckpoint`` with ``save_last`` and ``every_n_train_steps`` writes ``last.ckpt`` after a batch; when that batch
is an epoch's last (as with the shipped configs, whose epochs are whole numbers of its period), the file holds the
state before the epoch's validation, and Lightning, resuming from it, counts the epoch done without running its
validation or its end: a run extended from it (``--trainer.max_epochs 4 --ckpt_path last`` after 2) lost that
epoch's evaluation and logged the next epoch's training cost over both. Written again at the end of the epoch's
validation, the file is the checkpoint Lightning's own validation-monitoring ``ModelCheckpoint`` writes, which
resumes as the uninterrupted run goes on (``tests/test_resume_every_checkpoint.py``)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["LastAtEpochEnd"]


class LastAtEpochEnd(L.Callback):
    """After each epoch's validation, write every ``save_last`` ``ModelCheckpoint``'s last checkpoint again (the
    file it has written, never another), through ``trainer.save_checkpoint``. ``manualbp fit`` adds it after the
    epoch report, whose record of the evaluation the checkpoint then holds."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.fast_dev_run:
            return
        if not trainer.is_last_batch:  # a mid-epoch evaluation (val_check_interval): the periodic saves stand
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.last_model_path:
                trainer.save_checkpoint(callback.last_model_path)
