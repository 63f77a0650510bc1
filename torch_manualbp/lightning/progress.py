r"""Progress in the classifier's terms: :func:`updates_made` (SGD updates, several per Lightning batch, where
``trainer.global_step`` counts the batches) and :class:`EpochCost` (the epoch's training cost, kept in checkpoints)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["EpochCost", "updates_made"]


def updates_made(trainer, pl_module) -> int:
    """The SGD updates made so far: the module's own count (``ManualBPClassifier.updates``) where it keeps one, else
    Lightning's count of optimizer steps."""
    updates = getattr(pl_module, "updates", None)
    return trainer.global_step if updates is None else updates


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
