r"""Section ``contention``: how many intra-op threads, and what a busy core beside the run does to each path.

Two measurements, both of the fused SGD step (:func:`torch_manualbp.network.update_mini_batch`) on random data:

* **threads**: one thread against torch's default count (one per core,
  :func:`torch_manualbp.threads.torch_default_threads`) for several network sizes and mini-batches, in one process,
  interleaved (``torch.set_num_threads`` before each call). Where the default wins is the crossover that
  :func:`torch_manualbp.threads.recommended_threads` encodes.
* **busy neighbour**: ``[784, 30, 10]``, mini-batch 10, six workers (eager and compiled, each with torch's
  default thread count, with ``OMP_NUM_THREADS=1``, and with the default count and ``OMP_WAIT_POLICY=PASSIVE``, so
  that OpenMP's idle threads sleep instead of spinning), each its own process as a user would start it, timed in
  alternating order while one CPU-bound process beside them is running or stopped (``SIGSTOP``/``SIGCONT``
  between samples, so idle and busy samples interleave too). The compiled worker runs ``torch.compile`` of
  ``STEPS_PER_CALL`` unrolled ``update_mini_batch`` steps, as ``ManualBPClassifier(compile=True)`` does;
  it compiles before the first sample. Ratios: busy over idle for each worker, and each worker over eager with
  one thread in the same condition.

To run only this section::

    python -m benchmarks --only contention [--quick]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from torch_manualbp.network import update_mini_batch
from torch_manualbp.testing.timing import alternating, interleaved, median
from torch_manualbp.threads import torch_default_threads

__all__ = ["run", "thread_crossover", "busy_neighbour", "CROSSOVER_SIZES", "CROSSOVER_BATCHES"]

CROSSOVER_SIZES = ([784, 30, 10], [784, 100, 10], [784, 400, 10], [784, 1000, 1000, 10])
CROSSOVER_BATCHES = (10, 100)
SIZES, MINI_BATCH, ETA = [784, 30, 10], 10, 3.0
STEPS_PER_CALL = 10  # ManualBPClassifier's steps_per_call
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
WORKER_SETTINGS = {  # a worker's OpenMP environment, nothing inherited
    "default threads": {},  # torch's default: one thread per core
    "1 thread": {var: "1" for var in THREAD_VARS},
    "default threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},  # waiting threads sleep, not spin
}


class FusedSteps:
    """``steps`` fused SGD steps of a network of ``sizes`` on random mini-batches, eager or compiled; one call runs
    them all. The data is random: only the time is of interest, and it does not depend on the pixels."""

    def __init__(self, sizes: list[int], mini_batch: int, steps: int, compiled: bool = False, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.weights = [torch.randn(n_out, n_in, generator=generator) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        self.biases = [torch.randn(n_out, generator=generator) for n_out in sizes[1:]]
        calls = -(-steps // STEPS_PER_CALL) if compiled else steps
        shape = (calls, STEPS_PER_CALL, mini_batch) if compiled else (calls, mini_batch)
        self.xs = torch.rand(*shape, sizes[0], generator=generator)
        self.ys = F.one_hot(torch.randint(0, sizes[-1], shape, generator=generator), sizes[-1]).float()
        self.ones = torch.ones(mini_batch)
        self.eta = torch.tensor(ETA) if compiled else ETA
        self.step = torch.compile(_unrolled, fullgraph=True, dynamic=False) if compiled else update_mini_batch

    @torch.no_grad()
    def __call__(self) -> None:
        for x, y in zip(self.xs, self.ys):
            self.step(self.weights, self.biases, x, y, self.eta, self.ones)


def _unrolled(weights, biases, xs, ys, eta, ones):
    """``update_mini_batch`` on ``xs[0]``, ``xs[1]``, ... in order, for ``torch.compile`` to unroll."""
    return torch.stack([update_mini_batch(weights, biases, x, y, eta, ones) for x, y in zip(xs, ys)])


def thread_crossover(threads: int, repeats: int, min_sample_s: float, log=print) -> list[dict]:
    """Seconds per fused step with 1 and with ``threads`` intra-op threads, per (sizes, mini-batch), interleaved."""
    before = torch.get_num_threads()
    rows = []
    for sizes in CROSSOVER_SIZES:
        for mini_batch in CROSSOVER_BATCHES:
            steps = FusedSteps(list(sizes), mini_batch, steps=10)
            contenders = {k: _with_threads(k, steps) for k in sorted({1, threads})}
            samples, _ = interleaved(contenders, repeats, min_sample_s, warmup=1)
            us = {k: median(s) / 10 * 1e6 for k, s in samples.items()}
            row = {
                "sizes": list(sizes),
                "mini_batch": mini_batch,
                "threads": threads,
                "one_us": us[1],
                "many_us": us[threads],
                "many_over_one": us[threads] / us[1],
            }
            log(
                f"  {sizes} mini-batch {mini_batch:3d}: 1 thread {us[1]:9.1f} µs/step, {threads} threads "
                f"{us[threads]:9.1f} µs/step, ratio {row['many_over_one']:.2f}"
            )
            rows.append(row)
    torch.set_num_threads(before)
    return rows


def _with_threads(k: int, steps: FusedSteps):
    def call() -> None:
        torch.set_num_threads(k)
        steps()

    return call


# --- the busy neighbour: workers in their own processes -------------------------------------------------------------


def _worker(kind: str, steps: int) -> None:
    """Serve timings on stdin/stdout: compile/warm up, print ``ready``, then one timed batch of steps per line read."""
    fused = FusedSteps(SIZES, MINI_BATCH, steps, compiled=kind == "compiled")
    fused()
    print(f"ready {torch.get_num_threads()}", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        fused()
        print(time.perf_counter() - start, flush=True)


def _start_worker(kind: str, settings: dict[str, str], steps: int) -> subprocess.Popen:
    """A worker process whose OpenMP settings are ``settings`` and nothing inherited (torch's defaults otherwise)."""
    env = {k: v for k, v in os.environ.items() if k not in (*THREAD_VARS, "OMP_WAIT_POLICY")}
    env.update(settings)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.contention", "--worker", kind, str(steps)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _busy_process() -> subprocess.Popen:
    """One CPU-bound process: what a browser tab or a second job does to a 2-core laptop."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def busy_neighbour(steps: int, repeats: int, log=print) -> dict:
    """Seconds per step of each worker, idle and with a busy process beside it, and their ratios."""
    procs = {
        f"{kind}, {label}": _start_worker(kind, settings, steps)
        for kind in ("eager", "compiled")
        for label, settings in WORKER_SETTINGS.items()
    }
    threads_used = {}
    busy = _busy_process()
    try:
        os.kill(busy.pid, signal.SIGSTOP)
        for name, proc in procs.items():
            ready = proc.stdout.readline().split()
            if not ready or ready[0] != "ready":
                raise RuntimeError(f"contention worker {name!r} failed to start (exit {proc.poll()})")
            threads_used[name] = int(ready[1])
        samples = {(name, state): [] for name in procs for state in ("idle", "busy")}
        for repeat, state in alternating(["idle", "busy"], repeats):
            os.kill(busy.pid, signal.SIGCONT if state == "busy" else signal.SIGSTOP)
            for _, name in alternating(list(procs), 2):  # the workers forwards, then backwards
                procs[name].stdin.write("run\n")
                procs[name].stdin.flush()
                samples[name, state].append(float(procs[name].stdout.readline()) / steps)
            log(
                f"  repeat {repeat} {state}: "
                + ", ".join(f"{name} {samples[name, state][-1] * 1e6:.0f} µs" for name in procs)
            )
    finally:
        busy.kill()
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    return _busy_rows(samples, threads_used)


def _busy_rows(samples: dict, threads_used: dict) -> dict:
    us = {key: median(s) * 1e6 for key, s in samples.items()}
    base = "eager, 1 thread"
    rows = []
    for name, threads in threads_used.items():
        rows.append(
            {
                "worker": name,
                "threads": threads,
                "idle_us": us[name, "idle"],
                "busy_us": us[name, "busy"],
                "busy_over_idle": us[name, "busy"] / us[name, "idle"],
                "idle_over_eager_1": us[name, "idle"] / us[base, "idle"],
                "busy_over_eager_1": us[name, "busy"] / us[base, "busy"],
                "samples_us": {state: [v * 1e6 for v in samples[name, state]] for state in ("idle", "busy")},
            }
        )
    return {"sizes": SIZES, "mini_batch": MINI_BATCH, "steps_per_call": STEPS_PER_CALL, "rows": rows}


def run(quick: bool, log=print) -> dict:
    """Both measurements; quick: fewer samples and steps."""
    threads = torch_default_threads()
    log(f"  threads: 1 against {threads}, fused step, interleaved")
    crossover = thread_crossover(threads, 5 if quick else 15, 0.05 if quick else 0.2, log)
    steps = 200 if quick else 1000
    log(f"  busy neighbour: {steps} steps a sample, eager and compiled workers")
    return {"crossover": crossover, "busy": busy_neighbour(steps, 2 if quick else 6, log)}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("python -m benchmarks --only contention   (this module runs only as the section's worker)")
