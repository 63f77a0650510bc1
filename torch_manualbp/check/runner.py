r"""Runs a student's file in its own process, for :func:`torch_manualbp.check.check_file`.

To run (the checker does this)::

    python torch_manualbp/check/runner.py STUDENT.py CASES.npz OUT.npz [EXERCISE]

It imports numpy only, and for the matrix-mini-batch exercise :mod:`torch_manualbp.testing.timing` to time the
student's two backprops. The student's results go to ``OUT.npz``; a failure is one line on stderr and exit status 2,
naming the student's own line when their code raised.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback

import numpy as np

BP_FUNCTIONS = ("bp1", "bp2", "bp3", "bp4")

#: The names each exercise in functions form needs (an exercise not named here checks ``class Network``).
EXERCISE_FUNCTIONS = {"sigma-prime-matrix": ("sigma_prime_matrix", "bp1", "bp2")}

#: What the modified-neuron exercise's file defines: ``MODIFIED_NEURON = (l, j)``, row j of layer l (the book's
#: l = 2..L) has f in place of σ.
MODIFIED_NAMES = ("Network", "f", "f_prime", "MODIFIED_NEURON")


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _student_line(err: BaseException, path: str) -> str:
    """``line N: Type: message`` at the deepest frame of the student's file."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == path]
    where = f"line {frames[-1].lineno} ({frames[-1].line})" if frames else "your file"
    return f"{where}: {type(err).__name__}: {err}"


def _run_network(module, cases, case_ids=None) -> dict:
    out = {}
    for c in range(int(cases["n_cases"])) if case_ids is None else case_ids:
        sizes = [int(s) for s in cases[f"{c}_sizes"]]
        net = module.Network(sizes)
        net.weights = [cases[f"{c}_w{i}"].copy() for i in range(len(sizes) - 1)]
        net.biases = [cases[f"{c}_b{i}"].copy() for i in range(len(sizes) - 1)]
        nabla_b, nabla_w = net.backprop(cases[f"{c}_x"].copy(), cases[f"{c}_y"].copy())
        for i in range(len(sizes) - 1):
            out[f"{c}_nb{i}"], out[f"{c}_nw{i}"] = np.asarray(nabla_b[i]), np.asarray(nabla_w[i])
    return out


def _run_functions(module, cases) -> dict:
    return {
        "bp1": module.bp1(cases["nabla_a"].copy(), cases["z"].copy()),
        "bp2": module.bp2(cases["w_next"].copy(), cases["delta_next"].copy(), cases["z"].copy()),
        "bp3": module.bp3(cases["delta"].copy()),
        "bp4": module.bp4(cases["delta"].copy(), cases["a_prev"].copy()),
    }


def _run_sigma_prime_matrix(module, cases) -> dict:
    return {
        "sigma_prime_matrix": module.sigma_prime_matrix(cases["z"].copy()),
        "bp1": module.bp1(cases["nabla_a"].copy(), cases["z"].copy()),
        "bp2": module.bp2(cases["w_next"].copy(), cases["delta_next"].copy(), cases["z"].copy()),
    }


def _scalar(value) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def _run_modified_neuron(module, cases) -> dict:
    """The student's backprop on the networks that have the modified neuron, and their f and f_prime at its z."""
    layer, row = (int(n) for n in module.MODIFIED_NEURON)
    out = {"neuron": np.array([layer, row])}
    fits = []
    for c in range(int(cases["n_cases"])):
        sizes = [int(s) for s in cases[f"{c}_sizes"]]
        if not (2 <= layer <= len(sizes) and 0 <= row < sizes[layer - 1]):
            continue
        fits.append(c)
        a = cases[f"{c}_x"]
        for i in range(layer - 1):  # every neuron before layer l is a sigmoid
            z = cases[f"{c}_w{i}"] @ a + cases[f"{c}_b{i}"]
            a = _sigmoid(z)
        z_row = float(z[row, 0])
        # a central difference's error is about h² |f‴| / 6 + ε |f| / h, smallest near h = ε^(1/3) (times z's scale)
        h = np.finfo(np.float64).eps ** (1 / 3) * max(1.0, abs(z_row))
        out[f"{c}_f_at"] = np.array([z_row, h])
        out[f"{c}_f"] = np.array([_scalar(module.f(np.array([[t]]))) for t in (z_row, z_row + h, z_row - h)])
        out[f"{c}_f_prime"] = np.array(_scalar(module.f_prime(np.array([[z_row]]))))
    if not fits:
        raise ValueError(f"MODIFIED_NEURON = {module.MODIFIED_NEURON} is in none of the checker's networks")
    out.update(_run_network(module, cases, fits))
    return out


