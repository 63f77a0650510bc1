r"""``GradientNoiseMonitor``: which mini-batch size the network wants, measured while it trains.

Every N steps it takes :func:`torch_manualbp.observe.gradient_statistics` of the batch about to be trained on (one
pass of its own, so it works whatever path the training step takes) and logs the gradient noise scale
:math:`B_\text{simple}` of McCandlish et al. (2018), the per-layer gradient signal-to-noise ratio and percentiles of
the per-example gradient norms. At the end of training it draws them to ``gradient_noise.png``.

To run::

    manualbp fit --config experiments/gradient_noise.yaml
"""

from __future__ import annotations

import lightning as L
import torch

from ..observe import GradientStatistics, gradient_statistics
from .callbacks import chart_path, draw_history, log_metrics

__all__ = ["GradientNoiseMonitor"]

PERCENTILES = (10, 50, 90)


class GradientNoiseMonitor(L.Callback):
    r"""Log, every ``every_n_steps`` optimizer steps, the gradient noise scale and the per-example gradients' spread.

    Measured on the Lightning batch about to be trained on, all of its examples, at the parameters before its
    first step: the estimators assume examples whose gradients the parameters have not yet been fitted to, which
    the mini-batch just stepped on (``last_mini_batch``) is not. Logged:

    - ``b_simple/all`` and ``b_simple/layer{l}``: :math:`B_\text{simple} = S/\lvert G\rvert^2` in examples, the
      mini-batch size beyond which larger batches buy little, smoothed as the paper recommends: exponential moving
      averages of :math:`\lvert G\rvert^2` and :math:`S` are kept apart and divided (the two averages' start-up
      bias cancels in the ratio). Negative or huge while :math:`\lvert G\rvert^2`'s average is near 0.
    - ``snr/layer{l}``: the median over the layer's parameters :math:`\theta_j` (weights and biases) of
      :math:`\bar g_j^2 / \operatorname{Var}_x g_{x,j}`, each parameter's gradient signal-to-noise ratio per example
      (Liu et al. 2020's GSNR). Parameters whose variance is below the float resolution of the layer's largest
      (``eps * max``) are left out: their gradients do not vary at the layer's scale (a pixel that is 0 in every
      example, a neuron saturated on the whole batch) and their ratio would be rounding noise.
    - ``per_example_norm/p{10,50,90}``: percentiles over the batch of :math:`\lVert\partial C_x/\partial\theta\rVert`,
      all parameters together.

    Args:
        every_n_steps: how often to measure, in optimizer steps; each measurement costs about one training step
            on a batch of the Lightning batch's size.
        smoothing: the moving averages' decay per measurement, in [0, 1); 0 is no smoothing.
        chart: where to write the PNG, or ``None`` for ``gradient_noise.png`` in the trainer's log directory.

    Examples::

        >>> trainer = L.Trainer(callbacks=[GradientNoiseMonitor(every_n_steps=100)])
    """

    def __init__(self, every_n_steps: int = 100, smoothing: float = 0.9, chart: str | None = None) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
        self.every_n_steps = every_n_steps
        self.smoothing = smoothing
        self.chart = chart
        self.history: dict[int, dict[str, float]] = {}
        self._averages: torch.Tensor | None = None  # (2, L + 1): smoothed |G|² and S, per layer then all
        self._next_step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # the module counts SGD updates, several per batch when it steps through mini-batches: catch up
        if pl_module.updates < self._next_step:
            return
        self._next_step = pl_module.updates + self.every_n_steps
        x, y = batch[0], batch[1]
        if len(x) < 2:
            raise ValueError(f"GradientNoiseMonitor needs batches of at least 2 examples, got {len(x)}")
        metrics = self._metrics(gradient_statistics(pl_module.network, x, y))
        self.history[pl_module.updates] = metrics
        log_metrics(trainer, metrics)

    def _metrics(self, stats: GradientStatistics) -> dict[str, float]:
        layers = stats.layers
        estimates = torch.stack(
            [  # (2, L + 1)
                torch.stack([*(layer.true_grad_sq_norm for layer in layers), stats.true_grad_sq_norm]),
                torch.stack([*(layer.trace_covariance for layer in layers), stats.trace_covariance]),
            ]
        ).double()
        if self._averages is None:
            self._averages = torch.zeros_like(estimates)
        self._averages.mul_(self.smoothing).add_(estimates, alpha=1 - self.smoothing)
        b_simple = (self._averages[1] / self._averages[0]).tolist()
        metrics = {f"b_simple/layer{l}": b for l, b in enumerate(b_simple[:-1], 1)}
        metrics["b_simple/all"] = b_simple[-1]
        for l, layer in enumerate(layers, 1):
            params = [p for p in (layer.weight, layer.bias) if p is not None]
            mean = torch.cat([p.mean.flatten() for p in params])
            variance = torch.cat([p.variance.flatten() for p in params])
            varies = variance > torch.finfo(variance.dtype).eps * variance.max()  # at this layer's resolution
            snr = mean[varies] ** 2 / variance[varies]
            metrics[f"snr/layer{l}"] = snr.median().item() if varies.any() else float("nan")
        norms = stats.per_example_sq_norm.sum(1).sqrt().double()
        for q, value in zip(PERCENTILES, torch.quantile(norms, torch.tensor(PERCENTILES, dtype=norms.dtype) / 100)):
            metrics[f"per_example_norm/p{q}"] = value.item()
        return metrics

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.history or not trainer.is_global_zero:
            return
        panels = {  # log axes: they leave out B_simple's negative estimates
            "b_simple": ("B_simple (smoothed), examples", "log"),
            "snr": ("median per-parameter gradient SNR", "log"),
            "per_example_norm": ("per-example gradient norm ‖∂C_x/∂θ‖, percentiles", "log"),
        }
        chart = chart_path(trainer, self.chart, "gradient_noise.png")
        draw_history(self.history, panels, chart, label=lambda key: key.split("/")[1])
