r"""How many intra-op threads to train with on the CPU: a rule measured on the book's networks, and the user's say.

PyTorch runs each op on a pool of threads, by default one per physical core. At the book's sizes a training
step is a dozen small ops, each too short for the pool to pay: the threads meet at a barrier after every op, and
when another process holds one of the cores (a browser, a second job) every op waits for the descheduled thread.
One thread then trains several times faster. :func:`recommended_threads` is the rule, :func:`apply_thread_rule`
applies it unless the user has chosen (``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment, or a
``torch.set_num_threads`` call with another count than torch's default), and returns the line to say at start.

Measured with ``python -m benchmarks --quick --threads 1 --only peers contention --out
benchmarks/results/peers_contention`` (fused SGD step, float32, 2 cores; µs a step, 1 thread against torch's
default of 2, interleaved in one process, on a machine that other jobs kept busy, load average 4.7 at start):

================================  ==========  ==========  ===========  =========
sizes                             mini-batch  1 thread    2 threads    2 / 1
================================  ==========  ==========  ===========  =========
[784, 30, 10]                     10          296         95,595       323
[784, 30, 10]                     100         821         95,241       116
[784, 100, 10]                    10          431         95,191       221
[784, 100, 10]                    100         1,792       27,543       15
[784, 400, 10]                    10          992         6,354        6.4
[784, 400, 10]                    100         5,377       9,392        1.7
[784, 1000, 1000, 10]             10          7,123       18,743       2.6
[784, 1000, 1000, 10]             100         27,714      108,579      3.9
================================  ==========  ==========  ===========  =========

Three other runs of the same measurement (load average 4 to 7) gave 2 / 1 ratios of 2.1-121, 2.7-119 and 4.5-31;
one with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP's waiting threads sleep instead of spinning) 1.09-3.2. Two threads
never won. Up to the largest step measured (179 million multiply-adds) one thread is the rule; above that torch's
default is kept, since no measurement says otherwise. No idle machine was at hand: on one, docs/performance.md
found one thread faster at [784, 30, 10] too (5,000 steps: 0.70 s against 0.87-0.93 s).

Examples::

    >>> from torch_manualbp.threads import apply_thread_rule
    >>> print(apply_thread_rule([784, 30, 10], mini_batch_size=10))   # once, before training
    manualbp: 1 intra-op thread (small network: [784, 30, 10] at mini-batch 10, ...; OMP_NUM_THREADS overrides)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "ONE_THREAD_UP_TO",
    "apply_thread_rule",
    "recommended_threads",
    "torch_default_threads",
    "user_thread_choice",
]

ONE_THREAD_UP_TO = 2e8  # multiply-adds a step: the largest measured step (1.8e8) still ran fastest on one thread
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what torch reads for its default, in this order
_applied: int | None = None  # the count apply_thread_rule set, so that a second call does not take it for the user's


def _multiply_adds(sizes: Sequence[int], mini_batch_size: int, members: int = 1) -> int:
    """Multiply-adds of one step's matrix products (the forward's; BP2 and BP4 cost about as much again each), for
    ``members`` networks stepped together (a :class:`~torch_manualbp.population.Population`)."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(f"sizes must be a sequence of at least 2 layer sizes, e.g. [784, 30, 10], got {sizes!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ValueError(f"sizes must be positive ints, got {sizes!r}")
    if not isinstance(mini_batch_size, int) or isinstance(mini_batch_size, bool) or mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}")
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise ValueError(f"members must be a positive int, got {members!r}")
    return members * mini_batch_size * sum(n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def recommended_threads(sizes: Sequence[int], mini_batch_size: int, members: int = 1) -> int:
    r"""The intra-op thread count that trains a network of ``sizes`` fastest on the CPU, by the measured rule.

    One thread while a step's matrix products take at most :data:`ONE_THREAD_UP_TO` multiply-adds
    (:math:`K m \sum_l H_{l-1} H_l` for mini-batches of m and K networks stepped together), otherwise torch's
    default (:func:`torch_default_threads`).

    Args:
        sizes: neurons per layer, input first, e.g. ``[784, 30, 10]``.
        mini_batch_size: examples per SGD step.
        members: networks stepped together on each mini-batch (a population's K), 1 by default.

    Examples::

        >>> recommended_threads([784, 30, 10], 10)
        1
    """
    if _multiply_adds(sizes, mini_batch_size, members) <= ONE_THREAD_UP_TO:
        return 1
    return torch_default_threads()


def torch_default_threads() -> int:
    """The intra-op thread count torch picks when nobody sets one: one per physical core (as ``cpuinfo`` counts
    them: every core of the machine, whatever the process's affinity), the logical CPUs if that cannot be read."""
    cores = set()
    for siblings in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            continue
    return len(cores) or os.cpu_count() or 1


def user_thread_choice() -> str | None:
    """How the user chose the thread count, e.g. ``"OMP_NUM_THREADS=4"`` or ``"torch.set_num_threads(3)"``, or None.

    A ``torch.set_num_threads`` call is seen when it left another count than torch's default (and than this module
    set); one that set the default itself cannot be told from no call.
    """
    for variable in THREAD_VARIABLES:
        if os.environ.get(variable, "").strip():
            return f"{variable}={os.environ[variable].strip()}"
    threads = torch.get_num_threads()
    if threads != torch_default_threads() and threads != _applied:
        return f"torch.set_num_threads({threads})"
    return None


def apply_thread_rule(sizes: Sequence[int], mini_batch_size: int, members: int = 1) -> str:
    """Set torch's intra-op threads by :func:`recommended_threads` unless the user chose; the line to say at start.

    Call it once, before training on the CPU (GPU kernels do not use these threads).

    Returns:
        e.g. ``"manualbp: 1 intra-op thread (small network: [784, 30, 10] at mini-batch 10, 0.24 million
        multiply-adds a step; OMP_NUM_THREADS overrides)"``, or ``"manualbp: 4 intra-op threads (OMP_NUM_THREADS=4)"``.
    """
    global _applied
    work = _multiply_adds(sizes, mini_batch_size, members)
    chosen = user_thread_choice()
    if chosen is not None:
        threads = torch.get_num_threads()
        return f"manualbp: {threads} intra-op thread{'s' * (threads != 1)} ({chosen})"
    threads = recommended_threads(sizes, mini_batch_size, members)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    _applied = threads
    kind = "small" if work <= ONE_THREAD_UP_TO else "large"
    together = f"s, {members} stepped together" if members > 1 else ""
    return (
        f"manualbp: {threads} intra-op thread{'s' * (threads != 1)} ({kind} network{together}: {list(sizes)} at"
        f" mini-batch {mini_batch_size}, {work / 1e6:.2f} million multiply-adds a step; OMP_NUM_THREADS overrides)"
    )
