"""The package's layering, checked from its source: no import circle, no private module used across packages.

A circle makes import order matter and hides which layer owns a name; a
``from autocompress.x._y import`` outside package ``x`` couples callers to a
module its package does not promise to keep. Both are read from the AST, so
imports inside functions count too, and a name a package loads lazily counts
as an import of the module that defines it. Imports under ``if
TYPE_CHECKING:`` (annotations only) never run and do not count.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autocompress"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module ``name`` refers to (an attribute's module for ``from m import attr``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``, which never runs (annotations only)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _lazy_target(name: str) -> str:
    """``autocompress.pkg.name`` -> the module defining ``name`` when ``pkg`` loads it lazily (``autocompress._lazy``)."""
    package, _, attribute = name.rpartition(".")
    if package in MODULES and MODULES[package].name == "__init__.py" and "lazy_exports" in MODULES[package].read_text():
        exports = getattr(getattr(importlib.import_module(package), "__getattr__", None), "exports", {})
        if attribute in exports:
            return f"{package}.{exports[attribute]}"
    return name


def _imports(module: str) -> list[tuple[str, int]]:
    """Every ``autocompress`` name ``module`` imports at run time, absolute, with its line."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            found += [(base, node.lineno)] + [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name == "autocompress" or name.startswith("autocompress.")]


def import_graph() -> dict[str, set[str]]:
    """Module -> modules it imports, with the packages Python imports on the way (``a.b.c`` runs ``a.b``'s ``__init__``).

    A module's own enclosing packages are no edge: Python has them loaded, or
    loading, before the module runs.
    """
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module in MODULES:
        for name, _ in _imports(module):
            target = _resolve(_lazy_target(name))
            while target and target != "autocompress":
                if target != module and not module.startswith(target + "."):
                    graph[module].add(target)
                target = target.rpartition(".")[0]
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def private_crossings() -> list[str]:
    """``path:line imports name`` for every private module or name reached from outside the package that owns it."""
    found = []
    for module in MODULES:
        for name, line in _imports(module):
            parts = name.split(".")
            private = next((depth for depth, part in enumerate(parts) if part.startswith("_") and not part.startswith("__")), None)
            if private is None:
                continue
            owner = ".".join(parts[:private])  # the package whose modules may use the private part
            if not (module == owner or module.startswith(owner + ".")):
                crossing = f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {'.'.join(parts[: private + 1])}"
                found += [crossing] if crossing not in found else []
    return found


def test_the_package_has_no_import_circle():
    assert circles(import_graph()) == []


def test_no_private_module_or_name_is_imported_from_outside_its_package():
    assert private_crossings() == []


def test_the_checks_find_a_circle_and_a_private_crossing(tmp_path, monkeypatch):
    """The two checks above would fail on a real circle and a real crossing, not pass vacuously."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    fake = tmp_path / "autocompress"
    (fake / "runtime").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "runtime" / "__init__.py").write_text("from autocompress.runtime._lower import lower\n")
    (fake / "runtime" / "_lower.py").write_text("from autocompress.space import SPACE\n")
    (fake / "space.py").write_text("import json\n\ndef f():\n    from autocompress.runtime._lower import _digest\n")
    (fake / "cli.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from autocompress.runtime._lower import Lowering\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", fake)
    monkeypatch.setattr(this, "MODULES", _modules())
    assert private_crossings() == ["autocompress/space.py:4 imports autocompress.runtime._lower"]
    assert circles(import_graph()) == [["autocompress.runtime", "autocompress.runtime._lower", "autocompress.space"]]


@pytest.mark.parametrize("verb", ["search", "compress", "measure", "export", "load_config", "Policy"])
def test_each_verb_is_a_package_attribute_that_no_submodule_shadows(verb):
    """``autocompress.search`` is the function; a submodule of that name would replace it once imported."""
    import autocompress

    assert callable(getattr(autocompress, verb)) and verb in autocompress.__all__
    assert not (PACKAGE / f"{verb}.py").exists() and not (PACKAGE / verb).is_dir(), f"autocompress.{verb} is also a submodule"


def test_the_job_commands_load_neither_torch_nor_the_runtimes():
    """``status``, ``logs``, ``jobs``, ``stop`` and ``gc`` are typed while a search runs: torch would cost each seconds of its cores."""
    import subprocess

    modules = ["autocompress.cli", "autocompress.controller.jobs", "autocompress.controller.progress",
               "autocompress.controller.retention", "autocompress.controller.study"]  # fmt: skip
    heavy = ("torch", "transformers", "onnxruntime", "ray")
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
