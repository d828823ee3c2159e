"""Packages whose names load on first use, so importing one costs nothing it does not need
(``validate`` must answer without torch; ``generate`` must refuse a bad device before diffusers
loads), while type checkers and editors still see every public name with its type.

A lazy package lists its public names once, as ordinary imports inside ``if TYPE_CHECKING:``.
Type checkers read that block as it is; at run time :func:`lazy_package` reads the same block
from the package's source (no second table to keep in step) and imports each name's module when
the name is first used.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def typed_exports(source: str) -> dict[str, str]:
    """Public name -> defining module, from the module-level ``if TYPE_CHECKING:`` block of a
    package's ``source`` (absolute ``from module import name`` lines only)."""
    exports: dict[str, str] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"):
            continue
        for stmt in node.body:
            if not isinstance(stmt, ast.ImportFrom) or stmt.level or stmt.module is None:
                raise ValueError(f"line {stmt.lineno}: only 'from package.module import name'")
            for alias in stmt.names:
                exports[alias.asname or alias.name] = stmt.module
    return exports


def lazy_package(
    package: str,
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__all__``, ``__getattr__`` and ``__dir__`` from its TYPE_CHECKING block:
    each name is imported from its module when first used, then kept on the package."""
    module = sys.modules[package]
    exports = typed_exports(Path(module.__file__ or "").read_text(encoding="utf-8"))

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(exports))

    return sorted(exports), __getattr__, __dir__
