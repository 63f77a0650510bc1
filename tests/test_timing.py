"""torch_manualbp.testing.timing, which every benchmark and timed experiment measures through: the order contenders
run in, how many calls it makes, what it returns. No assertion on how fast anything is."""

import pytest

from torch_manualbp.testing import timing
from torch_manualbp.testing.timing import alternating, interleaved, machine_info


def test_alternating_runs_the_names_forwards_then_backwards():
    assert list(alternating(["a", "b", "c"], 3)) == [
        (0, "a"),
        (0, "b"),
        (0, "c"),
        (1, "c"),
        (1, "b"),
        (1, "a"),
        (2, "a"),
        (2, "b"),
        (2, "c"),
    ]


def test_interleaved_makes_the_warm_up_and_the_given_calls_per_sample_and_nothing_else():
    order = []
    contenders = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    samples, calls = interleaved(contenders, repeats=4, warmup=2, calls={"a": 3, "b": 1})
    assert calls == {"a": 3, "b": 1}
    assert {name: len(s) for name, s in samples.items()} == {"a": 4, "b": 4}
    # warm-up a a b b, then samples a×3 b, b a×3, a×3 b, b a×3
    assert order == ["a", "a", "b", "b"] + (["a"] * 3 + ["b"] + ["b"] + ["a"] * 3) * 2


def test_interleaved_reports_seconds_per_call_not_per_sample(monkeypatch):
    # a clock that only the contenders move: "a" takes exactly 1 s a call, "b" 0.25 s
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def advance(seconds):
        now[0] += seconds

    samples, _ = interleaved(
        {"a": lambda: advance(1.0), "b": lambda: advance(0.25)}, repeats=3, warmup=1, calls={"a": 3, "b": 8}
    )
    assert samples == {"a": [1.0] * 3, "b": [0.25] * 3}


def test_interleaved_finds_enough_calls_to_fill_a_sample():
    counter = {"n": 0}

    def tick():
        counter["n"] += 1

    _, calls = interleaved({"tick": tick}, repeats=1, min_sample_s=0.005, warmup=0)
    assert calls["tick"] > 1  # one call of an empty function lasts far less than 5 ms


@pytest.mark.parametrize("calls", [{"c": 1}, {"a": 0}, {"a": 1.5}])
def test_interleaved_refuses_calls_that_name_no_contender_or_are_not_positive_ints(calls):
    with pytest.raises(ValueError, match="calls"):
        interleaved({"a": lambda: None}, repeats=1, calls=calls)


def test_machine_info_names_what_the_numbers_depend_on():
    import torch

    info = machine_info()
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert info["cores"] >= 1