def _per_example_sums(net, X, Y):
    """The book's update_mini_batch sums: backprop of each column of ``X``, ``Y``, added up."""
    nabla_b = [np.zeros(b.shape) for b in net.biases]
    nabla_w = [np.zeros(w.shape) for w in net.weights]
    for k in range(X.shape[1]):
        delta_nabla_b, delta_nabla_w = net.backprop(X[:, [k]], Y[:, [k]])
        nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
        nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
    return nabla_b, nabla_w


def _run_matrix_mini_batch(module, cases) -> dict:
    """The student's per-example backprop (checked as usual), backprop_matrix on each case's mini-batch X, and the two
    timed against each other on Network([784, 30, 10]) and one of the book's mini-batches (m = 10)."""
    from torch_manualbp.testing.timing import interleaved, median

    out = _run_network(module, cases)
    for c in range(int(cases["n_cases"])):
        sizes = [int(s) for s in cases[f"{c}_sizes"]]
        net = module.Network(sizes)
        net.weights = [cases[f"{c}_w{i}"].copy() for i in range(len(sizes) - 1)]
        net.biases = [cases[f"{c}_b{i}"].copy() for i in range(len(sizes) - 1)]
        nabla_b, nabla_w = net.backprop_matrix(cases[f"{c}_X"].copy(), cases[f"{c}_Y"].copy())
        for i in range(len(sizes) - 1):
            out[f"{c}_mnb{i}"], out[f"{c}_mnw{i}"] = np.asarray(nabla_b[i]), np.asarray(nabla_w[i])
    net = module.Network([784, 30, 10])
    net.weights = [cases["timing_w0"].copy(), cases["timing_w1"].copy()]
    net.biases = [cases["timing_b0"].copy(), cases["timing_b1"].copy()]
    X, Y = cases["timing_X"], cases["timing_Y"]
    contenders = {"per_example": lambda: _per_example_sums(net, X, Y), "matrix": lambda: net.backprop_matrix(X, Y)}
    samples, _ = interleaved(contenders, repeats=7, min_sample_s=0.02)
    out["seconds"] = np.array([median(samples["per_example"]), median(samples["matrix"])])
    return out


def main(path: str, cases_path: str, out_path: str, exercise: str = "") -> int:
    cases = np.load(cases_path)
    try:
        spec = importlib.util.spec_from_file_location("student", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as err:
        print(f"{path} does not parse: line {err.lineno}: {err.msg}", file=sys.stderr)
        return 2
    except BaseException as err:  # noqa: BLE001 - whatever the student's module does on import
        print(f"{path} fails on import: {_student_line(err, path)}", file=sys.stderr)
        return 2
    if exercise in EXERCISE_FUNCTIONS:
        missing = [n for n in EXERCISE_FUNCTIONS[exercise] if not callable(getattr(module, n, None))]
        if missing:
            print(f"{path} does not define {', '.join(missing)} (the {exercise} exercise)", file=sys.stderr)
            return 2
        shape, run = exercise, _run_sigma_prime_matrix
    elif exercise == "matrix-mini-batch":
        missing = [
            n
            for n in ("backprop", "backprop_matrix")
            if not callable(getattr(getattr(module, "Network", None), n, None))
        ]
        if missing:
            print(
                f"{path} has no Network.{', Network.'.join(missing)} (the matrix-mini-batch exercise)", file=sys.stderr
            )
            return 2
        shape, run = exercise, _run_matrix_mini_batch
    elif exercise == "modified-neuron":
        missing = [n for n in MODIFIED_NAMES if not hasattr(module, n)]
        if missing:
            print(f"{path} does not define {', '.join(missing)} (the modified-neuron exercise)", file=sys.stderr)
            return 2
        shape, run = exercise, _run_modified_neuron
    else:
        missing = [n for n in BP_FUNCTIONS if not callable(getattr(module, n, None))]
        shape = "network" if hasattr(module, "Network") else "functions"
        if shape == "functions" and missing:
            print(f"{path} defines neither class Network nor {', '.join(missing)}", file=sys.stderr)
            return 2
        run = _run_network if shape == "network" else _run_functions
    try:
        out = run(module, cases)
        out = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    except BaseException as err:  # noqa: BLE001 - reported with the student's line number
        hint = " (shapes do not fit: a missing transpose?)" if "shape" in str(err) or "align" in str(err) else ""
        print(f"your code raised at {_student_line(err, path)}{hint}", file=sys.stderr)
        return 2
    np.savez(out_path, shape=np.array(shape), **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
