"""experiments/chapter2.ipynb runs top to bottom in a fresh kernel of this interpreter, from the repository root, and
a failing cell fails the run (so this test can fail)."""

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "chapter2.ipynb"


def execute(nb):
    # the kernel must be this interpreter (the venv's), not whatever "python3" means elsewhere: the first cell says
    check = nbformat.v4.new_code_cell(f"import sys\nassert sys.executable == {sys.executable!r}, sys.executable")
    nb.cells.insert(0, check)
    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return nb


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None for cell in nb.cells if cell.cell_type == "code"
    )


def test_chapter2_notebook_executes_in_a_fresh_kernel():
    text = NOTEBOOK.read_text()
    nb = execute(nbformat.reads(text, as_version=4))
    outputs = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "BP1-BP4 agree with autograd" in outputs and "BP2 wrong at layer l = 3" in outputs
    assert NOTEBOOK.read_text() == text  # executed in memory: nothing written back


def test_a_failing_cell_fails_the_notebook_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('assert False, "planted failure"'))
    with pytest.raises(CellExecutionError, match="planted failure"):
        execute(nb)
