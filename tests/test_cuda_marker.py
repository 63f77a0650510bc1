"""Every test that puts a tensor or a run on a CUDA device carries the ``cuda`` marker (pyproject.toml), so that
``pytest -m cuda`` (benchmarks/cuda_check.sh, on a machine lent a GPU) runs all of them, and skips without a device."""

import ast

from conftest import ROOT


def mentions_cuda(function: ast.AST) -> bool:
    """Whether the function's code (not its comments) names the CUDA device: a ``"cuda"`` string, ``.cuda()``."""
    for node in ast.walk(function):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cuda"):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "cuda" and not _is_torch_cuda_module(node):
            return True
    return False


def _is_torch_cuda_module(node: ast.Attribute) -> bool:
    # torch.cuda.is_available() in a skip condition names the module, not the device
    return isinstance(node.value, ast.Name) and node.value.id == "torch"


def has_cuda_marker(function: ast.FunctionDef) -> bool:
    return any(ast.unparse(decorator) == "pytest.mark.cuda" for decorator in function.decorator_list)


def test_every_test_that_runs_on_cuda_is_marked_cuda_and_only_those():
    unmarked, marked_without_cuda, count = [], [], 0
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                uses, marked = mentions_cuda(node), has_cuda_marker(node)
                count += marked
                if uses and not marked:
                    unmarked.append(f"{path.name}::{node.name}")
                if marked and not uses:
                    marked_without_cuda.append(f"{path.name}::{node.name}")
    assert not unmarked, f"tests on CUDA without @pytest.mark.cuda: {unmarked}"
    assert not marked_without_cuda, f"marked cuda but run no CUDA code: {marked_without_cuda}"
    assert count >= 7  # the suite's CUDA test functions when this test was written
