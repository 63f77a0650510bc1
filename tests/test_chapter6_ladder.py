"""experiments/chapter6.py's record of reduced epochs and the ensemble's curves, and experiments/ch6_figure.py's
chart and table, on tiny runs and hand-written results."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import import_experiment

TINY = ["--train-size", "100", "--eval-size", "200"]


def test_a_run_shorter_than_the_books_says_so(tmp_path, capsys):
    chapter6 = import_experiment("chapter6")
    result = chapter6.main(["--rung", "4", "--epochs", "2", *TINY, "--out", str(tmp_path)])
    assert json.loads((tmp_path / "rung4.json").read_text()) == result
    assert (result["epochs"], result["book_epochs"], result["reduced_epochs"]) == (2, 60, True)
    assert len(result["validation_accuracies_percent"]) == 2
    assert "2 epochs (reduced from the book's 60) on 100 images" in capsys.readouterr().out


def test_a_run_of_the_books_epochs_is_not_reduced(tmp_path, capsys, monkeypatch):
    chapter6 = import_experiment("chapter6")
    monkeypatch.setitem(chapter6.RUNGS, 1, dataclasses.replace(chapter6.RUNGS[1], epochs=2))  # a 2-epoch "book"
    result = chapter6.main(["--rung", "1", *TINY, "--out", str(tmp_path)])
    assert (result["epochs"], result["book_epochs"], result["reduced_epochs"]) == (2, 2, False)
    out = capsys.readouterr().out
    assert "2 epochs on 100 images" in out and "reduced" not in out


def test_the_ensemble_keeps_each_networks_validation_curve(tmp_path, capsys):
    chapter6 = import_experiment("chapter6")
    result = chapter6.main(["--rung", "8", "--epochs", "1", *TINY, "--out", str(tmp_path)])
    members = result["member_validation_accuracies_percent"]
    assert len(members) == chapter6.ENSEMBLE and all(len(curve) == 1 for curve in members)
    assert members[0] == result["validation_accuracies_percent"]  # the first network is the one reported alone
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch 0: validation")]
    assert [f"Epoch 0: validation accuracy {curve[0]:.2f}%" for curve in members] == printed


def _result(rung: int, curve: list[float], **extra) -> dict:
    return {
        "rung": rung,
        "epochs": len(curve),
        "book_test_accuracy_percent": 99.0 + rung / 100,
        "test_accuracy_percent": 98.5,
        "best_validation_accuracy_percent": max(curve),
        "best_iteration": 2 * 50 - 1,  # the second epoch's last mini-batch of 50
        "validation_accuracies_percent": curve,
        "seconds_per_epoch": 12.345,
        "train_size": 500,
        **extra,
    }


def test_the_figures_table_and_curves_from_hand_written_results(tmp_path):
    figure = import_experiment("ch6_figure")
    (tmp_path / "rung3.json").write_text(json.dumps(_result(3, [97.0, 98.25, 98.0])))  # no book_epochs: older JSON
    members = [[96.0, 97.5], [97.0, 98.5]]
    ensemble = _result(
        8,
        members[0],
        book_epochs=40,
        ensemble_test_accuracy_percent=99.1,
        member_validation_accuracies_percent=members,
    )
    (tmp_path / "rung8.json").write_text(json.dumps(ensemble))
    runs = figure.read_runs(tmp_path)
    assert list(runs) == [3, 8]
    assert figure.validation_curve(runs[8]) == [96.5, 98.0]
    assert figure.table(runs).splitlines()[2:] == [
        "| 3 | 3 of 60, reduced | 98.50% | 99.03% | 98.25% (epoch 1) | 12.3 |",
        "| 8 | 2 of 40, reduced | 99.10% | 99.08% | the vote of the networks' last epochs | 12.3 |",
    ]
    figure.main(["--results", str(tmp_path), "--out", str(tmp_path / "chart.png")])
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figure_refuses_a_folder_without_results(tmp_path):
    figure = import_experiment("ch6_figure")
    with pytest.raises(ValueError, match="folder: no rung"):
        figure.read_runs(tmp_path)
    (tmp_path / "rung1.json").write_text(json.dumps({"rung": 1}))
    with pytest.raises(ValueError, match="folder: .*rung1.json is not a chapter6.py result"):
        figure.read_runs(tmp_path)
