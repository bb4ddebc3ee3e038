"""The architecture's rules, as import contracts (``[tool.importlinter]`` in pyproject.toml).

import-linter checks the layers (files -> storage -> backends -> model ->
generation -> harness -> CLI), that nothing but the harness and the CLI
imports ``lumi.bench``, that readers import neither the model nor a backend
nor a tokenizer, that backends import neither the model nor the harness, and
that no package's modules import each other in a cycle. A module-level cycle
check (grimp's graph, lazy imports included) covers what sibling packages
cannot show: a package and its own modules. Each rule is also shown to fail
when a forbidden import is planted in a copy of the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

importlinter = pytest.importorskip("importlinter", reason="import-linter (in the test extra) is not installed")
grimp = pytest.importorskip("grimp")

import lumi  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(lumi.__file__).parent


def lint(config: Path, package_parent: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``lumi`` found in ``package_parent``, in a fresh process (grimp reads the files)."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=package_parent, env=env, capture_output=True, text=True,
                          timeout=300)


def module_cycles(package_parent: Path) -> list[list[str]]:
    """Every strongly connected set of two or more ``lumi`` modules (each imports the next, round to the first)."""
    code = f"""
import sys
sys.path.insert(0, {str(package_parent)!r})
import grimp
graph = grimp.build_graph("lumi", cache_dir=None)
modules = sorted(graph.modules)
edges = {{m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}}
index, low, stack, on, out, counter = {{}}, {{}}, [], set(), [], [0]
def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        part = []
        while True:
            w = stack.pop(); on.discard(w); part.append(w)
            if w == v:
                break
        if len(part) > 1:
            out.append(sorted(part))
sys.setrecursionlimit(10000)
for m in modules:
    if m not in index:
        visit(m)
print(repr(out))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return eval(result.stdout)


@pytest.fixture(scope="module")
def copy_of_lumi(tmp_path_factory):
    """A copy of the installed package and the project's pyproject.toml, to plant forbidden imports in."""
    parent = tmp_path_factory.mktemp("copy")
    shutil.copytree(PACKAGE, parent / "lumi", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", parent / "pyproject.toml")
    return parent


def plant(path: Path, line: str):
    """Add an import to a module of the copy; returns a function that takes it out again."""
    original = path.read_text()
    path.write_text(original + f"\n{line}\n")
    return lambda: path.write_text(original)


def test_the_import_contracts_hold():
    result = lint(ROOT / "pyproject.toml", PACKAGE.parent)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_imports_itself_round_a_cycle():
    assert module_cycles(PACKAGE.parent) == []


@pytest.mark.parametrize("module, line, broken", [
    ("model/ops.py", "from ..bench import runner", "nothing outside lumi.bench imports the harness"),
    ("formats/llama2c.py", "from ..model.ops import rope_tables", "formats never import the model"),
    ("backends/cuda/kernels.py", "from ...bench import env", "they import neither the model nor the harness"),
    ("formats/gguf.py", "from ..tokenizer import Llama2cTokenizer", "lumi flows one way"),
    ("backends/numba/ops.py", "from ..cuda import storage", "backends are independent of each other"),
])
def test_a_forbidden_import_breaks_its_contract(copy_of_lumi, module, line, broken):
    undo = plant(copy_of_lumi / "lumi" / module, line)
    try:
        result = lint(copy_of_lumi / "pyproject.toml", copy_of_lumi)
    finally:
        undo()
    assert result.returncode == 1, result.stdout[-4000:]
    report = result.stdout.split("Broken contracts")[-1]
    assert broken in " ".join(report.split()), report[-4000:]


def test_a_planted_cycle_is_found(copy_of_lumi):
    undo = plant(copy_of_lumi / "lumi" / "backends" / "numba" / "constants.py", "from . import kernels  # noqa")
    try:
        cycles = module_cycles(copy_of_lumi)
    finally:
        undo()
    assert ["lumi.backends.numba.constants", "lumi.backends.numba.kernels"] in cycles
