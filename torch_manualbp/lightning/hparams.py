r"""The classifier's settings, each checked by one rule: :func:`check_hyperparameters` (the classifier calls it on all
of them, ``manualbp`` on a config's before anything is built), :func:`check_layer_settings` (a network given as
``layers``, and what it cannot be trained with) and :func:`population_settings`, the members' seeds, η and λ of a
population, K of each."""

from __future__ import annotations

import math

import torch

from ..activations import get_activation
from ..checks import check_dropout, check_learning_rate, check_regularization, l2_weight_decay
from ..layer_spec import check_layers
from ..sgd import check_mini_batch_size
from .datamodule import NUM_TRAIN

__all__ = ["FLOAT32_MAX", "check_hyperparameters", "check_layer_settings", "population_settings"]

#: The largest float32: ``torch.optim.SGD`` cannot apply a larger learning rate to float32 weights (RuntimeError).
FLOAT32_MAX = torch.finfo(torch.float32).max


def check_hyperparameters(**settings) -> None:
    """Raise a ``ValueError`` (or ``TypeError``) whose message starts with the setting's name, for the first of
    ``ManualBPClassifier``'s ``settings`` (given by name, any subset) that cannot work. ``eta`` and ``lmbda`` may be
    one value per member of a population (lists); ``manualbp`` prints the message after ``model.``."""
    for name, rule in _RULES.items():
        if name in settings:
            rule(settings[name])
    for lmbda in _values(settings.get("lmbda", 0.0)):  # raises on a bad lmbda or training_set_size
        l2_weight_decay(lmbda, settings.get("training_set_size", NUM_TRAIN))
    if any(_values(settings.get("lmbda", 0.0))) and settings.get("weight_decay"):
        raise ValueError(
            "give lmbda (the book's L2, weights only) or weight_decay (torch's, every parameter), not both"
        )
    if settings.get("lr_scheduler") and settings.get("lr_schedule", "constant") != "constant":
        raise ValueError("lr_scheduler and lr_schedule both set the learning rate's schedule; give one")
    if settings.get("dropout") and settings.get("sizes") is not None and len(settings["sizes"]) < 3:
        raise ValueError(f"dropout removes hidden neurons, and sizes={settings['sizes']} has no hidden layer")
    if settings.get("layers") is not None:
        check_layer_settings(settings)


def check_layer_settings(settings) -> None:
    """For a network given as ``layers`` (``settings``: the classifier's, a dict or a config's ``model`` section, any
    subset): a ``ValueError`` starting with the setting's name for the layers' first bad entry (``layers[i]: ...``,
    :func:`~torch_manualbp.layer_spec.check_layers`) or a setting such a network cannot be trained with, one line
    each. A layer's ``dropout`` is applied by the fused step alone: beside a setting that trains through autograd
    (``momentum``, ``weight_decay``, an ``optimizer`` given instead) it is refused."""
    get = settings.get
    if get("sizes") is not None:
        raise ValueError(f"sizes={list(get('sizes'))} and layers both give the network; give one of them")
    checked = check_layers(get("layers"))
    if get("cost", "log_likelihood") != "log_likelihood":
        raise ValueError(
            f"cost={get('cost')!r}: a network of layers ends in the softmax layer, whose cost is 'log_likelihood';"
            " set cost: log_likelihood"
        )
    refused = [
        ("seeds", get("seeds") is not None, "a network of layers trains alone, not as a population"),
        ("eta", isinstance(get("eta"), (list, tuple)), "one eta: a network of layers is not a population"),
        ("lmbda", isinstance(get("lmbda"), (list, tuple)), "one lmbda: a network of layers is not a population"),
        ("compile", get("compile", False), "the compiled step is Network's; a network of layers steps eagerly"),
        ("dropout", get("dropout", 0.0), "set a fully_connected or softmax layer's own dropout in layers instead"),
        ("regularization", get("regularization", "l2") != "l2", "a network of layers has the book's L2 only"),
        ("init", get("init", "normal") != "normal", "layers are drawn as network3.py draws them; leave init out"),
        ("activation", get("activation", "sigmoid") != "sigmoid", "set each layer's activation in layers instead"),
    ]
    for name, given, why in refused:
        if given:
            raise ValueError(f"{name}={get(name)!r} does not apply to a network given as layers: {why}")
    dropped = [(i, p) for i, (*_, p) in enumerate(checked) if p]
    autograd = [name for name in ("momentum", "weight_decay", "optimizer") if get(name)]
    if dropped and autograd:
        i, p = dropped[0]
        raise ValueError(
            f"layers[{i}].dropout={p:g} is applied by the fused SGD step only, and {autograd[0]}={get(autograd[0])!r}"
            " trains the network through autograd: leave one of them out"
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
    for seed in seed_list:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seeds must be integers, got {seed!r}")
    check_hyperparameters(eta=lists["eta"], lmbda=lists["lmbda"])
    seeds, etas, lmbdas = (values * k if len(values) == 1 else values for values in lists.values())
    return seeds, etas, lmbdas


def _values(value) -> list:
    """One setting's values: a list's (a population's, one per member), or the one value."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_eta(eta) -> None:
    for value in _values(eta):
        if check_learning_rate(value) > FLOAT32_MAX:
            raise ValueError(
                f"eta must be a positive learning rate no larger than {FLOAT32_MAX:.4g}, got {float(value)}"
            )


def _check_momentum(momentum) -> None:
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")


def _check_weight_decay(weight_decay) -> None:
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay}")


def _check_lr_schedule(lr_schedule) -> None:
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")


def _check_compile(compile) -> None:
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")


def _check_class_init(name: str):
    """The rule for ``optimizer`` and ``lr_scheduler``: ``None`` or what LightningCLI's ``--optimizer`` and
    ``--lr_scheduler`` hand over, ``{"class_path": ..., "init_args": {...}}``."""

    def check(value) -> None:
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("class_path"), str)):
            raise TypeError(
                f"{name} must be None or a dict {{'class_path': 'torch.optim.Adam', 'init_args': {{...}}}}, got"
                f" {value!r}"
            )

    return check


#: One rule per setting, each written once (see check_hyperparameters); lmbda's needs training_set_size too.
_RULES = {
    "eta": _check_eta,
    "momentum": _check_momentum,
    "weight_decay": _check_weight_decay,
    "lr_schedule": _check_lr_schedule,
    "mini_batch_size": check_mini_batch_size,
    "compile": _check_compile,
    "regularization": check_regularization,
    "dropout": check_dropout,
    "activation": get_activation,
    "optimizer": _check_class_init("optimizer"),
    "lr_scheduler": _check_class_init("lr_scheduler"),
}
