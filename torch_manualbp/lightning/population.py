r"""``PopulationClassifier``: K networks of one ``sizes`` and cost trained together in one Lightning run.

The members are a :class:`~torch_manualbp.Population` (the core's); each Lightning batch is one
:meth:`Population.sgd_steps <torch_manualbp.Population.sgd_steps>`, the batch cut into the book's mini-batches and
every mini-batch one step of all members on it (the batch's arguments checked once), so ``trainer.global_step``
counts SGD updates (each member takes one per step). Members differ by their
seed (their initial weights), their η or their λ.

How seeds map to weights: member k's network is ``Network(sizes, cost=cost, init=init)`` built right after
``torch.manual_seed(seeds[k])`` (the global generator is restored afterwards), which is exactly what
``manualbp fit --seed_everything seeds[k]`` draws for its single network. With the same ``data.seed`` (the shuffling,
independent of the global seed) member k therefore takes the steps of that single-network run.

The ``manualbp`` command builds one from a config's ``population:`` section (see
:mod:`torch_manualbp.lightning.cli`).

To run::

    manualbp fit --config experiments/nielsen_ch1_seeds.yaml
"""

from __future__ import annotations

import warnings
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ..checks import l2_weight_decay, targets
from ..network import Network
from ..population import Population
from ..sgd import check_mini_batch_size
from ..threads import apply_thread_rule
from .datamodule import NUM_TRAIN
from .module import EpochCost, check_hyperparameters, count_updates

__all__ = ["PopulationClassifier", "population_settings"]

# a population steps its parameters itself (Population.sgd_step), with no optimizer to configure
warnings.filterwarnings(
    "ignore", message=r"`LightningModule\.configure_optimizers` returned `None`", category=UserWarning
)


def population_settings(seeds, eta, lmbda) -> tuple[list[int], list[float], list[float]]:
    r"""``seeds``, ``eta`` and ``lmbda`` (each one value or a list) as K values each, K the longest list's length.

    Raises:
        ValueError: lists of different lengths (other than 1), a seed given twice, an η that is not a finite
            number > 0, a λ < 0; the message starts with the setting's name.
    """
    given = {"seeds": seeds, "eta": eta, "lmbda": lmbda}
    lists = {name: list(value) if isinstance(value, (list, tuple)) else [value] for name, value in given.items()}
    for name, values in lists.items():
        if not values:
            raise ValueError(f"{name} must be one value or a list of one value per member, got an empty list")
    k = max(len(values) for values in lists.values())
    for name, values in lists.items():
        if len(values) not in (1, k):
            lengths = ", ".join(f"{other} {len(v)}" for other, v in lists.items() if len(v) > 1)
            raise ValueError(f"{name} must be one value or {k} values, one per member (the lists' lengths: {lengths})")
    seed_list = lists["seeds"]
    if len(seed_list) > 1 and len(set(seed_list)) != len(seed_list):
        raise ValueError(
            f"seeds must be different from each other (repeated members train identically), got {seed_list}"
        )
    for eta_k in lists["eta"]:
        check_hyperparameters(eta=eta_k)
    for lmbda_k in lists["lmbda"]:
        check_hyperparameters(lmbda=lmbda_k)
    seeds, etas, lmbdas = (values * k if len(values) == 1 else values for values in lists.values())
    return seeds, etas, lmbdas


