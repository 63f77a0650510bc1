r"""What the ``manualbp`` command tells its user: the book's line after every epoch, a summary with a chart at the
end of ``fit``, the accuracy of ``test``, and one line per image for ``predict``.

- :class:`EpochReport`: ``Epoch 3: 9412 / 10000 test images; validation 94.05%, training cost 0.0521, 5.2 s``
  after each epoch (the book's ``Epoch 3: 9412 / 10000``, on the test images when the test set is monitored,
  ``data.monitor_test``, otherwise on the validation images, and it says which), then a summary and a PNG of the
  curves in the run's log directory. The ``manualbp`` command adds one unless the config sets ``report: false``
  (or lists its own). With a :class:`~torch_manualbp.lightning.TrainingSetMonitor` before it, the line adds
  ``training set 99.80% (cost 0.0123)`` and the chart the training set's accuracy and cost.
- :class:`PredictionReport`: the predicted digit and the two most likely digits of each image, always added to
  ``manualbp predict``.

Plain ``print`` lines, flushed, one per event: readable in a CI log, no carriage returns.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from .progress import updates_made

__all__ = [
    "CURVES_PNG",
    "EpochReport",
    "EpochRow",
    "PredictionReport",
    "UnreadableImagesError",
    "checkpoint_paths",
    "format_count",
    "pyplot",
    "shown_path",
]

#: File name of the chart of the run's curves, written into the run's log directory at the end of ``fit``.
CURVES_PNG = "curves.png"

_STAGES = ("val", "test")


def format_count(correct: int, total: int) -> str:
    r"""``"9412 / 10000 (94.12%)"``: the book's count, with the accuracy it means."""
    return f"{correct} / {total} ({100 * correct / total:.2f}%)" if total else "no images"


@dataclass
class EpochRow:
    r"""What one epoch of ``fit`` did: its number, its seconds of work, the mean training cost, and for each of
    ``val`` and ``test`` the images answered correctly, the images evaluated and the mean cost (``None``: not
    evaluated)."""

    epoch: int
    seconds: float
    train_cost: float | None = None
    val_correct: int | None = None
    val_total: int | None = None
    val_cost: float | None = None
    test_correct: int | None = None
    test_total: int | None = None
    test_cost: float | None = None
    # TrainingSetMonitor's: the training set's accuracy (%) and cost with the regularisation term after the epoch
    train_accuracy: float | None = None
    train_full_cost: float | None = None
    # a population's (PopulationClassifier): each member's training cost and correct answers; the counts above are
    # then the ensemble's
    member_train_costs: list[float] | None = None
    val_member_correct: list[int] | None = None
    test_member_correct: list[int] | None = None

    def count(self, stage: str) -> tuple[int, int] | None:
        r"""``(correct, total)`` on ``stage`` (``"val"`` or ``"test"``), or ``None`` if it was not evaluated."""
        total = getattr(self, f"{stage}_total")
        return (getattr(self, f"{stage}_correct"), total) if total else None

    def accuracy(self, stage: str) -> float:
        r"""Percentage correct on ``stage``; the stage must have been evaluated."""
        correct, total = self.count(stage)
        return 100 * correct / total

    def member_accuracies(self, stage: str) -> list[float] | None:
        r"""Each member's percentage correct on ``stage``, or ``None`` (not a population, or not evaluated)."""
        counts, total = getattr(self, f"{stage}_member_correct"), getattr(self, f"{stage}_total")
        return [100 * correct / total for correct in counts] if counts and total else None


