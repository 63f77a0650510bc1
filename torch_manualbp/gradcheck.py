r"""``manualbp gradcheck``: check every hand-written backward against finite differences.

For every Function the package exports (``SigmoidLinearFunction``, ``QuadraticCostFunction``,
``CrossEntropyCostFunction``, ``SigmoidCrossEntropyFunction``, ``SoftmaxLogLikelihoodFunction``,
``LogLikelihoodCostFunction``, ``DropoutFunction``, ``FullyConnectedFunction``, ``ConvPoolFunction``,
``NetworkCostFunction``) and a few shapes (a batch of one, a non-contiguous input, no bias, each reduction, labels and
float targets, each cost, each activation, a pool of 1) this runs :func:`torch.autograd.gradcheck`, which compares
the backward and the jvp with finite differences in float64, and :func:`torch.autograd.gradgradcheck`, which does the
same for the backward of the backward. ``NetworkCostFunction`` has neither a jvp nor a differentiable backward, on
purpose (``Network.layered_cost`` has both): its table rows say "not supported" for what it does not do.

To run::

    manualbp gradcheck
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from .activations import ACTIVATIONS
from .costs import COSTS
from .functional import (
    conv_pool,
    cross_entropy_cost,
    dropout,
    fully_connected,
    log_likelihood_cost,
    quadratic_cost,
    sigmoid_cross_entropy,
    sigmoid_linear,
    softmax_log_likelihood,
)
from .network import NetworkCostFunction

__all__ = ["Case", "default_cases", "run_checks", "format_table"]


@dataclass(frozen=True)
class Case:
    """One function and its float64 inputs; the inputs that require grad are checked."""

    function: str
    description: str
    fn: Callable
    inputs: tuple
    #: what the Function does not support, and so is not checked: check name -> why
    unsupported: tuple[tuple[str, str], ...] = ()


def _leaf(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()


def default_cases(seed: int = 0) -> list[Case]:
    """The cases ``manualbp gradcheck`` runs: every Function, several shapes."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for n, n_in, n_out in [(1, 3, 2), (5, 4, 3), (8, 7, 5)]:
        x, w, b = _leaf(n, n_in, generator=g), _leaf(n_out, n_in, generator=g), _leaf(n_out, generator=g)
        cases.append(
            Case("sigmoid_linear", f"x ({n}, {n_in}), weight ({n_out}, {n_in}), bias", sigmoid_linear, (x, w, b))
        )
    x_t = _leaf(4, 6, generator=g).detach().T.requires_grad_()  # (6, 4), non-contiguous
    w = _leaf(3, 4, generator=g)
    cases.append(Case("sigmoid_linear", "non-contiguous x (6, 4), no bias", sigmoid_linear, (x_t, w)))
    x3 = _leaf(2, 3, 4, generator=g)
    w, b = _leaf(2, 4, generator=g), _leaf(2, generator=g)
    cases.append(Case("sigmoid_linear", "x (2, 3, 4): leading batch dims", sigmoid_linear, (x3, w, b)))
    for reduction in ("mean", "sum", "none"):
        a = torch.rand(5, 4, dtype=torch.float64, generator=g).requires_grad_()
        y = torch.rand(5, 4, dtype=torch.float64, generator=g).requires_grad_()
        labels = torch.randint(0, 4, (5,), generator=g)
        cases.append(
            Case(
                "quadratic_cost",
                f"a (5, 4), float y, {reduction}",
                partial(quadratic_cost, reduction=reduction),
                (a, y),
            )
        )
        cases.append(
            Case(
                "quadratic_cost",
                f"a (5, 4), labels, {reduction}",
                partial(quadratic_cost, reduction=reduction),
                (a, labels),
            )
        )
    a1 = torch.rand(1, 3, dtype=torch.float64, generator=g).requires_grad_()
    cases.append(Case("quadratic_cost", "a (1, 3), labels, mean", quadratic_cost, (a1, torch.tensor([2]))))
    for reduction in ("mean", "sum", "none"):
        a = (0.05 + 0.9 * torch.rand(5, 4, dtype=torch.float64, generator=g)).requires_grad_()  # 0 < a < 1
        y = torch.rand(5, 4, dtype=torch.float64, generator=g).requires_grad_()
        labels = torch.randint(0, 4, (5,), generator=g)
        ce = partial(cross_entropy_cost, reduction=reduction)
        cases.append(Case("cross_entropy_cost", f"a (5, 4), float y, {reduction}", ce, (a, y)))
        cases.append(Case("cross_entropy_cost", f"a (5, 4), labels, {reduction}", ce, (a, labels)))
        x, w, b = _leaf(5, 3, generator=g), _leaf(4, 3, generator=g), _leaf(4, generator=g)
        sce = partial(sigmoid_cross_entropy, reduction=reduction)
        cases.append(
            Case("sigmoid_cross_entropy", f"x (5, 3), weight (4, 3), bias, float y, {reduction}", sce, (x, w, b, y))
        )
        cases.append(
            Case("sigmoid_cross_entropy", f"x (5, 3), weight (4, 3), bias, labels, {reduction}", sce, (x, w, b, labels))
        )
    x3 = _leaf(2, 3, 3, generator=g)
    cases.append(
        Case(
            "sigmoid_cross_entropy",
            "x (2, 3, 3): leading batch dims, no bias",
            sigmoid_cross_entropy,
            (x3, _leaf(4, 3, generator=g), None, torch.randint(0, 4, (2, 3), generator=g)),
        )
    )
    for reduction in ("mean", "sum", "none"):
        z, labels = _leaf(5, 4, generator=g), torch.randint(0, 4, (5,), generator=g)
        y = torch.softmax(torch.randn(5, 4, dtype=torch.float64, generator=g), -1).requires_grad_()  # rows sum to 1
        ll = partial(log_likelihood_cost, reduction=reduction)
        cases.append(Case("log_likelihood_cost", f"z (5, 4), labels, {reduction}", ll, (z, labels)))
        cases.append(Case("log_likelihood_cost", f"z (5, 4), float y, {reduction}", ll, (z, y)))
        x, w, b = _leaf(5, 3, generator=g), _leaf(4, 3, generator=g), _leaf(4, generator=g)
        sll = partial(softmax_log_likelihood, reduction=reduction)
        description = f"x (5, 3), weight (4, 3), bias, labels, {reduction}"
        cases.append(Case("softmax_log_likelihood", description, sll, (x, w, b, labels)))
        cases.append(
            Case("softmax_log_likelihood", f"x (5, 3), weight (4, 3), bias, float y, {reduction}", sll, (x, w, b, y))
        )
    for activation in ACTIVATIONS:
        x, w, b = _leaf(5, 3, generator=g), _leaf(4, 3, generator=g), _leaf(4, generator=g)
        fc = partial(fully_connected, activation=activation)
        cases.append(
            Case(
                "fully_connected",
                f"x (5, 3), weight (4, 3), bias, {activation}",
                fc,
                (x, w, b),
                _no_jvp("FullyConnectedFunction"),
            )
        )
    for activation in ACTIVATIONS:  # 7 x 6 maps, 3 x 3 filters: a 5 x 4 convolution, pooled 2 x 2 (a row dropped)
        x, w, b = _leaf(2, 2, 7, 6, generator=g), _leaf(3, 2, 3, 3, generator=g), _leaf(3, generator=g)
        cp = partial(conv_pool, activation=activation)
        description = f"x (2, 2, 7, 6), weight (3, 2, 3, 3), bias, pool 2, {activation}"
        cases.append(Case("conv_pool", description, cp, (x, w, b), _no_jvp("ConvPoolFunction")))
    x, w = _leaf(1, 1, 6, 5, generator=g), _leaf(2, 1, 3, 3, generator=g)
    cp = partial(conv_pool, pool_size=1, activation="tanh")
    cases.append(
        Case(
            "conv_pool",
            "x (1, 1, 6, 5), weight (2, 1, 3, 3), no bias, pool 1, tanh",
            cp,
            (x, w),
            _no_jvp("ConvPoolFunction"),
        )
    )
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    cases.append(Case("dropout", "a (4, 6), mask (6,)", dropout, (_leaf(4, 6, generator=g), mask)))
    # every cost behind sigmoid hidden neurons, then each other hidden activation behind the cross-entropy cost
    network_cases = [(name, cost, None) for name, cost in COSTS.items()]
    network_cases += [("cross_entropy", COSTS["cross_entropy"], f) for f in ACTIVATIONS.values() if f.name != "sigmoid"]
    for name, cost, activation in network_cases:
        x, y = _leaf(6, 5, generator=g), torch.rand(6, 3, dtype=torch.float64, generator=g).requires_grad_()
        params = (_leaf(4, 5, generator=g), _leaf(4, generator=g), _leaf(3, 4, generator=g), _leaf(3, generator=g))
        hidden = "" if activation is None else f", {activation.name} hidden"
        cases.append(
            Case(
                "NetworkCostFunction",
                f"[5, 4, 3], x (6, 5), float y, {name}{hidden}",
                partial(_network_cost, cost=cost, activation=activation),
                (x, y, *params),
                NETWORK_COST_UNSUPPORTED,
            )
        )
    return cases


