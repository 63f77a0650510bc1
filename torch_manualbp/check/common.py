"""What the checker's parts share: the result (:class:`CheckResult`), the tolerance, the networks a file is run
on (``CASE_SIZES``, ``_cases``), numpy's σ and σ', and the comparison of a student's array with the true one.
Import the public names from :mod:`torch_manualbp.check`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The networks a ``Network`` file is run on: the square 4x4 weights of the last catch a w in place of wᵀ in BP2.
CASE_SIZES = ([5, 4, 4, 3], [3, 2], [4, 5, 3])


#: Agreement allowed, relative to the largest true value: a float32 student's rounding (about 1e-7 per operation,
#: a few dozen operations) passes; every planted mistake is off by tens of percent.
RTOL = 1e-4


@dataclass
class CheckResult:
    """``status``: 0 all right, 1 something is wrong, 2 the file cannot be used; ``lines``: one per finding."""

    status: int
    lines: list[str]


class _Unusable(Exception):
    """The student's results cannot be compared (wrong shapes): exit status 2, one line."""


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _sigmoid_prime(z):
    return _sigmoid(z) * (1.0 - _sigmoid(z))


def _cases(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    cases = {"n_cases": np.array(len(CASE_SIZES))}
    for c, sizes in enumerate(CASE_SIZES):
        cases[f"{c}_sizes"] = np.array(sizes)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            cases[f"{c}_w{i}"] = rng.standard_normal((n_out, n_in))
            cases[f"{c}_b{i}"] = rng.standard_normal((n_out, 1))
        cases[f"{c}_x"] = rng.random((sizes[0], 1))
        cases[f"{c}_y"] = rng.random((sizes[-1], 1))
    # the functions' inputs: w_next is (3, 4), not square, so wᵀ and w cannot be confused silently
    cases.update(
        nabla_a=rng.standard_normal((4, 1)),
        z=rng.standard_normal((4, 1)),
        w_next=rng.standard_normal((3, 4)),
        delta_next=rng.standard_normal((3, 1)),
        delta=rng.standard_normal((4, 1)),
        a_prev=rng.random((5, 1)),
    )
    return cases


def _close(got, want) -> bool:
    return got.shape == want.shape and np.abs(got - want).max() <= RTOL * max(np.abs(want).max(), 1e-12)


def _worst(got, want) -> str:
    diff = np.abs(got - want)
    index = np.unravel_index(diff.argmax(), diff.shape)
    where = tuple(int(i) for i in index)
    return f"largest error {diff.max():.3g} at {where} (yours {got[index]:.6g}, true {want[index]:.6g})"
