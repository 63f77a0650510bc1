r"""The native op's build and what its CPU loop can take: ``torch.ops.manualbp.sgd_block``, a block of the book's SGD
steps in one C++ call (``csrc/sgd_block.cpp``), built on first use by ``torch.utils.cpp_extension`` and cached; the
engine (:class:`~torch_manualbp.MiniBatchSGD`) calls it where :func:`cpu_loop_refusal` finds nothing against it."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["NATIVE_COSTS", "NATIVE_SOURCE", "build_native", "cpu_loop_refusal", "native_build_name"]

NATIVE_COSTS = ("quadratic", "cross_entropy")  # the costs torch.ops.manualbp.sgd_block has BP1 and a value for
NATIVE_SOURCE = Path(__file__).parent / "csrc" / "sgd_block.cpp"


def cpu_loop_refusal(parameters: Sequence[Tensor], x: Tensor | None = None) -> str | None:
    """Why the native op's CPU loop cannot step ``parameters`` (weights, biases, dropout masks) on ``x``, in a few
    words, or None if it can: it takes float32 or float64 CPU tensors of one dtype, the parameters contiguous, with
    torch's MKL. Everywhere else (CUDA above all) the engine runs the eager step, the same equations as ATen ops."""
    if not torch.backends.mkl.is_available():
        return "this torch is built without MKL, whose BLAS the loop calls"
    dtype = parameters[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return f"the parameters are {dtype}; the loop takes float32 or float64"
    for p in parameters:
        if p.device.type != "cpu":
            return f"the parameters are on {p.device.type}; the loop runs on the CPU"
        if p.dtype != dtype or not p.is_contiguous():
            return (
                "a parameter is not contiguous (the loop reads each weight's rows in order) or not of the others' dtype"
            )
    if x is not None and (x.device.type != "cpu" or x.dtype != dtype):
        return f"the data is {x.dtype} on {x.device.type}, the parameters {dtype} on the CPU"
    return None


def native_build_name(source: Path = NATIVE_SOURCE) -> str:
    """The op's name in torch's extensions cache: ``manualbp_native_`` and a hash of the source's path and text, so
    that two checkouts (or versions) on one machine each keep their own build instead of rebuilding each other's."""
    source = Path(source).resolve()
    digest = hashlib.sha256(str(source).encode() + b"\0" + source.read_bytes()).hexdigest()
    return f"manualbp_native_{digest[:12]}"


@functools.cache
def build_native() -> str | None:
    """Build (the first time; later, load from torch's extensions cache) and register ``torch.ops.manualbp.sgd_block``
    from ``csrc/sgd_block.cpp``, once per process. Returns None if it is ready, else why not, in one line."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import warns of a missing CUDA runtime, which a CPU build does not need
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(native_build_name(), [str(NATIVE_SOURCE)], extra_cflags=["-O3"], is_python_module=False)
    except Exception as error:  # no compiler, a failed build or load: the eager step makes the same updates
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"[:200]
    finally:
        logger.setLevel(level)
    return None
