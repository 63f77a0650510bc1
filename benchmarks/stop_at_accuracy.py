r"""A Lightning callback that stops training once the test accuracy reaches a target, and records when.

Used by :mod:`benchmarks.time_to_95` through ``manualbp fit --config benchmarks/fast_95.yaml``: every
``every_n_steps`` optimizer steps it classifies the whole test set (10,000 images, one forward pass,
``no_grad``), and when the accuracy is at least ``target`` it writes a JSON file and sets
``trainer.should_stop``. Elapsed time is wall-clock from the epoch seconds in the environment variable
``BENCH_T0`` (set by the launcher just before it starts the process, so interpreter start-up, imports and
reading the data from disk all count), or from this module's import when that is unset. The evaluations
themselves are part of the elapsed time, as they would be in any run that watches its accuracy.

Test accuracy is the figure the book reports; using it to stop is fine for a time-to-accuracy benchmark
(nothing is selected by it), not for choosing a model.

To use it in a config::

    trainer:
      callbacks:
        - class_path: benchmarks.stop_at_accuracy.StopAtAccuracy
          init_args: {target: 0.95, every_n_steps: 500, result_file: benchmarks/results/time_to_95.json}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import torch

__all__ = ["StopAtAccuracy"]

_IMPORTED_AT = time.time()


def _start_time() -> tuple[float, str]:
    if "BENCH_T0" in os.environ:
        return float(os.environ["BENCH_T0"]), "launcher (BENCH_T0)"
    return _IMPORTED_AT, "callback module import"


class StopAtAccuracy(L.Callback):
    """Stop at ``target`` test accuracy, writing the elapsed time to ``result_file``.

    Args:
        target: accuracy in [0, 1] to reach, e.g. 0.95.
        every_n_steps: optimizer steps between evaluations.
        result_file: where the JSON record goes (written when the target is reached, or at the end).
    """

    def __init__(self, target: float = 0.95, every_n_steps: int = 500, result_file: str = "time_to_95.json") -> None:
        self.target = target
        self.every_n_steps = every_n_steps
        self.result_file = Path(result_file)
        self.history: list[dict] = []
        self.reached: dict | None = None
        self._test = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.reached is None and trainer.global_step % self.every_n_steps == 0:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # also at every epoch's end, so a target reached in the last steps is not missed
        if self.reached is None and (not self.history or self.history[-1]["step"] != trainer.global_step):
            self._check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.reached is None:
            self._write(trainer, reached=False)

    def _check(self, trainer, pl_module) -> None:
        accuracy = self._test_accuracy(trainer, pl_module)
        start, _ = _start_time()
        record = {
            "elapsed_s": time.time() - start,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "accuracy": accuracy,
        }
        self.history.append(record)
        if accuracy >= self.target:
            self.reached = record
            self._write(trainer, reached=True)
            trainer.should_stop = True

    @torch.no_grad()
    def _test_accuracy(self, trainer, pl_module) -> float:
        if self._test is None:  # the data module has loaded all splits in setup(); move the test set once
            x, _, labels = trainer.datamodule.splits["test"]
            self._test = (x.to(pl_module.device), labels.to(pl_module.device))
        x, labels = self._test
        return float((pl_module(x).argmax(1) == labels).float().mean())

    def _write(self, trainer, reached: bool) -> None:
        _, clock = _start_time()
        last = self.reached or (self.history[-1] if self.history else {})
        result = {
            "target": self.target,
            "reached": reached,
            **last,
            "clock_from": clock,
            "device": str(trainer.strategy.root_device),
            "torch_threads": torch.get_num_threads(),
            "hparams": dict(trainer.lightning_module.hparams),
            "history": self.history,
        }
        self.result_file.parent.mkdir(parents=True, exist_ok=True)
        self.result_file.write_text(json.dumps(result, indent=2))
