r"""What the ``manualbp`` command tells its user: the book's line after every epoch, a summary with a chart at the
end of ``fit``, the accuracy of ``test``, and one line per image for ``predict``.

- :class:`EpochReport`: ``Epoch 3: 9412 / 10000 test images; validation 94.05%, training cost 0.0521, 5.2 s``
  after each epoch (the book's ``Epoch 3: 9412 / 10000``, on the test images when the test set is monitored,
  ``data.monitor_test``, otherwise on the validation images, and it says which), then a summary and a PNG of the
  curves in the run's log directory. The ``manualbp`` command adds one unless the config sets ``report: false``
  (or lists its own).
- :class:`PredictionReport`: the predicted digit and the two most likely digits of each image, always added to
  ``manualbp predict``.

Plain ``print`` lines, flushed, one per event: readable in a CI log, no carriage returns.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["CURVES_PNG", "EpochReport", "PredictionReport", "UnreadableImagesError", "format_count"]

#: File name of the chart of the run's curves, written into the run's log directory at the end of ``fit``.
CURVES_PNG = "curves.png"

_STAGES = ("val", "test")


def format_count(correct: int, total: int) -> str:
    r"""``"9412 / 10000 (94.12%)"``: the book's count, with the accuracy it means."""
    return f"{correct} / {total} ({100 * correct / total:.2f}%)" if total else "no images"


class EpochReport(L.Callback):
    r"""Print the book's line after every training epoch, a summary at the end of ``fit``, and ``test``'s result.

    The counts of correct answers are exact: the sums of ``val/correct`` and ``test/correct``, which
    :class:`~torch_manualbp.lightning.ManualBPClassifier` logs per batch, over the number of images evaluated (counted
    here, summed over processes). The summary names the best epoch (highest validation accuracy; the earliest of
    equals, as ``ModelCheckpoint`` keeps it), the last, the total time, the checkpoints, the metrics file and a chart
    of accuracy and cost per epoch (``curves.png`` in the log directory). The per-epoch history is saved in
    checkpoints, so a resumed run's summary and chart cover all its epochs. Only global rank 0 prints.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []  # one row per finished epoch, see _epoch_row
        self._seen = {stage: 0 for stage in _STAGES}  # images evaluated in this validation or test pass
        self._evaluated: dict[str, tuple[int, int, float]] = {}  # stage -> (correct, total, cost) of this epoch
        self._epoch_start = self._fit_start = 0.0

    # --- fit ----------------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._evaluated = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._seen = {stage: 0 for stage in _STAGES}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._seen[_STAGES[dataloader_idx]] += len(batch[-1])  # a second validation dataloader is the test set

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._evaluated = self._collect(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        row = self._epoch_row(trainer)
        self.history.append(row)
        if trainer.is_global_zero:
            print(_epoch_line(row), flush=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # on every rank: under DDP it is a broadcast
        if not trainer.is_global_zero or not self.history:
            return
        chart = log_dir / CURVES_PNG
        draw_curves(self.history, chart)
        print(self.summary(trainer, time.perf_counter() - self._fit_start, chart), flush=True)

    def _epoch_row(self, trainer) -> dict[str, Any]:
        cost = trainer.callback_metrics.get("train/cost")
        row: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "seconds": time.perf_counter() - self._epoch_start,
            "train_cost": None if cost is None else float(cost),
        }
        for stage in _STAGES:
            correct, total, stage_cost = self._evaluated.get(stage, (None, None, None))
            row.update({f"{stage}_correct": correct, f"{stage}_total": total, f"{stage}_cost": stage_cost})
        return row

    def _collect(self, trainer) -> dict[str, tuple[int, int, float]]:
        r"""``stage -> (correct, total, cost)`` of the evaluation that just ended, for each stage it covered."""
        metrics = trainer.callback_metrics
        found = {}
        for stage in _STAGES:
            seen = torch.tensor(self._seen[stage], device=trainer.strategy.root_device)
            total = int(trainer.strategy.reduce(seen, reduce_op="sum"))  # every rank's share of the split
            if total and f"{stage}/correct" in metrics:
                cost = metrics.get(f"{stage}/cost")
                found[stage] = (round(float(metrics[f"{stage}/correct"])), total, None if cost is None else float(cost))
        return found

    def summary(self, trainer, seconds: float, chart: Path) -> str:
        r"""The lines printed at the end of ``fit``: best and last epoch, time, and where everything was written."""
        validated = [row for row in self.history if row["val_total"]]
        epochs = len(self.history)
        lines = ["", f"Finished {epochs} epoch{'s' if epochs != 1 else ''} in {seconds:.1f} s"]
        if validated:
            best = max(validated, key=lambda row: (row["val_correct"] / row["val_total"], -row["epoch"]))
            lines.append(f"Best epoch {best['epoch']} (by validation accuracy): {_accuracies(best)}")
            lines.append(f"Last epoch {self.history[-1]['epoch']}: {_accuracies(self.history[-1])}")
        best_path = last_path = ""
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                best_path = best_path or (callback.best_model_path if callback.monitor else "")
                # without a monitor, a ModelCheckpoint's "best" is simply the newest file it wrote
                last_path = last_path or callback.last_model_path or ("" if callback.monitor else callback.best_model_path)
        lines.append(f"Best checkpoint: {_shown(best_path) if best_path else 'none written'}")
        lines.append(f"Last checkpoint: {_shown(last_path) if last_path else 'none written'}")
        lines.append(f"Metrics: {_metrics_location(trainer)}")
        lines.append(f"Curves: {_shown(chart)}")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])

    # --- test ---------------------------------------------------------------------------------------------------

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._seen = {stage: 0 for stage in _STAGES}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._seen["test"] += len(batch[-1])

    def on_test_end(self, trainer, pl_module) -> None:
        result = self._collect(trainer).get("test")
        if trainer.is_global_zero and result is not None:
            correct, total, cost = result
            print(f"Test: {format_count(correct, total)}, test cost {cost:.4f}", flush=True)


def _epoch_line(row: dict[str, Any]) -> str:
    r"""The book's ``Epoch N: correct / total`` line, then the validation accuracy, training cost and seconds."""
    epoch, rest = row["epoch"], []
    if row["test_total"]:  # the book's count is of the test images
        head = f"Epoch {epoch}: {row['test_correct']} / {row['test_total']} test images"
        if row["val_total"]:
            rest.append(f"validation {100 * row['val_correct'] / row['val_total']:.2f}%")
    elif row["val_total"]:
        correct, total = row["val_correct"], row["val_total"]
        head = f"Epoch {epoch}: {correct} / {total} validation images ({100 * correct / total:.2f}%)"
    else:
        head = f"Epoch {epoch}: not evaluated"
    if row["train_cost"] is not None:
        rest.append(f"training cost {row['train_cost']:.4f}")
    rest.append(f"{row['seconds']:.1f} s")
    return f"{head}; {', '.join(rest)}"


