r"""What the package is checked and timed against, kept out of the teaching core.

- :mod:`torch_manualbp.testing.reference`: the two independent references, the network and its costs in plain
  autograd ops (``autograd_output``, ``autograd_cost``) and the book's own per-example algorithm in numpy
  (``BookNetwork``); the tests, ``GradientAudit`` and the benchmarks' contenders use them.
- :mod:`torch_manualbp.testing.timing`: interleaved timing (``interleaved``, ``median``) and ``machine_info``; every
  benchmark and timed experiment measures through it.

Neither imports any other module of the package, and nothing in the core (the equations, the Functions, the
modules, the network, the engine) imports them.
"""
