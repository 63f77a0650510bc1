r"""Which path trains a run, or why a setting cannot work: :func:`training_path`, the one place that answers it for
``ManualBPClassifier`` (at the start of training, with the trainer's facts) and for ``manualbp`` (on a config, before
anything is built).

Two paths: the **fused** step (:class:`~torch_manualbp.MiniBatchSGD`, the book's plain SGD without autograd, whose
backend then picks the native op or the eager step for the tensors; see :func:`torch_manualbp.native.cpu_loop_refusal`)
and **autograd** (``Network.cost`` and an optimizer), which a network takes where the fused step does not apply and
which a population does not have. What each supports:

=====================  ========================================  =============================================
                       fused (MiniBatchSGD)                      autograd (Network.cost + an optimizer)
=====================  ========================================  =============================================
optimizer              plain SGD at the optimizer's lr           any ``torch.optim`` optimizer
momentum, weight_decay no                                        yes
book's L2 (lmbda)      yes                                       yes (``weight_decay`` on the weights)
L1, dropout            yes                                       no (refused)
processes (DDP)        one                                       any
precision              the parameters' dtype                     autocast (``*-mixed``)
observed steps         no (those steps go through autograd)      yes (the backward hooks)
network callbacks      yes; a population: no (refused)           yes
compile                yes                                       no (refused)
a population           yes (η, λ per member)                     no (refused)
=====================  ========================================  =============================================
"""

from __future__ import annotations

import inspect

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..sgd import differences_from_plain_sgd

__all__ = ["check_population_callbacks", "check_scheduler", "training_path"]


def training_path(
    hp,
    *,
    members: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    own_optimizer: bool = True,
    schedulers: list[str] | None = None,
    world_size: int = 1,
    precision: str = "32-true",
    observers: list[str] | None = None,
    network_only: list[str] | None = None,
) -> list[str]:
    r"""Why the fused step cannot train this run ([] if it can: then it does), or a ``ValueError`` naming the setting
    that would otherwise be silently ignored.

    Args:
        hp: the classifier's settings (its ``hparams``, or a config's ``model`` section): ``momentum``,
            ``weight_decay``, ``lmbda``, ``lr_schedule``, ``compile``, ``regularization``, ``dropout``.
        members: K for a population, ``None`` for a network.
        optimizer: the optimizer the run has, if built (``--optimizer``'s or the classifier's own ``torch.optim.SGD``).
        own_optimizer: whether it is the classifier's own (``--optimizer`` replaces it).
        schedulers: the learning-rate schedulers given (their descriptions); ``None``: none.
        world_size: the processes (DDP).
        precision: the trainer's precision; ``"*-mixed"`` is autocast.
        observers: the callbacks whose steps go through autograd (``observes_step``).
        network_only: the callbacks that work on one network (its optimizer's η, its own evaluation or gradients):
            ``HalveEtaOnPlateau``, ``TrainingSetMonitor``, ``GradientNoiseMonitor``; refused beside a population.
    """
    get = hp.get if isinstance(hp, dict) else lambda name, default=None: getattr(hp, name, default)
    reasons = [] if own_optimizer or optimizer is None else differences_from_plain_sgd(optimizer)
    if get("momentum", 0.0):
        reasons.append(f"momentum={get('momentum'):g} (the fused step is plain SGD)")
    if get("weight_decay", 0.0):
        reasons.append(
            f"weight_decay={get('weight_decay'):g} (torch's, on every parameter; the fused step has the book's lmbda)"
        )
    if world_size > 1:
        reasons.append(f"{world_size} processes (DDP averages gradients through autograd's hooks)")
    if "mixed" in str(precision):
        reasons.append(f"precision={precision} (autocast)")
    if members is not None:
        _refuse_for_population(get, members, reasons, own_optimizer, schedulers, observers, network_only)
    if reasons and get("compile", False):
        raise ValueError(f"compile=True compiles the fused SGD step, which this run cannot use: {'; '.join(reasons)}")
    fused_only = _fused_only_settings(get)
    if fused_only and (reasons or observers):
        why = "; ".join(reasons) or "the steps " + ", ".join(observers) + " observe"
        raise ValueError(
            f"model.{fused_only} is applied by the fused SGD step only, and this run goes through autograd"
            f" ({why}): leave it out, or what makes the run go through autograd"
        )
    if not own_optimizer:
        for name in ("momentum", "weight_decay", "lmbda"):
            if get(name, 0.0):
                given = f" ({_describe(optimizer)})" if optimizer is not None else ""
                raise ValueError(
                    f"model.{name}={_number(get(name))} is not applied by the optimizer given instead of the"
                    f" classifier's{given}: set it on that optimizer, or leave out the optimizer"
                )
        if get("lr_schedule", "constant") != "constant":
            raise ValueError(
                f"model.lr_schedule={get('lr_schedule')!r} is not applied beside an optimizer given instead"
            )
    return reasons


