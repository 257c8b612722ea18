"""The folder map is the pipeline: no module imports a later stage, and no modules import each other.

Imports are read with ``ast`` from the source (function-level imports included), and so are
string constants naming a module of the package (the registries import their entries by
name), so a lazy import cannot hide a back edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "infoq_deploy"
# Where each part of the package stands; a module may import only its own rank or lower.
RANKS = {
    "core": 0,
    "importing": 1, "models": 1,
    "data": 2,
    "profile": 3,
    "allocate": 4,
    "quantize": 5,
    "export": 6,
    "backends": 7,
    "verify": 8,
    "report": 9,
    "stages": 10, "pipeline": 10, "measure_target": 10,  # the Python API, the whole run, a target measured on a model
    "commands": 11, "cli": 11, "__main__": 11,  # the command line
}
# The default model's training recipe: a script that uses the data stage, imported by nothing.
SCRIPTS = {f"{PACKAGE}.models.train_fashion_cnn"}
TOP = max(RANKS.values())


def package_files() -> dict[str, Path]:
    """Module name -> source file, with ``models/`` shipped as ``infoq_deploy.models``."""
    files = {}
    for base, prefix in ((ROOT / PACKAGE, PACKAGE), (ROOT / "models", f"{PACKAGE}.models")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    return files


def rank(module: str) -> int:
    if module in SCRIPTS:
        return TOP
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package's face: __version__ only
    return RANKS[parts[1]]


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """Modules of the package that ``module`` (at ``path``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # `from pkg.mod import function`: the module is pkg.mod
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            found.add(node.value)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = package_files()
    known = set(files)
    return {module: imports_of(path, module, known) for module, path in files.items()}


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (rank {rank(a)}) imports {b} (rank {rank(b)})"
                  for a, targets in graph.items() for b in targets if rank(b) > rank(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_stage():
    unplaced = [m for m in package_files() if m not in SCRIPTS and len(m.split(".")) > 1
                and m.split(".")[1] not in RANKS]
    assert not unplaced, f"modules outside every stage (add them to a stage's folder): {unplaced}"


def test_no_module_imports_a_later_stage():
    assert back_edges(import_graph()) == []


def test_no_modules_import_each_other():
    assert cycles(import_graph()) == []


def test_nothing_imports_the_command_line_or_the_recipe():
    graph = import_graph()
    offenders = sorted(f"{a} imports {b}" for a, targets in graph.items() for b in targets
                       if (b in SCRIPTS or rank(b) == TOP) and rank(a) < TOP)
    assert offenders == []


def test_the_checks_can_fail(tmp_path):
    """The reader sees lazy, relative and by-name imports, and the checks flag what they must."""
    known = {f"{PACKAGE}.core.errors", f"{PACKAGE}.profile.infoq", f"{PACKAGE}.stages"}
    src = tmp_path / "errors.py"
    src.write_text("def f():\n    from ..stages import run\n"
                   "MOD = 'infoq_deploy.profile.infoq'\n")
    seen = imports_of(src, f"{PACKAGE}.core.errors", known)
    assert seen == {f"{PACKAGE}.stages", f"{PACKAGE}.profile.infoq"}
    graph = {f"{PACKAGE}.core.errors": seen, f"{PACKAGE}.stages": {f"{PACKAGE}.core.errors"}}
    assert len(back_edges(graph)) == 2
    assert cycles(graph) == [[f"{PACKAGE}.core.errors", f"{PACKAGE}.stages"]]


SUB_PACKAGES = sorted(p.parent.name for p in (ROOT / PACKAGE).glob("*/__init__.py"))


def test_the_stages_are_folders():
    assert set(SUB_PACKAGES) == {k for k in RANKS if (ROOT / PACKAGE / k).is_dir()} != set()


@pytest.mark.parametrize("package", SUB_PACKAGES)
def test_sub_packages_are_only_a_docstring(package):
    """A sub-package's __init__ imports nothing, so importing one stage never pulls in another."""
    body = ast.parse((ROOT / PACKAGE / package / "__init__.py").read_text()).body
    assert all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in body), package
