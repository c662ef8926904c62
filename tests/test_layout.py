"""The house: no import cycle between modules or between packages (function-level imports
counted), and no function over 60 lines or file over 400."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "modelfactory"
MAX_FUNCTION, MAX_FILE = 60, 400


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


def _imported(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere (inside functions too)."""

    def known(dotted: str) -> str | None:  # the module itself, or the package holding it
        while dotted not in modules and "." in dotted:
            dotted = dotted.rsplit(".", 1)[0]
        return dotted if dotted in modules else None

    here = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            out.update(known(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:  # `from . import _format` imports the submodule
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else known(target))
    out.discard(None)
    out.discard(name)
    return out  # type: ignore[return-value]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    part = stack[stack.index(node) :]
                    del stack[stack.index(node) :]
                    if len(part) > 1:
                        out.append(sorted(part))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return out


def _unit(module: str) -> str:
    """The package (``modelfactory.checkpoint``) or top-level module a module belongs to."""
    return ".".join(module.split(".")[:2])


def test_no_module_imports_one_that_imports_it() -> None:
    modules = _modules()
    edges = {name: _imported(name, file, modules) for name, file in modules.items()}
    assert _cycles(edges) == []
    units: dict[str, set[str]] = {}
    for name, targets in edges.items():
        units.setdefault(_unit(name), set()).update(
            _unit(t) for t in targets if _unit(t) != _unit(name)
        )
    assert _cycles(units) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("folder", ["modelfactory", "tests", "benchmarks"])
def test_no_function_over_60_lines_and_no_file_over_400(folder: str) -> None:
    long = []
    for file in sorted((ROOT / folder).rglob("*.py")):
        text = file.read_text()
        if len(text.splitlines()) > MAX_FILE:
            long.append(f"{file.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    long.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert long == []
