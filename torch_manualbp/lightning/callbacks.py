r"""Callbacks that look inside backpropagation while a ``ManualBPClassifier`` trains.

- :class:`LearningSpeedMonitor`: per layer, the book's "speed of learning" :math:`\lVert\partial C/\partial b^l\rVert`,
  :math:`\lVert\partial C/\partial W^l\rVert` and the fraction of saturated neurons, logged every N steps and
  drawn as a chart at the end (chapter 5's vanishing gradient, measured).
- :class:`GradientAudit`: every N steps, the hand-written gradients against plain autograd's on the same batch.
- :class:`TrainingSetMonitor`: ``network2.py``'s ``monitor_training_cost`` and ``monitor_training_accuracy``, the
  cost (with its regularisation term) and accuracy on the training set after every epoch (chapter 3's overfitting).

To run (the vanishing-gradient experiment, and chapter 3's overfitting run)::

    manualbp fit --config experiments/vanishing_gradient.yaml
    manualbp fit --config experiments/ch3_overfitting.yaml
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from ..nn import sigmoid_layers
from ..observe import record_errors
from ..testing.reference import autograd_cost
from .report import pyplot

__all__ = ["LearningSpeedMonitor", "GradientAudit", "TrainingSetMonitor", "regularization_term"]

#: Examples per feedforward when TrainingSetMonitor evaluates: bounds its memory (the hidden activations of 250,000
#: expanded images at once would be 100 MB a layer of 100) at no measurable cost in speed.
_EVALUATION_CHUNK = 10_000


def log_metrics(trainer, metrics: dict[str, float]) -> None:
    """Write to the loggers at this step only (``self.log`` would repeat the last value at every later step)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def chart_path(trainer, chart: str | None, default_name: str) -> Path:
    """Where a callback's chart goes: ``chart``, or ``default_name`` in the trainer's log directory; its folder
    made."""
    path = Path(chart) if chart else Path(trainer.log_dir or trainer.default_root_dir) / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def draw_history(history: dict[int, dict[str, float]], panels: dict[str, tuple[str, str]], path: Path, label) -> None:
    """A row of panels over the steps of ``history`` (step -> metrics): one per ``prefix: (title, yscale)`` of
    ``panels``, with a line for each metric named ``prefix/...``, labelled ``label(metric name)``; saved as PNG."""
    plt = pyplot()
    steps = sorted(history)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (prefix, (title, yscale)) in zip(axes, panels.items()):
        for key in [k for k in history[steps[0]] if k.startswith(prefix + "/")]:
            ax.plot(steps, [history[s][key] for s in steps], label=label(key))
        ax.set(title=title, xlabel="step", yscale=yscale)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class LearningSpeedMonitor(L.Callback):
    r"""Log, per sigmoid layer and every ``every_n_steps`` SGD updates, how fast it learns.

    Logged for layer ``l`` (1 = the first hidden layer):

    - ``speed/layer{l}``: :math:`\lVert \partial C/\partial b^l \rVert`, the length of the bias gradient, which by
      BP3 is the batch's error :math:`\delta^l` summed over examples; the book's measure of a layer's speed of learning;
    - ``grad_w/layer{l}``: :math:`\lVert \partial C/\partial W^l \rVert` (BP4);
    - ``saturated/layer{l}``: the fraction of (example, neuron) pairs with :math:`\sigma'(z) <` ``saturation``,
      neurons that by BP1/BP2 barely pass on or receive an error.

    :math:`\sigma'(z)` comes from :func:`torch_manualbp.observe.record_errors`, active only during the monitored
    steps' backward. At the end of training a chart of the three per layer over the steps is written to
    ``chart`` (default: ``learning_speed.png`` in the trainer's log directory), with a markdown summary beside it.

    Args:
        every_n_steps: how often to measure; each measurement costs a copy of the layers' errors.
        saturation: the :math:`\sigma'(z)` below which a neuron counts as saturated; 0.01 is :math:`|z| > 4.6`,
            where :math:`\sigma'` is a 25th of its peak 0.25.
        chart: where to write the PNG chart, or ``None`` for the trainer's log directory.
    """

    def __init__(self, every_n_steps: int = 100, saturation: float = 0.01, chart: str | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not 0 < saturation < 0.25:
            raise ValueError(f"saturation must lie in (0, 0.25), the range of σ'(z), got {saturation}")
        self.every_n_steps = every_n_steps
        self.saturation = saturation
        self.chart = chart
        self.history: dict[int, dict[str, float]] = {}
        self._recording = None

    def observes_step(self, step: int) -> bool:
        """Whether this callback measures SGD update ``step`` (counted from 0): ``ManualBPClassifier`` runs such steps
        through autograd, whose backward hooks this callback uses, and the others on its fused path."""
        return step % self.every_n_steps == 0

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.observes_step(pl_module.updates):
            self._recording = record_errors()
            self._record = self._recording.__enter__()

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._recording is None:
            return
        self._recording.__exit__(None, None, None)
        self._recording = None
        metrics = {}
        for l, (layer, errors) in enumerate(zip(sigmoid_layers(pl_module), self._record.for_network(pl_module)), 1):
            metrics[f"speed/layer{l}"] = layer.bias.grad.norm().item()
            metrics[f"grad_w/layer{l}"] = layer.weight.grad.norm().item()
            metrics[f"saturated/layer{l}"] = (errors.sigmoid_prime < self.saturation).float().mean().item()
        self.history[pl_module.updates] = metrics
        log_metrics(trainer, metrics)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.history or not trainer.is_global_zero:
            return
        chart = chart_path(trainer, self.chart, "learning_speed.png")
        panels = {
            "speed": ("speed of learning ‖∂C/∂bˡ‖", "log"),
            "grad_w": ("‖∂C/∂Wˡ‖", "log"),
            "saturated": (f"saturated fraction, σ'(z) < {self.saturation:g}", "linear"),
        }
        draw_history(self.history, panels, chart, label=lambda key: key.split("/")[1].replace("layer", "layer "))
        chart.with_suffix(".md").write_text(self.summary())

    def summary(self) -> str:
        """A markdown table: each metric per layer at the first measured step, and its median over the first
        and over the last tenth of the measurements (one mini-batch is noisy; a median is not)."""
        steps = sorted(self.history)
        tenth = max(1, len(steps) // 10)
        lines = [
            f"| metric | at step {steps[0]} | median, steps {steps[0]}-{steps[tenth - 1]} "
            f"| median, steps {steps[-tenth]}-{steps[-1]} |",
            "| --- | --- | --- | --- |",
        ]
        for key in self.history[steps[0]]:
            values = torch.tensor([self.history[s][key] for s in steps])
            early, late = values[:tenth].median().item(), values[-tenth:].median().item()
            lines.append(f"| {key} | {values[0].item():.4g} | {early:.4g} | {late:.4g} |")
        return "\n".join(lines) + "\n"


class GradientAudit(L.Callback):
    r"""Every ``every_n_steps`` SGD updates, recompute the batch's gradients with plain autograd and compare.

    The reference is :func:`torch_manualbp.testing.reference.autograd_cost`, the network written in plain ops,
    :math:`a = \sigma(\text{linear}(a, W, b))` layer by layer and :math:`C = \frac{1}{2n}\sum_x \lVert y - a \rVert^2`
    (for ``cost="cross_entropy"``, ``binary_cross_entropy_with_logits`` summed over outputs and averaged over
    examples), differentiated by autograd;
    it is compared with the ``.grad`` of each parameter that the hand-written backward produced. The largest relative
    difference (per parameter: max absolute difference / max absolute reference value) is logged as
    ``audit/max_rel_diff``.
    Under DDP the reference is averaged over processes, as the gradients are. Meant for a
    ``ManualBPClassifier``, whose training cost is exactly that and which exposes the mini-batch it just
    differentiated as ``last_mini_batch``.

    Args:
        every_n_steps: how often to audit; each audit costs one more forward and backward pass.
        tolerance: the largest relative difference accepted; 1e-4 leaves a wide margin over float32 rounding
            (about 1e-6 here) while catching any wrong term. Mixed precision needs a looser one.
        fail: raise ``RuntimeError`` above the tolerance (default) rather than only log.
    """

    def __init__(self, every_n_steps: int = 100, tolerance: float = 1e-4, fail: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        self.every_n_steps = every_n_steps
        self.tolerance = tolerance
        self.fail = fail

    def observes_step(self, step: int) -> bool:
        """Whether this callback audits SGD update ``step`` (run through autograd by ``ManualBPClassifier``)."""
        return step % self.every_n_steps == 0

    def on_after_backward(self, trainer, pl_module) -> None:
        if not self.observes_step(pl_module.updates):
            return
        x, y = pl_module.last_mini_batch  # the mini-batch whose gradients were just computed
        layers = sigmoid_layers(pl_module)
        params = [p.detach().requires_grad_() for layer in layers for p in (layer.weight, layer.bias)]
        with torch.enable_grad():
            reference = torch.autograd.grad(autograd_cost(params, x, y, pl_module.network.cost_name), params)
        ours = [p.grad for layer in layers for p in (layer.weight, layer.bias)]
        worst = 0.0
        for mine, theirs in zip(ours, reference):
            theirs = trainer.strategy.reduce(theirs, reduce_op="mean") if trainer.world_size > 1 else theirs
            scale = theirs.abs().max().clamp_min(torch.finfo(theirs.dtype).tiny)
            worst = max(worst, ((mine - theirs).abs().max() / scale).item())
        log_metrics(trainer, {"audit/max_rel_diff": worst})
        if worst > self.tolerance and self.fail:
            raise RuntimeError(
                f"gradient audit failed at step {pl_module.updates}: the hand-written gradients differ from "
                f"autograd's by {worst:.3g} (relative), above the tolerance {self.tolerance:g}"
            )


def regularization_term(weights, lmbda: float, n: int, regularization: str = "l2") -> Tensor:
    r"""The term the book's regularisation adds to the cost, in float64: :math:`\frac{\lambda}{2n}\sum_w w^2` for
    ``"l2"``, :math:`\frac{\lambda}{n}\sum_w |w|` for ``"l1"`` (weights only; ``network2.py``'s ``total_cost``)."""
    if not lmbda:
        return torch.zeros((), dtype=torch.float64)
    if regularization == "l1":
        return lmbda / n * sum(w.double().abs().sum() for w in weights)  # (λ/n) Σ_w |w|
    return 0.5 * lmbda / n * sum(w.double().pow(2).sum() for w in weights)  # (λ/2n) Σ_w w²


class TrainingSetMonitor(L.Callback):
    r"""After every training epoch, the cost and the accuracy on the training set, as ``network2.py`` monitors them.

    Logged at the end of each epoch, beside the validation metrics:

    - ``train/full_cost``: ``network2.py``'s ``total_cost`` of the training data, the mean cost :math:`C_0` of its
      examples under the weights at the end of the epoch plus the regularisation term, :math:`\frac{\lambda}{2n}
      \sum_w w^2` (L2) or :math:`\frac{\lambda}{n}\sum_w |w|` (L1), with the model's ``lmbda`` and its
      ``training_set_size`` as :math:`n` (the cost the SGD steps descend). ``train/cost`` is another number: the
      mean of :math:`C_0` over the epoch's mini-batches, each before its own update, without the term.
    - ``train/accuracy``: the fraction of those examples whose highest output activation is their digit.

    A model trained with dropout (``hparams.dropout``) is evaluated as the book does it, its outgoing hidden weights
    scaled by :math:`1 - p` (:meth:`~torch_manualbp.Network.output_and_cost`). The examples are the training
    batches' own tensors (``MNISTDataModule``'s), in their stored order: all of them, or the first ``subset`` (a
    fixed set, the same every epoch). :class:`~torch_manualbp.lightning.report.EpochReport` adds both to its line
    after each epoch (when this callback comes before it in the trainer's callbacks, as ``manualbp`` places it) and
    to ``curves.png``. The time it takes is in the epoch's seconds: a forward pass over the examples.

    Args:
        subset: evaluate the first ``subset`` training examples only; ``None``: all of them (the book's 1,000 of
            the overfitting run, or 50,000: about a tenth of a training epoch's time).

    Examples::

        >>> trainer = L.Trainer(callbacks=[TrainingSetMonitor()])
    """

    def __init__(self, subset: int | None = None) -> None:
        if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
            raise ValueError(f"subset must be a positive number of training examples or None, got {subset!r}")
        self.subset = subset

    def on_train_start(self, trainer, pl_module) -> None:
        if not hasattr(pl_module, "network"):
            raise TypeError(
                f"TrainingSetMonitor evaluates a ManualBPClassifier's network; {type(pl_module).__name__} has none"
            )
        if not hasattr(trainer.train_dataloader, "tensors"):
            raise TypeError(
                "TrainingSetMonitor reads the training tensors of MNISTDataModule's batches (.tensors); the training"
                f" data here is a {type(trainer.train_dataloader).__name__}"
            )

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        x, y, labels = (t[: self.subset] for t in trainer.train_dataloader.tensors)
        hp, network = pl_module.hparams, pl_module.network
        total_cost, correct = torch.zeros((), dtype=torch.float64), 0
        for start in range(0, len(x), _EVALUATION_CHUNK):
            rows = slice(start, start + _EVALUATION_CHUNK)
            a, cost = network.output_and_cost(x[rows], y[rows], dropout=hp.dropout)  # C₀ of the chunk
            total_cost += cost.double().cpu() * len(a)
            correct += int((a.argmax(1) == labels[rows]).sum())
        weights, _ = network.weights_and_biases()
        term = regularization_term(weights, hp.lmbda, hp.training_set_size, hp.regularization)
        full_cost = total_cost / len(x) + term.cpu()
        pl_module.log("train/full_cost", full_cost.float(), on_step=False, on_epoch=True, batch_size=len(x))
        pl_module.log("train/accuracy", correct / len(x), on_step=False, on_epoch=True, batch_size=len(x))