def _refuse_for_population(get, members: int, reasons, own_optimizer, schedulers, observers, network_only) -> None:
    """A population has the fused path alone, with one η per member: what would need autograd, or one η, is refused."""
    if not own_optimizer:
        raise ValueError("optimizer: a population trains by the book's SGD alone, one η per member; leave it out")
    if reasons:
        raise ValueError(f"a population trains on the fused SGD step only, and this run needs autograd: {reasons[0]}")
    if schedulers or get("lr_schedule", "constant") != "constant":
        named = schedulers[0] if schedulers else f"model.lr_schedule={get('lr_schedule')!r}"
        raise ValueError(f"{named}: a population's members keep their own η; no schedule drives them; leave it out")
    check_population_callbacks(members, observers, network_only)


def check_population_callbacks(members: int, observers: list[str] | None, network_only: list[str] | None) -> None:
    """A ``ValueError`` for callbacks a population of ``members`` cannot serve: those that observe single steps
    through autograd, and those that work on one network (its optimizer's η, its evaluation, its gradients). The
    classifier asks at the start of ``fit``, before any callback's own ``on_train_start`` reaches for them."""
    if observers:
        raise ValueError(
            f"trainer.callbacks: {', '.join(observers)} observe single steps through autograd, which a population of"
            f" {members} has not; leave them out"
        )
    if network_only:
        raise ValueError(
            f"trainer.callbacks: {', '.join(network_only)} work on one network (its optimizer's η, its evaluation or"
            f" its gradients), and this is a population of {members}; leave them out"
        )


def _fused_only_settings(get) -> str:
    """The settings only the fused step applies, as ``name=value`` (L1 with a nonzero ``lmbda``, dropout); "" if
    none is set."""
    lmbda = get("lmbda", 0.0)
    given = (
        [f"regularization={get('regularization')!r}"]
        if get("regularization", "l2") == "l1" and any(lmbda if isinstance(lmbda, (list, tuple)) else [lmbda])
        else []
    )
    given += [f"dropout={get('dropout'):g}"] if get("dropout", 0.0) else []
    layers = get("layers", None) or []
    given += [f"layers[{i}].dropout={layer['dropout']:g}" for i, layer in enumerate(layers) if layer.get("dropout")]
    return " and model.".join(given)


def _describe(optimizer: torch.optim.Optimizer) -> str:
    """``Adam(lr=0.001)``: the optimizer's class, its learning rate and the settings it was given that differ from
    the class's defaults."""
    defaults = {k: p.default for k, p in inspect.signature(type(optimizer)).parameters.items()}
    given = {k: v for k, v in optimizer.defaults.items() if k == "lr" or k in defaults and v != defaults[k]}
    settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in given.items())
    return f"{type(optimizer).__name__}({settings})"


def check_scheduler(configs, compile: bool) -> None:
    """A ``ValueError`` for a learning-rate scheduler (Lightning's ``trainer.lr_scheduler_configs``) the classifier
    cannot step as asked: more than one, an interval other than every epoch or every SGD update, a
    ``ReduceLROnPlateau`` without a monitor, a per-update one beside ``compile=True``."""
    if not configs:
        return
    scheduler = configs[0]
    if len(configs) > 1 or scheduler.interval not in ("epoch", "step"):
        raise ValueError("lr_scheduler: one scheduler, stepped every 'epoch' or every 'step' (SGD update)")
    if isinstance(scheduler.scheduler, ReduceLROnPlateau) and not (
        scheduler.interval == "epoch" and getattr(scheduler.scheduler, "monitor", None)
    ):
        raise ValueError(
            "lr_scheduler: ReduceLROnPlateau needs a monitor (--lr_scheduler.monitor) and interval 'epoch'"
        )
    if scheduler.interval == "step" and compile:
        raise ValueError("compile=True runs several updates per call, a scheduler with interval 'step' one: choose")


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
