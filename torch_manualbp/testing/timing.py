r"""Interleaved timing with ``time.perf_counter`` and a description of the machine.

Contenders run in turns (A B, then B A, ...) so that slow drift of a busy machine (other jobs, clock
boost, thermal state) falls on all of them alike; each sample times enough calls to be well above the
timer's resolution, and the median over samples is reported. The benchmarks (``python -m benchmarks``) and
the experiments that time something (``experiments/observe_overhead.py``, ``experiments/finite_differences.py``)
all time through this module. It imports only torch (Lightning's version, if installed, for :func:`machine_info`).

Examples::

    >>> samples, calls = interleaved({"a": step_a, "b": step_b}, repeats=15)
    >>> median(samples["a"]) / median(samples["b"])   # a ratio: both measured under the same conditions
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch

__all__ = ["alternating", "interleaved", "median", "machine_info", "synchronizer"]


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """What to call before reading the clock: CUDA kernels run asynchronously, CPU ops do not."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _calls_per_sample(fn: Callable[[], object], min_sample_s: float, sync: Callable[[], None]) -> int:
    """How many calls make one sample last at least ``min_sample_s`` (at least one call)."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_sample_s or calls >= 1 << 16:
            return calls
        # aim a little above the target so that noise does not leave a sample short
        calls = max(calls * 2, int(calls * 1.2 * min_sample_s / max(elapsed, 1e-9)))


def alternating(names: list[str], repeats: int) -> Iterator[tuple[int, str]]:
    """``(repeat, name)`` in the order the samples are taken: the names in turn, forwards then backwards."""
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            yield repeat, name


def interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    min_sample_s: float = 0.01,
    warmup: int = 3,
    sync: Callable[[], None] = lambda: None,
    calls: dict[str, int] | None = None,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per call of each contender, ``repeats`` samples each, taken in alternating order.

    Args:
        contenders: name -> a function of no arguments, one call of what is timed.
        repeats: samples per contender.
        min_sample_s: each sample times as many calls as last at least this long (found by calling the
            contender before sampling), so that the timer's resolution does not matter.
        warmup: untimed calls of each contender first (allocator caches, lazy initialisation, compilation).
        sync: what to call before reading the clock (:func:`synchronizer`).
        calls: calls per sample, given instead of found, for some or all contenders: for a contender whose
            one call already lasts seconds, ``1`` spares the calls that finding it would cost.

    Returns:
        ``(samples, calls)``: per contender, the list of seconds per call (one entry per sample), and
        how many calls each of its samples averaged over.
    """
    for fn in contenders.values():  # warm-up: allocator caches, lazy inits, branch predictors
        for _ in range(warmup):
            fn()
    sync()
    for name, n in (calls or {}).items():
        if name not in contenders or not isinstance(n, int) or n < 1:
            raise ValueError(f"calls must map contenders' names to positive ints, got {name!r}: {n!r}")
    given = calls or {}
    calls = {name: given.get(name) or _calls_per_sample(fn, min_sample_s, sync) for name, fn in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _, name in alternating(list(contenders), repeats):
        fn, n = contenders[name], calls[name]
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        samples[name].append((time.perf_counter() - start) / n)
    return samples, calls


def median(values: list[float]) -> float:
    return statistics.median(values)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    """What the numbers depend on: CPU, cores, thread count, library versions, GPU if any."""
    import numpy

    try:
        import lightning

        lightning_version = lightning.__version__
    except ImportError:  # the core and its experiments need no Lightning
        lightning_version = None

    info: dict[str, object] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning_version,
        "numpy": numpy.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info