class PopulationClassifier(L.LightningModule):
    r"""K members trained by the book's SGD on the same mini-batches, each with its own seed, η and λ.

    Args:
        sizes: neurons per layer, input first, every member's.
        seeds: the members' seeds, one per member (or one for all: then members differ by η or λ alone); member k's
            initial weights are those ``torch.manual_seed(seeds[k])`` then ``Network(sizes, cost=cost, init=init)``
            draws, as ``manualbp fit --seed_everything seeds[k]`` does.
        eta: the learning rate :math:`\eta`, one for every member or one per member.
        lmbda: the book's L2 regularisation parameter :math:`\lambda \ge 0`, one for every member or one per member.
        init: ``"normal"`` (N(0, 1)) or ``"scaled"`` (N(0, 1/n_in) weights), every member's.
        mini_batch_size: the SGD mini-batch when a Lightning batch holds several; ``None``: each batch is one.
        cost: ``"quadratic"`` or ``"cross_entropy"``, every member's.
        training_set_size: the :math:`n` in :math:`\lambda/n`.
        member: what ``predict`` answers with: ``None`` (default) the ensemble, the members' averaged output
            activations; k, member k alone.

    K is the length of the longest of ``seeds``, ``eta`` and ``lmbda``; the others are 1 or K long.

    Logged: per member ``train/cost/member{k}``, ``{stage}/accuracy/member{k}``, ``{stage}/correct/member{k}``
    and ``{stage}/cost/member{k}``; and ``train/cost``, ``{stage}/cost`` (the members' mean),
    ``{stage}/accuracy`` and ``{stage}/correct`` with ``{stage}/images`` of the ensemble (stage ``val`` or ``test``).

    Examples::

        >>> model = PopulationClassifier([784, 30, 10], seeds=[0, 1, 2], eta=3.0, mini_batch_size=10)
        >>> model(torch.rand(5, 784)).shape  # every member's output activations
        torch.Size([3, 5, 10])
    """

    def __init__(
        self,
        sizes: list[int] = [784, 30, 10],  # noqa: B006 -- LightningCLI shows and saves it; never mutated
        seeds: int | list[int] = 0,
        eta: float | list[float] = 3.0,
        lmbda: float | list[float] = 0.0,
        init: Literal["normal", "scaled"] = "normal",
        mini_batch_size: int | None = None,
        cost: Literal["quadratic", "cross_entropy"] = "quadratic",
        training_set_size: int = NUM_TRAIN,
        member: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.seeds, self.etas, self.lmbdas = population_settings(seeds, eta, lmbda)
        check_mini_batch_size(mini_batch_size)
        if any(self.lmbdas):
            l2_weight_decay(max(self.lmbdas), training_set_size)  # raises on a bad training_set_size
        k = len(self.seeds)
        if member is not None and not (isinstance(member, int) and 0 <= member < k):
            raise ValueError(f"member must be a member's index in 0..{k - 1} or None (the ensemble), got {member!r}")
        self.automatic_optimization = False  # Population.sgd_step updates the parameters itself
        self.population = Population([_member_network(sizes, cost, init, seed) for seed in self.seeds])
        self.fused = True  # for DivergenceGuard (StepCostRecord): no step calls the optimizer hooks
        self._step_costs: list[tuple[int, Tensor]] = []
        self._batch_costs: tuple[int, Tensor] | None = None  # this batch's first step and (steps, K) costs
        self._epoch_costs = [EpochCost() for _ in range(k + 1)]  # each member's, then the members' mean

    def forward(self, x: Tensor) -> Tensor:
        """Every member's output activations, (K, N, sizes[-1])."""
        return self.population(x)

    def describe(self, k: int) -> str:
        """``member 1 (seed 1, η 3, λ 0)``: what sets member k apart."""
        return f"member {k} (seed {self.seeds[k]}, η {self.etas[k]:g}, λ {self.lmbdas[k]:g})"

    def take_step_costs(self) -> list[tuple[int, Tensor]]:
        """Every step's cost since the last call for :class:`~torch_manualbp.lightning.safety.DivergenceGuard`: the
        sum over members, non-finite as soon as one member's is; :meth:`rewind` names the members."""
        taken, self._step_costs = self._step_costs, []
        return taken

    def rewind(self, step: int) -> bool:
        """Say which members' cost at global step ``step`` is not finite (the guard's report follows); the steps
        are not undone (False)."""
        first, costs = self._batch_costs or (0, torch.empty(0))
        if first <= step < first + len(costs):  # the guard checks every batch on the CPU: the step is in this one
            bad = (~torch.isfinite(costs[step - first])).nonzero().flatten().tolist()
            named = "; ".join(f"{self.describe(k)}: {costs[step - first, k].item()}" for k in bad)
            rank_zero_info(f"manualbp: the training cost at step {step} is not finite for {named}")
        return False

    def on_train_start(self) -> None:
        if self.device.type == "cpu":  # the thread rule counts the work of all K members' step
            batch_size = getattr(self.trainer.train_dataloader, "batch_size", None)
            size = self.hparams.mini_batch_size or batch_size or 1
            rank_zero_info(apply_thread_rule(self.hparams.sizes, size, members=len(self.population)))

    def on_train_epoch_start(self) -> None:
        for epoch_cost in self._epoch_costs:
            epoch_cost.start(self.current_epoch)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y, _ = batch
        size = self.hparams.mini_batch_size or len(x)
        first_step = self.trainer.global_step
        n = self.hparams.training_set_size
        # the batch's mini-batches as one block of steps, checked once
        costs = self.population.sgd_steps(x, y, self.etas, self.lmbdas, n, size)  # (steps, K), each member's costs
        self._batch_costs = (first_step, costs)
        self._step_costs.append((first_step, costs.sum(1)))
        count_updates(self.trainer, len(costs))  # trainer.global_step counts SGD updates, as for ManualBPClassifier
        member_costs = costs.mean(0)  # (K,), each member's mean over the batch
        for k, epoch_cost in enumerate(self._epoch_costs):
            cost = member_costs[k] if k < len(self.population) else member_costs.mean()
            mean, rows = epoch_cost.add(cost, len(x))
            name = f"train/cost/member{k}" if k < len(self.population) else "train/cost"
            self.log(name, mean, on_step=False, on_epoch=True, batch_size=rows)
        return member_costs.mean()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.trainer.global_step  # as ManualBPClassifier

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["manualbp_epoch_costs"] = [epoch_cost.state_dict() for epoch_cost in self._epoch_costs]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for epoch_cost, state in zip(self._epoch_costs, checkpoint.get("manualbp_epoch_costs", [])):
            epoch_cost.load_state_dict(state)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val" if dataloader_idx == 0 else "test")  # the second loader is the test set

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        x, y, labels = batch
        pop = self.population
        pop.check_batch(x)
        # one feedforward of every member for aᴸ and zᴸ (the cross-entropy's value needs zᴸ)
        activations, z = pop.feedforward(x)
        a, y = activations[-1], targets(y, (len(x), pop.sizes[-1]), x)  # (K, N, 10), (N, 10)
        costs = pop.costs(z, a - y, y)  # each member's C₀ = (1/n) Σ_x C_x, (K,)
        correct = (a.argmax(-1) == labels).sum(-1).float()  # (K,)
        ensemble = (a.mean(0).argmax(-1) == labels).sum().float()  # the members' averaged output activations
        rows = len(x)
        sums = {"reduce_fx": "sum", "batch_size": rows, "add_dataloader_idx": False}
        for k in range(len(self.population)):
            self.log(f"{stage}/cost/member{k}", costs[k], batch_size=rows, add_dataloader_idx=False)
            self.log(f"{stage}/accuracy/member{k}", correct[k] / rows, batch_size=rows, add_dataloader_idx=False)
            self.log(f"{stage}/correct/member{k}", correct[k], **sums)
        self.log(f"{stage}/cost", costs.mean(), batch_size=rows, add_dataloader_idx=False)
        self.log(f"{stage}/accuracy", ensemble / rows, batch_size=rows, add_dataloader_idx=False)
        self.log(f"{stage}/correct", ensemble, **sums)
        self.log(f"{stage}/images", float(rows), **sums)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The ensemble's averaged output activations ``(B, 10)``, or member ``member``'s."""
        a = self.population(batch[0])
        return a.mean(0) if self.hparams.member is None else a[self.hparams.member]

    def configure_optimizers(self):
        return None  # Population.sgd_step is the update


def _member_network(sizes: list[int], cost: str, init: str, seed: int) -> Network:
    """The network ``manualbp fit --seed_everything seed`` starts from, drawn without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Network(sizes, cost=cost, init=init)
