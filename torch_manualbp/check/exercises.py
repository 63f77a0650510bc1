"""The checks of two of the chapter's problems that are not a whole ``Network``: ``sigma-prime-matrix`` (BP1 and
BP2 with σ'(z) as a diagonal matrix) and ``matrix-mini-batch`` (backpropagation over a mini-batch as a matrix, the
per-example sums of BP3 and BP4). :func:`torch_manualbp.check.check_file` calls them."""

from __future__ import annotations

import numpy as np
import torch

from .common import CASE_SIZES, RTOL, _close, _sigmoid, _sigmoid_prime, _Unusable, _worst
from .network_check import _delta_cause, _diagnose_network

#: Columns of each case's mini-batch X in the matrix-mini-batch exercise; the timing uses the book's m = 10.
BATCH_SIZE = 6


def _sigma_prime_matrix_truth(z):
    """Σ'(z), the Jacobian ∂σ(z)/∂z of the elementwise sigmoid by torch autograd (float64): diagonal."""
    jacobian = torch.autograd.functional.jacobian(torch.sigmoid, torch.tensor(z[:, 0]))
    return jacobian.numpy()


def _matrix_cause(got, want, z, a) -> str:
    """The slip that the student's Σ'(z) shows: not diagonal, or σ'(a) on its diagonal."""
    off_diagonal = got - np.diag(np.diag(got))
    if np.abs(off_diagonal).max() > RTOL * np.abs(want).max():
        sp = _sigmoid_prime(z)
        cause = "; likely cause: the outer product σ'(z) σ'(z)ᵀ" if _close(got, sp @ sp.T) else ""
        return f"; it is not diagonal: Σ'(z) = diag(σ'(z)), zero off the diagonal{cause}"
    if _close(got, np.diagflat(_sigmoid_prime(a))):
        return "; likely cause: σ'(a) used for σ'(z): σ(z)(1 − σ(z)) evaluated at a = σ(z)"
    return ""


def _diagnose_sigma_prime_matrix(cases: dict, out: dict) -> list[str]:
    z, nabla_a, w_next, delta_next = cases["z"], cases["nabla_a"], cases["w_next"], cases["delta_next"]
    a, matrix = _sigmoid(z), _sigma_prime_matrix_truth(cases["z"])
    truths = {
        "sigma_prime_matrix": (matrix, "Σ'(z) = diag(σ'(z))"),
        "bp1": (matrix @ nabla_a, "δᴸ = Σ'(zᴸ) ∇_a C"),
        "bp2": (matrix @ w_next.T @ delta_next, "δˡ = Σ'(zˡ) (wˡ⁺¹)ᵀ δˡ⁺¹"),
    }
    lines = []
    for name, (want, what) in truths.items():
        got = out[name]
        label = name if name == "sigma_prime_matrix" else f"{name.upper()} (matrix form)"
        if got.shape == want.shape[::-1] and want.shape[1] == 1:
            lines.append(
                f"{label} wrong ({what}): a row vector {got.shape} where δ is a column {want.shape}; likely cause:"
                " the product in the wrong order, a row times Σ'(z) in place of Σ'(z) times a column"
            )
        elif got.shape != want.shape:
            raise _Unusable(f"{name} returned shape {got.shape}, expected {want.shape} ({what})")
        elif not _close(got, want):
            if name == "sigma_prime_matrix":
                cause = _matrix_cause(got, want, z, a)
            else:
                g = nabla_a if name == "bp1" else w_next.T @ delta_next
                cause = _delta_cause(got, g, z, a)
                if not cause and out["sigma_prime_matrix"].shape == matrix.shape:
                    if _close(got, out["sigma_prime_matrix"] @ g):
                        cause = "; it follows from your sigma_prime_matrix: right once that is"
            lines.append(f"{label} wrong ({what}): {_worst(got, want)}{cause}")
    return lines


def _batch_cases(seed: int) -> dict:
    """Each case's mini-batch (X, Y columns) and Network([784, 30, 10]) with one of the book's mini-batches to time."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the other exercises' cases stay as they are
    cases = {}
    for c, sizes in enumerate(CASE_SIZES):
        cases[f"{c}_X"], cases[f"{c}_Y"] = rng.random((sizes[0], BATCH_SIZE)), rng.random((sizes[-1], BATCH_SIZE))
    for i, (n_in, n_out) in enumerate([(784, 30), (30, 10)]):
        cases[f"timing_w{i}"], cases[f"timing_b{i}"] = (
            rng.standard_normal((n_out, n_in)),
            rng.standard_normal((n_out, 1)),
        )
    cases["timing_X"], cases["timing_Y"] = rng.random((784, 10)), np.eye(10)[:, rng.integers(0, 10, 10)]
    return cases


def _per_example_sums_truth(cases: dict, c: int):
    """Σ over the columns of X of each example's (∂C/∂b, ∂C/∂w) by autograd: the leaves' .grad add up the backwards."""
    sizes = CASE_SIZES[c]
    ws = [torch.tensor(cases[f"{c}_w{i}"], requires_grad=True) for i in range(len(sizes) - 1)]
    bs = [torch.tensor(cases[f"{c}_b{i}"], requires_grad=True) for i in range(len(sizes) - 1)]
    for k in range(BATCH_SIZE):
        a = torch.tensor(cases[f"{c}_X"][:, [k]])
        for w, b in zip(ws, bs):
            a = torch.sigmoid(w @ a + b)
        (0.5 * ((a - torch.tensor(cases[f"{c}_Y"][:, [k]])) ** 2).sum()).backward()
    return [b.grad.numpy() for b in bs], [w.grad.numpy() for w in ws]


def _diagnose_matrix_mini_batch(cases: dict, out: dict) -> list[str]:
    """The per-example backprop as usual, then backprop_matrix's sums, output layer first; then the timing line."""
    per_example, matrix = out.pop("seconds")
    lines = _diagnose_network(cases, out)
    for c, sizes in enumerate(CASE_SIZES):
        if lines:
            break
        true_nb, true_nw = _per_example_sums_truth(cases, c)
        for i in reversed(range(len(sizes) - 1)):
            where = f"layer l = {i + 2} of Network({sizes}), m = {BATCH_SIZE}"
            for name, got, want in (
                ("nabla_b", out[f"{c}_mnb{i}"], true_nb[i]),
                ("nabla_w", out[f"{c}_mnw{i}"], true_nw[i]),
            ):
                if got.shape == (want.shape[0], BATCH_SIZE) and want.shape[1] == 1:
                    lines.append(
                        f"backprop_matrix wrong at {where}: {name} has shape {got.shape}, expected {want.shape};"
                        " likely cause: δ not summed over the mini-batch's columns (delta.sum(axis=1, keepdims=True))"
                    )
                elif got.shape != want.shape:
                    raise _Unusable(f"backprop_matrix at {where}: {name} has shape {got.shape}, expected {want.shape}")
                elif not _close(got, want):
                    cause = ""
                    if _close(got, want / BATCH_SIZE):
                        cause = "; likely cause: divided by m (update_mini_batch divides by len(mini_batch) itself)"
                    error = _worst(got, want)
                    lines.append(f"backprop_matrix wrong at {where}: {name} is not the per-example sum; {error}{cause}")
            if lines:
                break
    lines.append(
        f"timing, Network([784, 30, 10]) on a mini-batch of m = 10: per-example backprop {per_example * 1e3:.3g} ms,"
        f" backprop_matrix {matrix * 1e3:.3g} ms, {per_example / matrix:.3g}x (median of 7 interleaved samples)"
    )
    return lines