class EpochReport(L.Callback):
    r"""Print the book's line after every training epoch, a summary at the end of ``fit``, and ``test``'s result.

    The counts of correct answers are exact: the sums of ``val/correct`` and ``test/correct``, which
    :class:`~torch_manualbp.lightning.ManualBPClassifier` logs per batch, over the number of images evaluated (counted
    here, summed over processes). The summary names the best epoch (highest validation accuracy; the earliest of
    equals, as ``ModelCheckpoint`` keeps it), the last, the total time, the checkpoints, the metrics file and a chart
    of accuracy and cost per epoch (``curves.png`` in the log directory). The per-epoch history is saved in
    checkpoints, so a resumed run's summary and chart cover all its epochs. So are the seconds of work: a run
    resumed in the middle of an epoch counts that epoch's seconds before the checkpoint and after the resume (the
    work between the checkpoint and a crash is redone, and counted once), and the summary's time is the whole
    run's, across its processes. Only global rank 0 prints.
    """

    def __init__(self) -> None:
        self.history: list[EpochRow] = []  # one row per finished epoch
        self._evaluated: dict[str, tuple[int, int, float]] = {}  # stage -> (correct, total, cost) of this epoch
        self._epoch_start = self._fit_start = 0.0
        self._in_epoch = False  # between on_train_epoch_start and on_train_epoch_end
        # restored from a checkpoint: the seconds of work already done in its epoch (if saved mid-epoch) and in
        # the run, and how many processes the run has taken
        self._resumed_epoch_seconds = self._resumed_fit_seconds = 0.0
        self._processes = 1
        self._batch_idx = -1  # the last training batch of this epoch that ended
        self._evaluated_step = 0  # the SGD updates made before the last evaluation
        # the row of an epoch evaluated but not yet ended (saved in checkpoints), and the one a checkpoint brought
        self._epoch_end_row: EpochRow | None = None
        self._resumed_row: EpochRow | None = None

    # --- fit ----------------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter() - self._resumed_fit_seconds

    def on_train_start(self, trainer, pl_module) -> None:
        # resumed mid-epoch, Lightning calls no on_train_epoch_start for the epoch it continues
        self._epoch_start = time.perf_counter() - self._resumed_epoch_seconds
        self._in_epoch = self._in_epoch or self._resumed_epoch_seconds > 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter() - self._resumed_epoch_seconds
        self._resumed_epoch_seconds = 0.0
        self._in_epoch = True
        self._evaluated = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._evaluated = self._collect(trainer)
        self._evaluated_step = updates_made(trainer, pl_module)
        if trainer.state.fn == "fit" and trainer.is_last_batch:
            # the epoch's row as it stands now: kept in a checkpoint taken before the epoch ends (a best or last one),
            # whose resumed run ends this epoch again without its batches' cost or its evaluation
            self._epoch_end_row = self._epoch_row(trainer, pl_module, ended=False)
        if trainer.state.fn == "validate" and trainer.is_global_zero:  # manualbp validate: its result is this line
            print(_evaluation_line(self._evaluated, trainer.callback_metrics), flush=True)
        mid_epoch = trainer.state.fn == "fit" and self._batch_idx + 1 < trainer.num_training_batches
        if mid_epoch and trainer.is_global_zero and self._evaluated:  # val_check_interval: a line for each
            line = _evaluation_line(self._evaluated, trainer.callback_metrics)
            print(f"Step {self._evaluated_step} (epoch {trainer.current_epoch}): {line}", flush=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        resumed, self._resumed_row, self._epoch_end_row = self._resumed_row, None, None
        if resumed is not None and resumed.epoch == trainer.current_epoch:  # printed by the process that saved it
            self._add_training_set(resumed, trainer)  # TrainingSetMonitor measures it again as the epoch ends
            self.history.append(resumed)
            self._in_epoch, self._resumed_epoch_seconds = False, 0.0
            return
        row = self._epoch_row(trainer, pl_module)
        self.history.append(row)
        self._in_epoch = False
        self._resumed_epoch_seconds = 0.0
        if trainer.is_global_zero:
            line = _epoch_line(row)
            if self._evaluated and self._evaluated_step != updates_made(trainer, pl_module):  # an earlier evaluation
                line += f" (the evaluation of step {self._evaluated_step})"
            print(line, flush=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # on every rank: under DDP it is a broadcast
        if not trainer.is_global_zero or not self.history:
            return
        if trainer.fast_dev_run:  # Lightning ran a few batches as a check, and logs and checkpoints nothing
            print(_fast_dev_run_summary(trainer), flush=True)
            return
        chart = log_dir / CURVES_PNG
        draw_curves(self.history, chart, cost_name=_cost_name(pl_module))
        print(self.summary(trainer, time.perf_counter() - self._fit_start, chart), flush=True)

    def _epoch_row(self, trainer, pl_module, ended: bool = True) -> EpochRow:
        """This epoch's row: at its end (``ended``), from what was logged; before (its evaluation's end), the
        training cost from the module's own sums, since the epoch's ``train/cost`` is not logged yet."""
        seconds = time.perf_counter() - self._epoch_start
        row = EpochRow(trainer.current_epoch, seconds)
        cost = trainer.callback_metrics.get("train/cost") if ended else None
        so_far = getattr(pl_module, "epoch_training_cost", lambda: None)()
        if cost is not None:
            row.train_cost = float(cost)
        elif so_far is not None:
            row.train_cost, row.member_train_costs = so_far
        if ended:
            self._add_training_set(row, trainer)
        for stage, (correct, total, stage_cost) in self._evaluated.items():
            setattr(row, f"{stage}_correct", correct)
            setattr(row, f"{stage}_total", total)
            setattr(row, f"{stage}_cost", stage_cost)
            setattr(row, f"{stage}_member_correct", _per_member(trainer.callback_metrics, f"{stage}/correct") or None)
        if ended:
            row.member_train_costs = (
                _per_member(trainer.callback_metrics, "train/cost", round_to=None) or row.member_train_costs
            )
        return row

    @staticmethod
    def _add_training_set(row: EpochRow, trainer) -> None:
        if "train/accuracy" in trainer.callback_metrics:  # TrainingSetMonitor's, when it ran before this callback
            row.train_accuracy = 100 * float(trainer.callback_metrics["train/accuracy"])
            row.train_full_cost = float(trainer.callback_metrics["train/full_cost"])

    def _collect(self, trainer) -> dict[str, tuple[int, int, float]]:
        r"""``stage -> (correct, total, cost)`` of the evaluation that just ended, for each stage it covered: the
        sums ``{stage}/correct`` and ``{stage}/images`` that the module logs (over batches and processes)."""
        metrics = trainer.callback_metrics
        found = {}
        for stage in _STAGES:
            total = round(float(metrics.get(f"{stage}/images", 0)))
            if total and f"{stage}/correct" in metrics:
                cost = metrics.get(f"{stage}/cost")
                found[stage] = (round(float(metrics[f"{stage}/correct"])), total, None if cost is None else float(cost))
        return found

    def summary(self, trainer, seconds: float, chart: Path) -> str:
        r"""The lines printed at the end of ``fit``: best and last epoch, time, and where everything was written;
        ``seconds`` is the whole run's (every process's, when it was resumed)."""
        validated = [row for row in self.history if row.count("val")]
        epochs = len(self.history)
        finished = f"Finished {epochs} epoch{'s' if epochs != 1 else ''} in {seconds:.1f} s"
        if self._processes > 1:
            this_one = seconds - self._resumed_fit_seconds
            finished += f" of work over {self._processes} processes ({this_one:.1f} s in this one, resumed)"
        lines = ["", finished]
        if validated and validated[-1].val_member_correct:
            lines += _population_summary(validated, pl_module=trainer.lightning_module)
        elif validated:
            best = max(validated, key=lambda row: (row.accuracy("val"), -row.epoch))
            lines.append(f"Best epoch {best.epoch} (by validation accuracy): {_accuracies(best)}")
            lines.append(f"Last epoch {self.history[-1].epoch}: {_accuracies(self.history[-1])}")
        paths = checkpoint_paths(trainer)
        lines.append(f"Best checkpoint: {shown_path(paths['best']) if paths['best'] else 'none written'}")
        if not paths["last"] or Path(paths["last"]).name.startswith(ModelCheckpoint.CHECKPOINT_NAME_LAST):
            lines.append(f"Last checkpoint: {shown_path(paths['last']) if paths['last'] else 'none written'}")
        else:  # a ModelCheckpoint without save_last wrote it, and --ckpt_path last finds last*.ckpt files only
            lines.append(
                f"Last checkpoint: none written (no ModelCheckpoint has save_last); the newest is "
                f"{shown_path(paths['last'])}: resume with --ckpt_path <that file>"
            )
        lines.append(f"Metrics: {_metrics_location(trainer)}")
        lines.append(f"Curves: {shown_path(chart)}")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        # plain dicts and floats: a checkpoint must load with torch.load(weights_only=True)
        now = time.perf_counter()
        return {
            "history": [asdict(row) for row in self.history],
            "epoch_seconds": now - self._epoch_start if self._in_epoch else 0.0,
            "fit_seconds": now - self._fit_start,
            "processes": self._processes,
            "epoch_end_row": asdict(self._epoch_end_row) if self._epoch_end_row is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [EpochRow(**row) for row in state_dict["history"]]
        # checkpoints written before the seconds were kept have only the history
        self._resumed_epoch_seconds = state_dict.get("epoch_seconds", 0.0)
        self._resumed_fit_seconds = state_dict.get("fit_seconds", 0.0)
        self._processes = state_dict.get("processes", 1) + 1
        row = state_dict.get("epoch_end_row")
        self._resumed_row = EpochRow(**row) if row else None

    # --- test ---------------------------------------------------------------------------------------------------

    def on_test_end(self, trainer, pl_module) -> None:
        evaluated = self._collect(trainer)
        if trainer.is_global_zero and evaluated:
            print(_evaluation_line(evaluated, trainer.callback_metrics), flush=True)


def _fast_dev_run_summary(trainer) -> str:
    r"""The one line ``fit`` ends with under ``fast_dev_run``: what was checked, and that nothing was written."""
    batches = int(trainer.fast_dev_run)  # True is 1
    return (
        f"fast_dev_run: {batches} training batch{'es' if batches != 1 else ''} and {batches} of each evaluation ran"
        " as a check; no checkpoint, metrics or chart written (leave out --trainer.fast_dev_run to train)"
    )


def _per_member(metrics, name: str, round_to: int | None = 0) -> list:
    r"""The values of ``{name}/member0``, ``{name}/member1``, ... in ``metrics`` (rounded to ints unless
    ``round_to`` is None); [] for a single network."""
    values = []
    while f"{name}/member{len(values)}" in metrics:
        value = float(metrics[f"{name}/member{len(values)}"])
        values.append(value if round_to is None else round(value))
    return values


def _cost_name(pl_module) -> str:
    """The cost's name, of a single network's or a population's module."""
    model = pl_module.population if hasattr(pl_module, "population") else pl_module.network
    return model.cost_name


def _member_stage(row: EpochRow) -> str:
    """The stage the book counts a population's members on: the test images when evaluated, else validation."""
    return "test" if row.test_member_correct else "val"


def _population_summary(validated: list[EpochRow], pl_module) -> list[str]:
    r"""A population's summary: each member's best epoch by validation accuracy, the best and the median member
    there, and the ensemble's best and last epoch."""
    members = len(validated[-1].val_member_correct)
    best_rows = [max(validated, key=lambda row: (row.val_member_correct[k], -row.epoch)) for k in range(members)]

    def at_best(k: int) -> str:
        row, names = best_rows[k], {"val": "validation", "test": "test"}
        counts = [
            f"{names[stage]} {format_count(getattr(row, f'{stage}_member_correct')[k], row.count(stage)[1])}"
            for stage in ("val", "test")
            if getattr(row, f"{stage}_member_correct")
        ]
        who = pl_module.describe(k) if hasattr(pl_module, "describe") else f"member {k}"
        return f"{who}, epoch {row.epoch}: {', '.join(counts)}"

    order = sorted(range(members), key=lambda k: best_rows[k].val_member_correct[k])
    lines = [f"Best {at_best(order[-1])}", f"Median {at_best(order[(members - 1) // 2])}"]
    lines += [f"  {at_best(k)}" for k in range(members)]
    best = max(validated, key=lambda row: (row.accuracy("val"), -row.epoch))
    lines.append(f"Ensemble (members' averaged outputs), best epoch {best.epoch}: {_accuracies(best)}")
    lines.append(f"Ensemble, last epoch {validated[-1].epoch}: {_accuracies(validated[-1])}")
    return lines


def _evaluation_line(evaluated: dict[str, tuple[int, int, float]], metrics) -> str:
    r"""``Test: 9484 / 10000 (94.84%), test cost 0.0453`` for each stage evaluated (validation first), joined by
    ``; ``; a population's (``{stage}/correct/member{k}`` in ``metrics``) is
    ``Test: ensemble 9484 / 10000 (94.84%), members 9412 9388 9401, mean cost 0.0453``."""
    names, parts = {"val": "validation", "test": "test"}, []
    for stage, (correct, total, cost) in evaluated.items():
        members = _per_member(metrics, f"{stage}/correct")
        if members:
            counts = " ".join(map(str, members))
            parts.append(
                f"{names[stage].capitalize()}: ensemble {format_count(correct, total)}, members {counts},"
                f" mean {names[stage]} cost {cost:.4f}"
            )
        else:
            parts.append(f"{names[stage].capitalize()}: {format_count(correct, total)}, {names[stage]} cost {cost:.4f}")
    return "; ".join(parts)


def _epoch_line(row: EpochRow) -> str:
    r"""The book's ``Epoch N: correct / total`` line, then the validation accuracy, training cost and seconds; for
    a population, every member's count, their median and the ensemble's."""
    if row.val_member_correct:
        return _population_epoch_line(row)
    rest = []
    if row.count("test"):  # the book's count is of the test images
        correct, total = row.count("test")
        head = f"Epoch {row.epoch}: {correct} / {total} test images"
        if row.count("val"):
            rest.append(f"validation {row.accuracy('val'):.2f}%")
    elif row.count("val"):
        correct, total = row.count("val")
        head = f"Epoch {row.epoch}: {correct} / {total} validation images ({row.accuracy('val'):.2f}%)"
    else:
        head = f"Epoch {row.epoch}: not evaluated"
    if row.train_cost is not None:
        rest.append(f"training cost {row.train_cost:.4f}")
    if row.train_accuracy is not None:
        rest.append(f"training set {row.train_accuracy:.2f}% (cost {row.train_full_cost:.4f})")
    rest.append(f"{row.seconds:.1f} s")
    return f"{head}; {', '.join(rest)}"


def _population_epoch_line(row: EpochRow) -> str:
    r"""``Epoch 3: members 9412 9388 9401 / 10000 test images (median 9401); ensemble 9455; training cost
    0.0521 0.0533 0.0528; 5.2 s``."""
    stage = _member_stage(row)
    counts, total = getattr(row, f"{stage}_member_correct"), row.count(stage)[1]
    name = "test" if stage == "test" else "validation"
    line = (
        f"Epoch {row.epoch}: members {' '.join(map(str, counts))} / {total} {name} images"
        f" (median {statistics.median_low(counts)}); ensemble {row.count(stage)[0]}"
    )
    if row.member_train_costs:
        line += f"; training cost {' '.join(f'{cost:.4f}' for cost in row.member_train_costs)}"
    return f"{line}; {row.seconds:.1f} s"


def _accuracies(row: EpochRow) -> str:
    r"""``validation 9540 / 10000 (95.40%), test 9484 / 10000 (94.84%)`` for what the epoch evaluated."""
    found = [
        f"{name} {format_count(*row.count(stage))}"
        for stage, name in (("val", "validation"), ("test", "test"))
        if row.count(stage)
    ]
    return ", ".join(found)


def shown_path(path) -> str:
    r"""``path`` relative to the working directory when it lies inside it (as the configs name them), else whole."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def checkpoint_paths(trainer) -> dict[str, str]:
    r"""``{"best": path, "last": path}``: the best checkpoint of the first ``ModelCheckpoint`` with a monitor, and
    the newest ``last.ckpt`` (or, for a ``ModelCheckpoint`` without a monitor, the newest file it wrote); ``""`` for
    none. Paths as the callbacks hold them; a file may since have been removed."""
    paths = {"best": "", "last": ""}
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths["best"] = paths["best"] or (callback.best_model_path if callback.monitor else "")
            # without a monitor, a ModelCheckpoint's "best" is simply the newest file it wrote
            newest = callback.last_model_path or ("" if callback.monitor else callback.best_model_path)
            paths["last"] = paths["last"] or newest
    return paths


def _metrics_location(trainer) -> str:
    r"""The CSV file of a ``CSVLogger``, the log directory of any other logger (TensorBoard's), or that there is
    none."""
    if trainer.logger is None:
        return "not logged (trainer.logger is off)"
    metrics_file = getattr(trainer.logger.experiment, "metrics_file_path", None)  # CSVLogger's metrics.csv
    if metrics_file:
        return shown_path(metrics_file)
    return f"{shown_path(trainer.logger.log_dir)} ({type(trainer.logger).__name__})"


def pyplot():
    r"""``matplotlib.pyplot`` drawing to files only (the Agg backend): the charts are written during runs that
    may have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_curves(history: list[EpochRow], path: Path, cost_name: str = "quadratic") -> None:
    r"""Write a PNG of accuracy and cost per epoch (training cost; validation and test accuracy and cost);
    ``cost_name`` is the network's cost (``Network.cost_name``), named in the cost panel's title and in the PNG's
    ``Title``."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    cost = f"{cost_name.replace('_', '-')} cost"  # "cross-entropy cost"
    fig, (accuracy_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4))
    members = [row for row in history if row.member_accuracies(_member_stage(row))]
    if members:  # a population: one line per member on the book's images, and the ensemble
        stage = _member_stage(members[-1])
        epochs = [row.epoch for row in members]
        for k, _ in enumerate(members[-1].member_accuracies(stage)):
            accuracy_ax.plot(
                epochs, [row.member_accuracies(stage)[k] for row in members], "-", lw=1, label=f"member {k}"
            )
        accuracy_ax.plot(epochs, [row.accuracy(stage) for row in members], "k-", lw=2, label=f"ensemble ({stage})")
        trained = [row for row in history if row.member_train_costs]
        for k, _ in enumerate(trained[-1].member_train_costs if trained else []):
            cost_ax.plot(
                [row.epoch for row in trained],
                [row.member_train_costs[k] for row in trained],
                "-",
                lw=1,
                label=f"member {k} (training)",
            )
    for stage, name in (("val", "validation"), ("test", "test")):
        rows = [row for row in history if row.count(stage) and not members]
        if rows:
            epochs = [row.epoch for row in rows]
            accuracy_ax.plot(epochs, [row.accuracy(stage) for row in rows], "o-", label=name)
            cost_ax.plot(epochs, [getattr(row, f"{stage}_cost") for row in rows], "o-", label=name)
    trained = [row for row in history if row.train_cost is not None and not members]
    cost_ax.plot([row.epoch for row in trained], [row.train_cost for row in trained], "o-", label="training")
    monitored = [row for row in history if row.train_accuracy is not None]  # TrainingSetMonitor's
    if monitored:
        epochs = [row.epoch for row in monitored]
        accuracy_ax.plot(epochs, [row.train_accuracy for row in monitored], "o-", label="training set")
        cost_ax.plot(epochs, [row.train_full_cost for row in monitored], "o-", label="training set, with λ term")
    accuracy_ax.set(title="accuracy per epoch", xlabel="epoch", ylabel="% correct")
    cost_ax.set(title=f"{cost} per epoch", xlabel="epoch", ylabel="C", yscale="log")
    for ax in (accuracy_ax, cost_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Title": f"accuracy and {cost} per epoch"})
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
                top_two = f"{first} {a_first:.3f}, {second} {a_second:.3f}"
                line = f"{name}: predicted {first} (top 2 output activations: {top_two})"
                line += f"; {notes[i]}" if notes[i] else ""
            if trainer.is_global_zero:
                print(line, flush=True)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.unreadable:
            names = ", ".join(self.unreadable)
            raise UnreadableImagesError(f"{len(self.unreadable)} image file(s) could not be read: {names}")
