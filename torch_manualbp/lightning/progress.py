r"""Progress the fused path makes without an optimizer: :func:`count_updates` (``trainer.global_step`` counts SGD
updates, several per Lightning batch) and :class:`EpochCost` (the epoch's training cost, kept in checkpoints)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["EpochCost", "count_updates"]


def count_updates(trainer, updates: int) -> None:
    """Count ``updates`` SGD steps taken without an optimizer as Lightning counts ``LightningOptimizer.step()``, so
    that ``trainer.global_step`` (and the checkpoints' names) is the number of updates."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for tracker in (progress.total, progress.current):  # increment_ready() and increment_completed(), `updates` times
        tracker.ready += updates
        tracker.completed += updates


class EpochCost:
    """The training cost summed over the epoch so far (rows-weighted, as ``self.log`` averages it), kept in checkpoints
    so that a run resumed mid-epoch logs the mean over the whole epoch, not over the part after the resume. The cost
    may be one number or one per member of a population (a (K,) tensor): the sums are then per member."""

    def __init__(self) -> None:
        self.epoch, self.total, self.rows, self.resumed = -1, 0.0, 0, False
        self.logged: tuple[Tensor | float, int] = (0.0, 0)  # (total, rows) when take_unlogged() last took them

    def start(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch, not the one a checkpoint left half done
            self.epoch, self.total, self.rows, self.resumed = epoch, 0.0, 0, False
            self.logged = (0.0, 0)

    def add(self, cost: Tensor, rows: int) -> tuple[Tensor, int]:
        """Add a batch's mean ``cost`` over ``rows`` examples; return what to log for it and its weight: the batch's
        own, or on the first batch after a resume the mean over the part of the epoch before it too."""
        before, before_rows, resumed = self.total, self.rows, self.resumed
        if isinstance(before, list):  # a population's sums, as a checkpoint holds them
            before = cost.new_tensor(before)
        self.total, self.rows, self.resumed = cost.detach() * rows + before, before_rows + rows, False
        if not resumed:
            return cost, rows
        return (cost * rows + before) / (rows + before_rows), rows + before_rows

    def take_unlogged(self) -> tuple[Tensor | float, int]:
        """The mean cost of the rows added since the last call in this epoch (at the first call after a resume, the
        part of the epoch before it too) and their number, which ``self.log`` then weighs it by; marks them logged."""
        total, rows = self.total - self.logged[0], self.rows - self.logged[1]
        self.logged = (self.total, self.rows)
        return total / max(rows, 1), rows

    def state_dict(self) -> dict:
        total = self.total.tolist() if isinstance(self.total, Tensor) else float(self.total)
        return {"epoch": self.epoch, "total": total, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.total, self.rows = state.get("epoch", -1), state.get("total", 0.0), state.get("rows", 0)
        self.resumed = self.rows > 0
        self.logged = (0.0, 0)  # nothing of this epoch is logged in this process yet
