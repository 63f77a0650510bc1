r"""Training that fails loudly and loses nothing: a divergence guard and atomic checkpoint files.

- :class:`DivergenceGuard` (a callback) stops training with a :class:`DivergenceError` naming the step and the
  parameters once the training cost becomes NaN or Inf, and refuses to let any checkpoint of non-finite weights be
  written, so the last good checkpoint on disk stays the last good one.
- :class:`AtomicCheckpointIO` (a ``CheckpointIO`` plugin) writes each checkpoint to a temporary file in the target's
  directory, flushes and fsyncs it, then renames it over the target: a crash (even SIGKILL) mid-write leaves the
  previous checkpoint whole, never a half-written one.

The ``manualbp`` CLI installs both by default (see :mod:`torch_manualbp.lightning.cli`). Without the CLI::

    trainer = L.Trainer(callbacks=[DivergenceGuard()], plugins=[AtomicCheckpointIO()])
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .progress import updates_made
from .report import checkpoint_paths

__all__ = ["AtomicCheckpointIO", "DivergenceError", "DivergenceGuard", "StepCostRecord"]

#: How often :class:`DivergenceGuard` looks at the cost on an accelerator, where each look is a host-device sync.
ACCELERATOR_CHECK_EVERY = 100


@runtime_checkable
class StepCostRecord(Protocol):
    """What a LightningModule offers :class:`DivergenceGuard` when some of its steps call no optimizer hooks
    (``ManualBPClassifier``'s fused steps): its own record of every training step's cost, and a way to undo steps."""

    fused: bool  # whether steps may run without the optimizer hooks (checked at each batch's start as well)
    updates: int  # the SGD updates made so far: the module's step count (global_step counts its batches)
    counts_batch_only: bool  # True during an optimizer step that only counts a batch whose updates are made

    def take_step_costs(self) -> list[tuple[int, torch.Tensor]]:
        """Every step's cost recorded since the last call, as ``(first update, costs of consecutive updates)``."""

    def rewind(self, step: int) -> bool:
        """Restore the parameters before update ``step`` and put its gradients in ``.grad``; False if it cannot."""


class DivergenceError(RuntimeError):
    """Training produced a non-finite cost or non-finite parameters; the message says at which step and where."""


class DivergenceGuard(L.Callback):
    r"""Stop training as soon as it diverges, before any checkpoint of the diverged state is written.

    Every training step's cost is kept (a reference to the scalar: no copy, no sync) and checked every
    ``every_n_steps`` optimizer steps, just before the optimizer applies its update; the parameters themselves are
    checked every ``parameters_every_n_steps`` steps. On an accelerator each check costs one host-device sync,
    whatever it covers. A NaN or Inf raises :class:`DivergenceError` naming the step (the first step whose cost was
    non-finite, else the step at which non-finite parameters were found), the learning rate, and every parameter and
    gradient holding a NaN or Inf, by name.

    Independently of both intervals, the costs and the parameters are checked before any checkpoint is written
    (``on_save_checkpoint``, which Lightning calls before the file is opened) and at the end of training, so a
    checkpoint of non-finite weights is never written: the checkpoints already on disk stay as they were, and
    ``--ckpt_path last`` resumes from the last finite weights once the cause is fixed. (Lightning does not call
    ``on_save_checkpoint`` for ``save_weights_only`` checkpoints; those are not guarded.)

    Under DDP the decision is all-reduced at each check, so every process stops at the same step.

    A module that keeps its own record of every step's cost (:class:`StepCostRecord`, as ``ManualBPClassifier``
    does, whose fused steps call neither hook) is read through that record instead: at the end of each batch,
    before each optimizer step and before any checkpoint, on the same intervals. The step named is still exact, and
    before the report the module rewinds the parameters to their state before that step (``rewind``), with that
    step's gradients in ``.grad``, so the report and the parameters left are those of a run stopped before applying
    the bad update.

    Args:
        every_n_steps: how often to check the costs. ``None`` (default): every step in a single CPU process, where a
            check is one ``.item()`` of a CPU scalar (about a microsecond), and every 100 steps on an accelerator or
            under DDP, where each check makes the host wait for the device or for the other processes. The step
            reported for a non-finite cost is exact either way; with a larger interval the run stops up to
            ``every_n_steps - 1`` steps later, by when the NaN may have spread to more parameters.
        parameters_every_n_steps: how often to check every parameter (one pass over the weights). A non-finite
            weight usually makes the next cost NaN, which the cost check sees first; this catches the rest (an
            infinite bias behind a saturated sigmoid leaves the cost finite).
    """

    def __init__(self, every_n_steps: int | None = None, parameters_every_n_steps: int = 100) -> None:
        if every_n_steps is not None:
            _check_interval("every_n_steps", every_n_steps)
        _check_interval("parameters_every_n_steps", parameters_every_n_steps)
        self.every_n_steps = every_n_steps
        self.parameters_every_n_steps = parameters_every_n_steps
        self._every = every_n_steps or 1
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (first SGD update, epoch, costs (k,))

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.every_n_steps is None:
            one_cpu_process = trainer.strategy.root_device.type == "cpu" and trainer.world_size == 1
            self._every = 1 if one_cpu_process else ACCELERATOR_CHECK_EVERY
        self._pending = []

    def on_train_start(self, trainer, pl_module) -> None:
        self._pending = []

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not isinstance(pl_module, StepCostRecord):  # such a module records this step's cost itself
            self._pending.append((trainer.global_step, trainer.current_epoch, loss.detach().reshape(1)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if isinstance(pl_module, StepCostRecord) and pl_module.fused:  # the check on_before_optimizer_step makes
            self.on_before_optimizer_step(trainer, pl_module, None)  # for the batch's first step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        recorded = self._collect(trainer, pl_module)
        if not recorded:
            return
        first, last = recorded[0][0], recorded[-1][0] + len(recorded[-1][2]) - 1  # steps run since the last collection

        def crossed(every: int) -> bool:  # a multiple of `every` among the update counts first + 1 .. last + 1
            return (last + 1) // every > first // every

        parameters = crossed(self.parameters_every_n_steps)
        if parameters or crossed(self._every):
            self._check(trainer, pl_module, "stopped after this batch's updates", parameters)

    def _collect(self, trainer, pl_module) -> list[tuple[int, int, torch.Tensor]]:
        """Move the costs the module recorded since the last collection into the pending list; return them."""
        if not isinstance(pl_module, StepCostRecord):
            return []
        recorded = [(step, trainer.current_epoch, costs) for step, costs in pl_module.take_step_costs()]
        self._pending.extend(recorded)
        return recorded

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = updates_made(trainer, pl_module) + 1
        parameters = step % self.parameters_every_n_steps == 0
        if parameters or step % self._every == 0:
            counting = isinstance(pl_module, StepCostRecord) and pl_module.counts_batch_only
            consequence = "stopped after this batch's updates" if counting else "stopped before applying the update"
            self._check(trainer, pl_module, consequence, parameters)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._check(trainer, pl_module, "the checkpoint due now was not written", parameters=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, "no checkpoint of these weights was written", parameters=True)

    def _check(self, trainer, pl_module, consequence: str, parameters: bool) -> None:
        """Look at the pending costs (and the parameters, if asked); raise :class:`DivergenceError` if any process
        found a NaN or Inf."""
        self._collect(trainer, pl_module)
        pending, self._pending = sorted(self._pending, key=lambda entry: entry[0]), []
        diverged = _any_non_finite([costs for *_, costs in pending], list(pl_module.parameters()) if parameters else [])
        if trainer.strategy.reduce_boolean_decision(diverged, all=False):  # every process stops at the same step
            step, epoch, what, consequence = self._diagnose(trainer, pl_module, pending, consequence)
            raise DivergenceError(self._message(trainer, pl_module, step, epoch, what, consequence))

    def _diagnose(self, trainer, pl_module, pending, consequence: str) -> tuple[int, int, str, str]:
        """``(step, epoch, what went wrong, consequence)``: the first non-finite cost if there is one (its fused step
        undone by the module's ``rewind``), else the parameters, else another process."""
        first = _first_non_finite(pending)
        if first is not None:
            step, epoch, cost = first
            if isinstance(pl_module, StepCostRecord) and pl_module.rewind(step):  # a fused step: undo it and the rest
                consequence = "stopped before applying the update"
            return step, epoch, f"the training cost is {cost}", consequence
        step, epoch = updates_made(trainer, pl_module), trainer.current_epoch
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
            return step, epoch, f"the parameters are non-finite after {step} updates", consequence
        return step, epoch, "another process's cost or parameters became non-finite", consequence

    def _message(self, trainer, pl_module, step: int, epoch: int, what: str, consequence: str) -> str:
        named = list(pl_module.named_parameters())
        parts = [f"training diverged at step {step} (epoch {epoch}): {what}; {consequence}"]
        params = _non_finite("non-finite parameters", named, lambda p: p)
        if params:
            parts.append(params)
        elif named:
            name, largest = max(((n, p.detach().abs().max().item()) for n, p in named), key=lambda item: item[1])
            parts.append(
                "every parameter is finite, so the NaN or Inf came from the batch or from an overflow in the forward"
                f" pass (largest |parameter|: {name}, {largest:.3g})"
            )
        grads = _non_finite("non-finite gradients", named, lambda p: p.grad)
        if grads:
            parts.append(grads)
        groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
        lrs = sorted({group["lr"] for group in groups})
        if lrs:
            parts.append(f"learning rate {', '.join(f'{lr:g}' for lr in lrs)}: lower it (model.eta) or check the data")
        unstable = sorted({group["lr"] * group.get("weight_decay", 0.0) for group in groups} - {0.0})
        if unstable and unstable[-1] > 2:
            # w <- w - η(g + λw) = (1 - ηλ) w - ηg: for ηλ > 2 every step multiplies the weights by |1 - ηλ| > 1
            parts.append(
                f"eta * weight_decay = {unstable[-1]:g} > 2, where SGD with weight decay multiplies the weights by"
                f" |1 - eta * weight_decay| = {abs(1 - unstable[-1]):g} at every step"
            )
        saved = [path for path in checkpoint_paths(trainer).values() if path and os.path.isfile(path)]
        if saved:
            parts.append(f"checkpoints on disk, all written before the divergence: {', '.join(saved)}")
        return "; ".join(parts)


def _check_interval(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive number of steps, got {value!r}")


def _any_non_finite(costs: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    """Whether any of ``costs`` or ``params`` holds a NaN or Inf, found with at most one host-device sync."""
    if len(costs) == 1 and costs[0].numel() == 1 and not params:  # one scalar: .item() is the cheapest look
        return not math.isfinite(costs[0].item())
    # every flag computed where the tensors are, then one host-device sync for all of them
    flags = [torch.isfinite(torch.cat([c.float() for c in costs]))] if costs else []
    flags += [torch.isfinite(p).all().reshape(1) for p in params]
    return bool(not torch.cat([f.to(flags[0].device) for f in flags]).all()) if flags else False


def _first_non_finite(pending: list[tuple[int, int, torch.Tensor]]) -> tuple[int, int, float] | None:
    """``(step, epoch, cost)`` of the first non-finite cost in ``pending`` (sorted by step), or None."""
    for first_step, epoch, costs in pending:
        bad = (~torch.isfinite(costs)).nonzero()
        if len(bad):
            k = int(bad[0, 0])
            return first_step + k, epoch, costs[k].item()
    return None


def _non_finite(title: str, named: list[tuple[str, torch.Tensor]], pick) -> str:
    """``title: name (k of n values), ...`` for every tensor ``pick(param)`` holding a NaN or Inf; "" if none."""
    found = []
    for name, param in named:
        tensor = pick(param)
        if tensor is None:
            continue
        count = int((~torch.isfinite(tensor.detach())).sum())
        if count:
            found.append(f"{name} ({count} of {tensor.numel()} values)")
    return f"{title}: {', '.join(found)}" if found else ""


class AtomicCheckpointIO(TorchCheckpointIO):
    r"""``TorchCheckpointIO`` whose local writes are atomic: a checkpoint file is whole or absent, never half-written.

    ``save_checkpoint(checkpoint, path)`` writes to ``.<name>.<pid>.<random>.tmp`` in ``path``'s directory, flushes
    and fsyncs it, renames it over ``path`` (``os.replace``, atomic on POSIX and Windows) and fsyncs the directory.
    A process killed at any moment leaves either the old file or the new one at ``path``; at worst a temporary file
    remains beside it, which Lightning's ``ckpt_path="last"`` ignores (it only takes ``last*.ckpt``), and which
    the next successful save of the same ``path`` deletes. Remote paths (``s3://`` and the like) go to
    ``TorchCheckpointIO`` unchanged, which writes them through an fsspec transaction.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        if not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        # O_EXCL: never write into someone else's file; 0o666 & ~umask, like any file the user's programs create.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as file:
                self._write(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)
        for stale in target.parent.glob(f".{_glob_escape(target.name)}.*.tmp"):  # left by a killed process
            stale.unlink(missing_ok=True)

    def _write(self, checkpoint: dict[str, Any], file) -> None:
        """Serialise ``checkpoint`` into the open temporary ``file``."""
        torch.save(checkpoint, file)


def _is_local(path) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(get_filesystem(path), LocalFileSystem)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