def _network_cost(x, y, *params, cost, activation=None):
    return NetworkCostFunction.apply(x, y, cost, activation, *params)


def _no_jvp(function: str) -> tuple[tuple[str, str], ...]:
    """The ``unsupported`` of a Function with a backward and no forward-mode rule."""
    return (("forward-mode AD", f"no jvp: {function} has a backward only"),)


NETWORK_COST_UNSUPPORTED = (
    ("forward-mode AD", "no jvp; use Network.layered_cost"),
    ("gradgradcheck", "backward not differentiable, on purpose; use Network.layered_cost"),
)


def run_checks(cases: Sequence[Case]) -> list[tuple[Case, str, bool, str]]:
    """Run gradcheck (backward and forward mode) and gradgradcheck on each case.

    Returns one ``(case, check, passed, message)`` row per case and check; a failure's message is
    the first line of what gradcheck raised. A check the case's Function does not support is not run
    (:func:`format_table` lists it from ``case.unsupported``).
    """
    rows = []
    with warnings.catch_warnings():
        # torch's forward-mode AD loads its decompositions through the deprecated torch.jit.script.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
        for case in cases:
            unsupported = dict(case.unsupported)
            for name, check in CHECKS.items():
                if name in unsupported:
                    continue
                if "forward-mode AD" in unsupported and name == "gradcheck":
                    check = partial(torch.autograd.gradcheck, check_forward_ad=False)
                try:
                    rows.append((case, name, check(case.fn, case.inputs), ""))
                except RuntimeError as error:  # gradcheck raises GradcheckError, a RuntimeError
                    rows.append((case, name, False, str(error).strip().splitlines()[0]))
    return rows


CHECKS = {
    "gradcheck": partial(torch.autograd.gradcheck, check_forward_ad=True),
    "gradgradcheck": torch.autograd.gradgradcheck,
}


def format_table(rows: list[tuple[Case, str, bool, str]]) -> str:
    """A markdown table of the rows, each case's unsupported checks after its last row, then a count of passes and
    failures."""
    lines = ["| function | case | check | result |", "| --- | --- | --- | --- |"]
    for i, (case, check, passed, message) in enumerate(rows):
        result = "PASS" if passed else f"FAIL: {message}"
        lines.append(f"| {case.function} | {case.description} | {check} | {result} |")
        if i + 1 == len(rows) or rows[i + 1][0] is not case:
            lines += [
                f"| {case.function} | {case.description} | {what} | not supported: {why} |"
                for what, why in case.unsupported
            ]
    failed = sum(not passed for *_, passed, _ in rows)
    lines.append("")
    lines.append(f"{len(rows) - failed} passed, {failed} failed")
    return "\n".join(lines)