def _accuracies(row: dict[str, Any]) -> str:
    r"""``validation 9540 / 10000 (95.40%), test 9484 / 10000 (94.84%)`` for what the epoch evaluated."""
    found = [
        f"{name} {format_count(row[f'{stage}_correct'], row[f'{stage}_total'])}"
        for stage, name in (("val", "validation"), ("test", "test"))
        if row[f"{stage}_total"]
    ]
    return ", ".join(found)


def _shown(path) -> str:
    r"""``path`` relative to the working directory when it lies inside it (as the configs name them), else whole."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _metrics_location(trainer) -> str:
    r"""The CSV file of a ``CSVLogger``, the log directory of any other logger (TensorBoard's), or that there is none."""
    if trainer.logger is None:
        return "not logged (trainer.logger is off)"
    metrics_file = getattr(trainer.logger.experiment, "metrics_file_path", None)  # CSVLogger's metrics.csv
    return _shown(metrics_file) if metrics_file else f"{_shown(trainer.logger.log_dir)} ({type(trainer.logger).__name__})"


def draw_curves(history: list[dict[str, Any]], path: Path) -> None:
    r"""Write a PNG of accuracy and cost per epoch (training cost; validation and test accuracy and cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (accuracy_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for stage, name in (("val", "validation"), ("test", "test")):
        rows = [row for row in history if row[f"{stage}_total"]]
        if rows:
            epochs = [row["epoch"] for row in rows]
            accuracy_ax.plot(epochs, [100 * row[f"{stage}_correct"] / row[f"{stage}_total"] for row in rows], "o-", label=name)
            cost_ax.plot(epochs, [row[f"{stage}_cost"] for row in rows], "o-", label=name)
    trained = [row for row in history if row["train_cost"] is not None]
    cost_ax.plot([row["epoch"] for row in trained], [row["train_cost"] for row in trained], "o-", label="training")
    accuracy_ax.set(title="accuracy per epoch", xlabel="epoch", ylabel="% correct")
    cost_ax.set(title="quadratic cost per epoch", xlabel="epoch", ylabel="C", yscale="log")
    for ax in (accuracy_ax, cost_ax):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


class UnreadableImagesError(ValueError):
    """Some of the images given to ``manualbp predict`` could not be read; the others were answered."""


class PredictionReport(L.Callback):
    r"""Print one line per image predicted: the file, the predicted digit, and the two most likely digits with their
    output activations; an image that could not be read gets a line saying why.

    A batch is ``(x, names, notes, readable)`` as :meth:`MNISTDataModule.predict_dataloader` gives it, and the
    model's ``predict_step`` returns the output activations ``(B, 10)``. After the last batch, if any image could
    not be read, :class:`UnreadableImagesError` names them (the ``manualbp`` command prints it as its error line).
    """

    def __init__(self) -> None:
        self.unreadable: list[str] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self.unreadable = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        _, names, notes, readable = batch
        activations = outputs.detach().float().cpu()
        top = activations.topk(2, dim=1)
        for i, name in enumerate(names):
            if not readable[i]:
                self.unreadable.append(name)
                line = f"{name}: cannot read it: {notes[i]}"
            else:
                (first, second), (a_first, a_second) = top.indices[i].tolist(), top.values[i].tolist()
                line = f"{name}: predicted {first} (top 2 output activations: {first} {a_first:.3f}, {second} {a_second:.3f})"
                line += f"; {notes[i]}" if notes[i] else ""
            if trainer.is_global_zero:
                print(line, flush=True)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.unreadable:
            names = ", ".join(self.unreadable)
            raise UnreadableImagesError(f"{len(self.unreadable)} image file(s) could not be read: {names}")
