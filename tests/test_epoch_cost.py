"""The training cost an epoch logs once is the rows-weighted mean of its batches' costs, however many times it is
taken (Lightning weighs each logged value by its rows) and across a resume from a checkpoint."""

import torch

from torch_manualbp.lightning.progress import EpochCost

BATCHES = [(0.5, 100), (0.25, 100), (1.0, 50), (0.125, 30)]
MEAN = sum(cost * rows for cost, rows in BATCHES) / sum(rows for _, rows in BATCHES)  # in float64, by hand


def _weighted(taken) -> float:
    return sum(float(mean) * rows for mean, rows in taken) / sum(rows for _, rows in taken)


def test_taken_once_at_the_end_it_is_the_rows_weighted_mean_of_the_batches():
    cost = EpochCost()
    cost.start(0)
    for value, rows in BATCHES:
        cost.add(torch.tensor(value), rows)
    mean, rows = cost.take_unlogged()
    assert rows == 280 and abs(float(mean) - MEAN) < 1e-7


def test_taken_twice_in_an_epoch_the_parts_weigh_up_to_the_whole_and_a_new_epoch_starts_afresh():
    cost = EpochCost()
    cost.start(0)
    taken = []
    for k, (value, rows) in enumerate(BATCHES):
        cost.add(torch.tensor(value), rows)
        if k in (1, 3):
            taken.append(cost.take_unlogged())
    assert [rows for _, rows in taken] == [200, 80] and abs(_weighted(taken) - MEAN) < 1e-7
    cost.start(1)
    cost.add(torch.tensor(2.0), 10)
    assert cost.take_unlogged() == (torch.tensor(2.0), 10)


def test_after_a_resume_the_first_take_holds_the_part_of_the_epoch_before_it():
    before = EpochCost()
    before.start(3)
    for value, rows in BATCHES[:2]:
        before.add(torch.tensor(value), rows)
    before.take_unlogged()  # logged in the process that was then stopped: lost with it
    resumed = EpochCost()
    resumed.load_state_dict(before.state_dict())
    resumed.start(3)  # the same epoch: kept
    for value, rows in BATCHES[2:]:
        resumed.add(torch.tensor(value), rows)
    mean, rows = resumed.take_unlogged()
    assert rows == 280 and abs(float(mean) - MEAN) < 1e-7
