"""The package's layout as docs/internals.md states it: imports go one way, down the Layout list, and the core
imports no Lightning."""

import ast
import re
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "torch_manualbp"


def subpackages() -> list[str]:
    """The package's folders that are packages themselves (``lightning``, ``check``, ...)."""
    return sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def module_name(path) -> str:
    """The entry of the Layout list that ``path`` belongs to: its subpackage's name, or its own stem."""
    return path.stem if path.parent == PACKAGE else path.parent.name


def layout_order() -> list[str]:
    """The package's modules in the order the Layout section of docs/internals.md lists them (``lightning`` for the
    subpackage)."""
    text = (ROOT / "docs" / "internals.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("- "):
            head = line.split(":", 1)[0]  # the names before the colon; the description may name others
            names += re.findall(r"`torch_manualbp/(\w+)(?:\.py|/)`", head)
    return names


def package_imports(path) -> set[str]:
    """The package's modules that ``path`` imports, at module level or inside functions (``lightning`` for any of
    the subpackage's)."""
    tree = ast.parse(path.read_text())
    inside = [] if path.parent == PACKAGE else [path.parent.name]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "torch_manualbp":
                    continue
                target = parts[1:]
            else:
                # from . / from .. relative to the file's package
                base = list(inside)
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # from . import a, b
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "torch_manualbp" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_the_layout_section_lists_every_module_of_the_package_once():
    order = layout_order()
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | set(subpackages())
    assert sorted(order) == sorted(modules), "docs/internals.md's Layout section and torch_manualbp/ disagree"


def test_each_module_imports_only_modules_listed_above_it():
    # hence no import cycle: every import points up the list
    order = layout_order()
    rank = {name: i for i, name in enumerate(order)}
    wrong = []
    for path in [*PACKAGE.glob("*.py"), *PACKAGE.glob("*/*.py")]:
        if path.stem == "__init__" and path.parent == PACKAGE:
            continue  # the package's __init__ gathers the public names of any of them
        me = module_name(path)
        for target in package_imports(path) - {me}:
            if rank[target] >= rank[me]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}, listed below it")
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_no_lightning():
    core = [f"torch_manualbp.{name}" for name in layout_order() if name not in ("lightning", "cli")]
    core += [
        f"torch_manualbp.{name}.{p.stem}"
        for name in subpackages()
        if name != "lightning"
        for p in (PACKAGE / name).glob("*.py")
        if p.stem != "__init__"
    ]
    code = (
        f"import sys, importlib\nfor name in {core!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
