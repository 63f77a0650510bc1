"""The package reaches Lightning through its public API: no private Lightning name is imported, overridden or
touched (issue 26: Lightning counts the classifier's batches itself, one LightningOptimizer.step() each, and the
data module keeps its epoch in its own state_dict), and the scan that says so finds a planted use.

What counts as a Lightning private name: an identifier starting with one underscore (not a dunder) that Lightning's
own source defines (a function, method, class or attribute set on ``self``), found by parsing the installed
``lightning`` package; and the attributes of Lightning's loops (``fit_loop``, ``epoch_loop``, their progress
trackers), which are private classes' state though their names have no underscore."""

from __future__ import annotations

import ast
import importlib
import inspect
from functools import cache
from pathlib import Path
from types import FunctionType

import lightning

PACKAGE = Path(__file__).resolve().parents[1] / "torch_manualbp"
LOOP_STATE = {
    "fit_loop",
    "epoch_loop",
    "manual_optimization",
    "optim_step_progress",
    "epoch_progress",
    "batch_progress",
}


@cache
def lightning_private_names() -> frozenset[str]:
    names = set()
    for path in Path(lightning.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return frozenset(name for name in names if name.startswith("_") and not name.startswith("__"))


@cache
def package_names() -> frozenset[str]:
    """The names the package defines itself: its functions, methods and classes, and what it sets on ``self``."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return frozenset(names)


def uses(path: Path) -> set[str]:
    """Lightning private names that ``path`` imports from Lightning or reaches as an attribute of anything but its
    own ``self``/``cls``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    private = lightning_private_names()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("lightning", "pytorch_lightning")):
            found |= {alias.name for alias in node.names if alias.name in private}
        elif isinstance(node, ast.Attribute):
            owner_is_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            # on self: a private name the package does not define itself is a Lightning base class's (LightningCLI._get)
            ours = owner_is_self and node.attr in package_names()
            if node.attr in LOOP_STATE or (node.attr in private and not ours):
                found.add(node.attr)
    return found


def overrides(module_name: str) -> set[str]:
    """Private methods that the classes of ``module_name`` define over a Lightning base class's own."""
    module = importlib.import_module(module_name)
    found = set()
    for cls in vars(module).values():
        if not (inspect.isclass(cls) and cls.__module__ == module_name):
            continue
        bases = [base for base in cls.__mro__[1:] if base.__module__.startswith(("lightning", "pytorch_lightning"))]
        found |= {
            name
            for name, value in vars(cls).items()
            if name.startswith("_")
            and not name.startswith("__")
            and isinstance(value, (FunctionType, property, staticmethod, classmethod))  # not ABCMeta's _abc_impl
            and any(name in vars(base) for base in bases)
        }
    return found


def test_lightning_private_names_are_found_by_this_scan():
    # the scan itself must see the names it looks for (a Lightning release that renamed them would empty the set)
    assert {"_run_subcommand", "_batches_that_stepped", "_global_add_class_path"} <= lightning_private_names()


def test_the_package_touches_no_private_lightning_name():
    # the core never imports Lightning (test_layout); its files' private names are torch's or its own
    files = sorted((PACKAGE / "lightning").rglob("*.py")) + [PACKAGE / "cli.py"]
    found = set()
    for path in files:
        relative = path.relative_to(PACKAGE).as_posix()
        module_name = "torch_manualbp." + relative.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        found |= {f"{relative}: {name}" for name in uses(path) | overrides(module_name)}
    assert found == set()


def test_the_scan_finds_an_override_of_a_private_lightning_method_and_a_call_of_one(tmp_path, monkeypatch):
    # a planted module overriding LightningCLI._run_subcommand, as this package once did, is caught
    (tmp_path / "planted_cli.py").write_text(
        "from lightning.pytorch.cli import LightningCLI\n"
        "class CLI(LightningCLI):\n"
        "    def _run_subcommand(self, subcommand):\n"
        "        super()._run_subcommand(subcommand)\n"
        "    def before_fit(self):\n"
        "        self._get(self.config, 'trainer')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert overrides("planted_cli") == {"_run_subcommand"}
    assert uses(tmp_path / "planted_cli.py") == {"_run_subcommand", "_get"}  # a private method called on self too


def test_halve_eta_on_plateau_keeps_the_state_key_lightning_gives_it_so_old_checkpoints_resume():
    from torch_manualbp.lightning.rules import HalveEtaOnPlateau

    rule = HalveEtaOnPlateau(monitor="val/cost", mode="min")
    assert rule.state_key == rule._generate_state_key(monitor="val/cost", mode="min")
