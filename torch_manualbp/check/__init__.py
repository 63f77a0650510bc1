r"""``manualbp check FILE``: is a student's backprop right, and if not, which equation of theirs is wrong, where, why.

FILE is a Python file in one of two shapes:

- the book's ``network.py``: ``class Network(sizes)`` whose ``backprop(self, x, y)`` returns ``(nabla_b, nabla_w)``
  for one example (numpy column vectors, quadratic cost, sigmoid neurons). The checker builds ``Network(sizes)``,
  overwrites ``weights`` and ``biases`` with its own seeded values, and runs ``backprop`` on seeded inputs, for
  several sizes and depths;
- functions ``bp1(nabla_a, z)``, ``bp2(w_next, delta_next, z)``, ``bp3(delta)``, ``bp4(delta, a_prev)``, each checked
  on its own.

``exercise="linear"`` checks the chapter's problem "backpropagation with linear neurons": the same ``Network`` shape,
with :math:`\sigma(z) = z` throughout (so :math:`\sigma'(z) = 1`). ``exercise="sigma-prime-matrix"`` checks BP1 and
BP2 in the chapter's matrix form: functions ``sigma_prime_matrix(z)`` (:math:`\Sigma'(z)`, the diagonal matrix of
:math:`\sigma'(z)`), ``bp1(nabla_a, z)`` :math:`= \Sigma'(z^L) \nabla_a C` and ``bp2(w_next, delta_next, z)``
:math:`= \Sigma'(z^l) (w^{l+1})^T \delta^{l+1}`. ``exercise="modified-neuron"`` checks the single modified neuron:
a ``Network`` whose neuron ``MODIFIED_NEURON = (l, j)`` has ``f`` in place of σ, with ``f`` and ``f_prime`` in the file;
``f_prime`` is checked against a central difference of ``f`` first, then ``backprop`` against autograd through ``f``.
``exercise="matrix-mini-batch"`` checks the fully matrix-based backprop over a mini-batch: ``Network.backprop_matrix(X,
Y)`` with X of shape (n_in, m), one example a column, returning the sums over the m examples that ``update_mini_batch``
adds up; it is checked against the per-example sums, and timed against the student's own ``backprop``.

The student's code runs in a subprocess (:mod:`torch_manualbp.check.runner`) with a time limit; the true values come
from plain torch autograd in float64, and the diagnosis runs here. Layers are numbered as in the book, l = 2..L.

Examples::

    >>> result = check_file("my_network.py")
    >>> result.status, result.lines  # 0 right, 1 something wrong, 2 the file cannot be used
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["CheckResult", "check_file", "CASE_SIZES", "EXERCISES"]

#: What ``exercise`` may name: the chapter's problems the checker knows (None: the file's own shape decides).
EXERCISES = ("linear", "sigma-prime-matrix", "modified-neuron", "matrix-mini-batch")

#: Columns of each case's mini-batch X in the matrix-mini-batch exercise; the timing uses the book's m = 10.
BATCH_SIZE = 6

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


@dataclass
class _ModifiedNeuron:
    """The neuron of the modified-neuron exercise: row ``row`` of layer ``layer`` (the book's l) has f for σ; per
    case, f(z) there (the student's f) and its slope f'(z) by a central difference of the student's f."""

    layer: int
    row: int
    value: dict
    slope: dict

    def prime(self, c: int, i: int, z):
        """σ'(z) of layer index ``i`` with f'(z) at the modified neuron."""
        prime = _sigmoid_prime(z)
        if i == self.layer - 2:
            prime[self.row] = self.slope[c]
        return prime


def _truth(cases: dict, c: int, linear: bool = False, modified: _ModifiedNeuron | None = None):
    """z, a (a[0] = x) and δ of case ``c``, δ ≡ ∂C/∂z by torch autograd in float64; ``linear``: σ(z) = z;
    ``modified``: f at one neuron, entered as its value plus its slope times z's deviation, so that autograd carries
    the slope found from the student's f, not their f_prime."""
    n = len(cases[f"{c}_sizes"]) - 1
    a = [torch.tensor(cases[f"{c}_x"])]
    zs = []
    for i in range(n):
        w = torch.tensor(cases[f"{c}_w{i}"], requires_grad=True)
        z = w @ a[-1] + torch.tensor(cases[f"{c}_b{i}"])
        z.retain_grad()
        zs.append(z)
        if modified is not None and i == modified.layer - 2:
            row = torch.zeros_like(z)
            row[modified.row] = 1.0
            f_z = modified.value[c] + modified.slope[c] * (z - z.detach())
            a.append(torch.sigmoid(z) * (1.0 - row) + f_z * row)
        else:
            a.append(z if linear else torch.sigmoid(z))
    (0.5 * ((a[-1] - torch.tensor(cases[f"{c}_y"])) ** 2).sum()).backward()
    return [z.detach().numpy() for z in zs], [t.detach().numpy() for t in a], [z.grad.numpy() for z in zs]


def _close(got, want) -> bool:
    return got.shape == want.shape and np.abs(got - want).max() <= RTOL * max(np.abs(want).max(), 1e-12)


def _worst(got, want) -> str:
    diff = np.abs(got - want)
    index = np.unravel_index(diff.argmax(), diff.shape)
    where = tuple(int(i) for i in index)
    return f"largest error {diff.max():.3g} at {where} (yours {got[index]:.6g}, true {want[index]:.6g})"


def _delta_cause(got, g, z, a, linear: bool = False, modified_prime=None) -> str:
    """The common slip that ``got`` matches, for δ = g ⊙ σ'(z) (δ = g for linear neurons; ``modified_prime``: σ'(z)
    with f'(z) at the modified neuron, for its layer)."""
    if modified_prime is not None:
        candidates = {
            "σ'(z) used at the modified neuron, where f'(z) belongs": g * _sigmoid_prime(z),
            "a sign flip (−δ)": -g * modified_prime,
        }
    elif linear:
        candidates = {
            "the sigmoid's σ'(z) kept: for σ(z) = z, σ'(z) = 1": g * _sigmoid_prime(z),
            "a sign flip (−δ)": -g,
        }
    else:
        candidates = {
            "σ'(a) used for σ'(z): σ(z)(1 − σ(z)) evaluated at a = σ(z)": g * _sigmoid_prime(a),
            "a missing σ'(z) factor": g,
            "a sign flip (−δ)": -g * _sigmoid_prime(z),
        }
    for cause, value in candidates.items():
        if _close(got, value):
            return f"; likely cause: {cause}"
    return ""


def _diagnose_network(cases: dict, out: dict, linear: bool = False, modified: _ModifiedNeuron | None = None):
    for c, sizes in enumerate(CASE_SIZES):
        if modified is not None and c not in modified.value:
            continue  # the modified neuron is not in this network
        zs, a, delta = _truth(cases, c, linear, modified)
        n = len(sizes) - 1
        for i in reversed(range(n)):  # output layer first
            layer, nb, nw = i + 2, out[f"{c}_nb{i}"], out[f"{c}_nw{i}"]
            for name, got, want in (("nabla_b", nb, delta[i]), ("nabla_w", nw, delta[i] @ a[i].T)):
                if got.shape != want.shape:
                    raise _Unusable(
                        f"layer {layer} of Network({sizes}): {name} has shape {got.shape}, expected {want.shape}"
                    )
            true_nw = delta[i] @ a[i].T
            if _close(nb, delta[i]) and _close(nw, true_nw):
                continue
            where = f"layer l = {layer} of Network({sizes})"
            if not _close(nb, delta[i]) and _close(nw, true_nw):
                return [f"BP3 wrong at {where}: nabla_b is not δ; {_worst(nb, delta[i])}"]
            if _close(nb, delta[i]):
                cause = "; likely cause: a sign flip (−δ aᵀ)" if _close(nw, -true_nw) else ""
                for k, a_k in enumerate(a):
                    if k != i and a_k.shape == a[i].shape and _close(nw, delta[i] @ a_k.T):
                        cause = f"; likely cause: the wrong layer's activation, a^{k + 1} in place of a^{i + 1}"
                return [f"BP4 wrong at {where}: nabla_w is not δ (a^{layer - 1})ᵀ; {_worst(nw, true_nw)}{cause}"]
            if i == n - 1:
                g, equation = a[-1] - cases[f"{c}_y"], "BP1"
            else:
                g, equation = cases[f"{c}_w{i + 1}"].T @ delta[i + 1], "BP2"
            modified_here = modified is not None and i == modified.layer - 2
            modified_prime = modified.prime(c, i, zs[i]) if modified_here else None
            cause = _delta_cause(nb, g, zs[i], a[i + 1], linear, modified_prime)
            w_next = cases[f"{c}_w{i + 1}"] if equation == "BP2" else None
            prime = 1.0 if linear else (modified.prime(c, i, zs[i]) if modified else _sigmoid_prime(zs[i]))
            if (
                w_next is not None
                and w_next.shape[0] == w_next.shape[1]
                and _close(nb, (cases[f"{c}_w{i + 1}"] @ delta[i + 1]) * prime)
            ):
                cause = "; likely cause: a missing transpose, w^(l+1) in place of (w^(l+1))ᵀ"
            if not _close(nw, nb @ a[i].T):
                cause += "; nabla_w is not your δ (a^(l-1))ᵀ either (BP4)"
            return [f"{equation} wrong at {where}: δ^{layer} (your nabla_b) {_worst(nb, delta[i])}{cause}"]
    return []


def _diagnose_functions(cases: dict, out: dict) -> list[str]:
    z, sp = cases["z"], _sigmoid_prime(cases["z"])
    a = _sigmoid(z)
    truths = {
        "bp1": (cases["nabla_a"] * sp, cases["nabla_a"], "δᴸ = ∇_a C ⊙ σ'(zᴸ)"),
        "bp2": (cases["w_next"].T @ cases["delta_next"] * sp, cases["w_next"].T @ cases["delta_next"], "δˡ"),
        "bp3": (cases["delta"], None, "∂C/∂bˡ = δˡ"),
        "bp4": (cases["delta"] @ cases["a_prev"].T, None, "∂C/∂wˡ = δˡ (aˡ⁻¹)ᵀ"),
    }
    lines = []
    for name, (want, g, what) in truths.items():
        got = out[name]
        if got.shape != want.shape:
            raise _Unusable(f"{name} returned shape {got.shape}, expected {want.shape} ({what})")
        elif not _close(got, want):
            cause = _delta_cause(got, g, z, a) if g is not None else ""
            if not cause and _close(got, -want):
                cause = "; likely cause: a sign flip"
            lines.append(f"{name.upper()} wrong ({what}): {_worst(got, want)}{cause}")
    return lines


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


def _diagnose_modified_neuron(cases: dict, out: dict) -> list[str]:
    """f_prime against the slope of the student's own f first; then their backprop against autograd through f."""
    layer, row = (int(n) for n in out.pop("neuron"))
    fits = sorted(int(k.split("_")[0]) for k in out if k.endswith("_f_at"))
    value, slope = {}, {}
    for c in fits:
        (z, h), (f_z, f_plus, f_minus) = out[f"{c}_f_at"], out[f"{c}_f"]
        value[c], slope[c] = f_z, (f_plus - f_minus) / (2 * h)
        f_prime = float(out[f"{c}_f_prime"])
        # the difference's own error is about 1e-10 of f's scale (ε^(2/3)); a wrong f_prime is off by far more
        if abs(f_prime - slope[c]) > RTOL * max(abs(slope[c]), abs(f_z) / max(1.0, abs(z)), 1e-12):
            return [
                f"f_prime wrong: it is not the derivative of your f; at z = {z:.6g}, f_prime(z) = {f_prime:.6g} but"
                f" the slope of f (a central difference) is {slope[c]:.6g}; fix f_prime before backprop"
            ]
    return _diagnose_network(cases, out, modified=_ModifiedNeuron(layer, row, value, slope))


def check_file(path: str | Path, timeout: float = 30.0, seed: int = 0, exercise: str | None = None) -> CheckResult:
    r"""Run the student's file at ``path`` in a subprocess and diagnose its backprop.

    Args:
        path: a Python file defining ``class Network`` (the book's shape) or ``bp1``-``bp4``.
        timeout: seconds the student's code may run.
        seed: seed of the checker's weights, biases and inputs.
        exercise: one of :data:`EXERCISES`, the chapter's problem the file solves: ``"linear"``, a ``Network`` of
            linear neurons, :math:`\sigma(z) = z`; ``"sigma-prime-matrix"``, ``sigma_prime_matrix``, ``bp1`` and ``bp2``
            in the matrix form :math:`\Sigma'(z)`; ``"modified-neuron"``, a ``Network`` with f in place of σ at the
            neuron ``MODIFIED_NEURON = (l, j)``, the file's ``f`` and ``f_prime`` beside it; ``None`` (default) for
            the sigmoid network or ``bp1``-``bp4``; ``"matrix-mini-batch"``, ``Network.backprop_matrix(X, Y)`` over a
            mini-batch, checked and timed against ``Network.backprop``.
    """
    if exercise is not None and exercise not in EXERCISES:
        raise ValueError(f"exercise must be one of {EXERCISES} or None, got {exercise!r}")
    path = Path(path).resolve()
    if not path.is_file():
        return CheckResult(2, [f"{path}: no such file"])
    cases = _cases(seed)
    if exercise == "matrix-mini-batch":
        cases.update(_batch_cases(seed))
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "cases.npz", **cases)
        # the runner by its path, not -m: -m would import the package, and torch with it, for every check
        command = [sys.executable, str(Path(__file__).with_name("runner.py")), str(path), f"{tmp}/cases.npz"]
        command += [f"{tmp}/out.npz", exercise or ""]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return CheckResult(2, [f"{path.name}: still running after {timeout:g} s (an endless loop?)"])
        if run.returncode != 0:
            lines = run.stderr.strip().splitlines()
            return CheckResult(2, [lines[-1] if lines else f"the student's process exited with {run.returncode}"])
        with np.load(Path(tmp) / "out.npz") as data:
            out = {k: data[k] for k in data.files}
    shape = str(out.pop("shape"))
    if exercise == "linear" and shape != "network":
        return CheckResult(2, [f"{path} defines no class Network: the linear-neurons exercise checks Network.backprop"])
    diagnose = {
        "network": lambda: _diagnose_network(cases, out, exercise == "linear"),
        "functions": lambda: _diagnose_functions(cases, out),
        "sigma-prime-matrix": lambda: _diagnose_sigma_prime_matrix(cases, out),
        "modified-neuron": lambda: _diagnose_modified_neuron(cases, out),
        "matrix-mini-batch": lambda: _diagnose_matrix_mini_batch(cases, out),
    }[shape]
    try:
        lines = diagnose()
    except _Unusable as err:
        return CheckResult(2, [str(err)])
    timing = [lines.pop()] if exercise == "matrix-mini-batch" else []
    return CheckResult(1, lines + timing) if lines else CheckResult(0, ["all right: " + str(path.name), *timing])
