r"""Benchmarks for torch_manualbp: hand-written backward passes against autograd, and training speed.

One entry point measures everything in one run and writes a markdown table, JSON and a PNG chart::

    python -m benchmarks                      # everything, full size (minutes)
    python -m benchmarks --quick              # a smoke run in well under a minute
    python -m benchmarks --only functions     # one section (python -m benchmarks --help lists them)

Sections (see each module):

1. :mod:`benchmarks.functions`: forward+backward of the sigmoid layer and of ``[784, H, 10]`` + quadratic
   cost, custom Functions vs autograd, plus the bytes each saves for backward.
2. :mod:`benchmarks.epoch`: one training epoch of the book's configuration through Lightning, a plain
   PyTorch loop and the book's own numpy algorithm (:mod:`torch_manualbp.testing.reference`).
3. :mod:`benchmarks.time_to_95`: wall-clock time to 95% test accuracy through ``manualbp fit``.
4. :mod:`benchmarks.statistics`: per-example gradient statistics on top of a step.
5. :mod:`benchmarks.peers`: one epoch of the book's run against its peers (the book, autograd, a bare fused step,
   JAX's ``jit(scan)`` when ``pip install -e ".[bench]"`` installed it).
6. :mod:`benchmarks.contention`: one thread against several, and a busy process beside the run.
7. :mod:`benchmarks.population`: K networks stepped together (``Population.sgd_step``).
8. The same on CUDA when a GPU is present (skipped otherwise).

This package is kept free of imports so that ``manualbp fit`` can load
:mod:`benchmarks.stop_at_accuracy` as a callback without importing the rest.
"""
