"""The shape of the tree: no import circles, a small typed public API, short files, few
complex functions. Each is measured the way the consolidation issue measured it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sigma_core
from sigma_core import frontend
from sigma_core.lazy import typed_exports

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 600  # no source file (tests and benchmarks included) is longer
MAX_C_RANKED = 20  # functions ranked C by radon in sigma_core and studio (32 before, 18 after)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, type-hint imports included (each name resolved to
    the longest known module it lies in)."""

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found |= {resolve(f"{base}.{a.name}") or resolve(base) for a in node.names}
    return {m for m in found if m}


def _graph() -> dict[str, set[str]]:
    files = {
        _module_name(p): p
        for top in ("sigma_core", "studio")
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    known = set(files)
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(path, package, known) - {name}
    return graph


def test_no_two_modules_import_each_other():
    """No circle of two files, type-hint imports included (a package and the modules it
    re-exports are one unit: its __init__ imports them by design)."""
    graph = _graph()
    circles = sorted(
        f"{a} <-> {b}"
        for a, deps in graph.items()
        for b in deps
        if a < b and a in graph.get(b, ()) and not b.startswith(f"{a}.")
    )
    assert not circles, circles


def test_the_circle_finder_finds_a_circle(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import X\n")
    assert _imports(a, "pkg", {"pkg.a", "pkg.b"}) == {"pkg.b"}
    a.write_text("from .b import X\nimport pkg.c.d\n")
    assert _imports(a, "pkg", {"pkg.a", "pkg.b", "pkg.c"}) == {"pkg.b", "pkg.c"}


def test_the_public_api_is_small_typed_and_lazy():
    assert 15 <= len(sigma_core.__all__) <= 25, sigma_core.__all__
    for module in (sigma_core, frontend):
        source = Path(module.__file__).read_text(encoding="utf-8")
        assert sorted(typed_exports(source)) == sorted(module.__all__)  # one list, typed
        assert all(getattr(module, name) is not None for name in module.__all__)
    assert not set(frontend.__all__) & (set(sigma_core.__all__) - {"ATTRIBUTES"})


def test_typed_exports_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match=r"only 'from package\.module import name'"):
        typed_exports("if TYPE_CHECKING:\n    import os\n")
    assert typed_exports("if TYPE_CHECKING:\n    from a.b import C as C, d\n") == {
        "C": "a.b",
        "d": "a.b",
    }


def test_no_source_file_is_over_600_lines():
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for top in ("sigma_core", "studio", "tests", "benchmarks", "scripts")
        for p in (ROOT / top).rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not long, long
    assert len((ROOT / "sigma_core/runtime/pipeline.py").read_text().splitlines()) < 250
    assert len((ROOT / "sigma_core/cli.py").read_text().splitlines()) < 350


def test_few_functions_are_complex():
    from radon.complexity import cc_rank, cc_visit

    ranked_c = [  # as `radon cc` lists them: functions, classes and their methods
        f"{p.relative_to(ROOT)} {b.fullname}"
        for top in ("sigma_core", "studio")
        for p in (ROOT / top).rglob("*.py")
        for top_block in cc_visit(p.read_text(encoding="utf-8"))
        for b in (top_block, *getattr(top_block, "methods", ()))
        if cc_rank(b.complexity) == "C"
    ]
    assert len(ranked_c) <= MAX_C_RANKED, ranked_c
