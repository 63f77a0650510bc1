r"""The argument checks that ``functional``, ``network`` and ``lightning`` share, each written once.

Every check raises a ``TypeError`` (wrong kind of value) or a ``ValueError`` (wrong shape, device or range) that names
the argument and says what was expected; ``tests/test_bad_input.py`` holds one case per message. Tensor values are
checked only where a Python branch on them is possible (not under ``torch.compile`` or ``torch.func``).
"""

from __future__ import annotations

import functools
import math
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "check_float_tensor",
    "check_same_kind",
    "targets",
    "check_learning_rate",
    "l2_weight_decay",
    "REGULARIZATIONS",
    "check_regularization",
    "check_dropout",
]


def check_float_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_same_kind(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """Raise unless ``t`` is on ``ref``'s device and, outside autocast, of its dtype."""
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")
    if t.dtype != ref.dtype and not torch.is_autocast_enabled(t.device.type):
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def check_bias(bias: Tensor | None, size: int, weight: Tensor) -> None:
    """Raise unless ``bias`` is ``None`` or a floating-point vector of ``size`` entries, one per output of
    ``weight``, on its device and of its dtype."""
    if bias is None:
        return
    check_float_tensor("bias", bias)
    if bias.shape != (size,):
        raise ValueError(f"bias must have shape ({size},) to match weight, got {tuple(bias.shape)}")
    check_same_kind("bias", bias, "weight", weight)


def targets(y: Tensor, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The desired outputs as floats of ``shape`` on ``like``'s device, in ``like``'s dtype: a float ``y`` checked
    and returned as it is, integer class labels one-hot encoded (the book's representation of a digit)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.is_cpu and like.is_cpu and y.dtype in _INDEX_DTYPES and len(shape) == 2 and y.shape == shape[:1]:
        if _can_branch_on_values(y):
            # the common case, a mini-batch of labels on the CPU, checked with as few Python steps as possible: the
            # encoding is one op, and index_select checks the labels' range itself (no host sync to ask for it)
            try:
                return _one_hot_rows(shape[1], like.dtype, _CPU).index_select(0, y)
            except IndexError:
                _raise_bad_labels(y, shape[1])
    if y.device != like.device:
        raise ValueError(f"y must be on the same device as a ({like.device}), got {y.device}")
    if y.is_floating_point():
        if y.shape != shape:
            raise ValueError(f"a float target y must have the shape of a, {tuple(shape)}, got {tuple(y.shape)}")
        check_same_kind("y", y, "a", like)
        return y
    if y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must be floating-point targets or integer class labels, got dtype {y.dtype}")
    if y.shape != shape[:-1]:
        raise ValueError(
            f"integer labels y must have shape {tuple(shape[:-1])} (one label per row of a), got {tuple(y.shape)}"
        )
    classes = shape[-1]
    valid = (y >= 0) & (y < classes)
    if _can_branch_on_values(y) and not bool(valid.all()):
        _raise_bad_labels(y, classes)
    one_hot = (y.unsqueeze(-1) == torch.arange(classes, device=y.device)).to(like.dtype)
    # Where the labels could not be checked, an invalid one gives NaN rather than a silent zero row.
    return torch.where(valid.unsqueeze(-1), one_hot, torch.nan)


_INDEX_DTYPES = (torch.int64, torch.int32)  # what index_select takes
_CPU = torch.device("cpu")


@functools.lru_cache(maxsize=16)
def _one_hot_rows(classes: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The identity matrix of ``classes`` rows, row j the one-hot vector of label j, made once per dtype and device:
    a step that encodes its labels pays one ``index_select``, not an ``arange``, a comparison and a cast."""
    with torch.inference_mode(False):  # a normal tensor, even if first asked for inside inference mode
        return torch.eye(classes, dtype=dtype, device=device)


def _raise_bad_labels(y: Tensor, classes: int) -> None:
    bad = y[(y < 0) | (y >= classes)].unique()[:5].tolist()
    raise ValueError(f"labels y must lie in 0..{classes - 1} for a with {classes} outputs, got {bad}")


def _can_branch_on_values(t: Tensor) -> bool:
    """False under torch.compile and inside torch.func transforms, where a tensor's values cannot steer Python."""
    return not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(t)


def check_learning_rate(eta) -> float:
    """``eta`` as a float, or a ``TypeError``/``ValueError`` unless it is a real number that is finite and > 0."""
    if type(eta) is not float and (  # a float, the common case, needs no further look
        isinstance(eta, bool) or not isinstance(eta, (Real, Tensor)) or (isinstance(eta, Tensor) and eta.numel() != 1)
    ):
        raise TypeError(f"eta must be a real number (the learning rate), got {type(eta).__name__}")
    value = float(eta)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"eta must be a positive, finite learning rate, got {value}")
    return value


def l2_weight_decay(lmbda, n) -> float:
    r"""The book's L2 regularisation :math:`\lambda` over a training set of ``n`` examples as ``torch.optim.SGD``'s
    ``weight_decay``, :math:`\lambda/n`; a ``TypeError``/``ValueError`` naming the argument unless ``lmbda`` is a
    finite number >= 0 and, when it is not 0, ``n`` a positive int."""
    if type(lmbda) is not float and (isinstance(lmbda, bool) or not isinstance(lmbda, Real)):
        raise TypeError(f"lmbda must be a real number (the L2 regularisation parameter λ), got {type(lmbda).__name__}")
    if not (math.isfinite(lmbda) and lmbda >= 0):
        raise ValueError(f"lmbda must be a finite number >= 0, got {lmbda}")
    if lmbda == 0:
        return 0.0
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be the training-set size, an int, when lmbda is given; got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be the training-set size, a positive number of examples, got {n}")
    return float(lmbda) / n


#: The regularisations of chapter 3 that the fused step applies to the weights, by name.
REGULARIZATIONS = ("l2", "l1")


def check_regularization(regularization) -> str:
    """``regularization`` itself, or a ``TypeError``/``ValueError`` unless it is one of :data:`REGULARIZATIONS`."""
    if not isinstance(regularization, str):
        raise TypeError(f"regularization must be one of {REGULARIZATIONS}, got {type(regularization).__name__}")
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"regularization must be one of {REGULARIZATIONS}, got {regularization!r}")
    return regularization


def check_dropout(dropout) -> float:
    """``dropout`` as a float, or a ``TypeError``/``ValueError`` unless it is a number in [0, 1): the fraction of each
    hidden layer's neurons removed for a mini-batch (the book's 1/2)."""
    # a float, the common case, needs no further look (the ABC check of Real costs most of a µs)
    if type(dropout) is not float and (isinstance(dropout, bool) or not isinstance(dropout, Real)):
        raise TypeError(f"dropout must be a real number (a fraction of hidden neurons), got {type(dropout).__name__}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a fraction in [0, 1) of the hidden neurons to remove, got {dropout}")
    return float(dropout)
