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
from pathlib import Path

import numpy as np

from .common import CASE_SIZES, RTOL, CheckResult, _cases, _close, _sigmoid, _sigmoid_prime, _Unusable, _worst
from .exercises import BATCH_SIZE as BATCH_SIZE
from .exercises import _batch_cases, _diagnose_matrix_mini_batch, _diagnose_sigma_prime_matrix
from .network_check import _delta_cause, _diagnose_network, _ModifiedNeuron

__all__ = ["CheckResult", "check_file", "CASE_SIZES", "EXERCISES"]

#: What ``exercise`` may name: the chapter's problems the checker knows (None: the file's own shape decides).
EXERCISES = ("linear", "sigma-prime-matrix", "modified-neuron", "matrix-mini-batch")


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
