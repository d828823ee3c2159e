"""Folders written once into the user cache (tiny tokenizer, preview checkpoint).

A folder's name carries a digest of the whole sigma_core source, so any change to the code that
writes it (the model, the loader, the tokenizer, the attributes, the configs ...) gives a new
folder and a stale copy is never read.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent  # sigma_core/
SOURCE_SUFFIXES = (".py", ".json")


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/sigma-studio, or ~/.cache/sigma-studio."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sigma-studio"


@functools.cache
def package_digest() -> str:
    """The digest of the installed sigma_core source, computed once per process."""
    return source_digest(PACKAGE_ROOT)


def source_digest(root: Path) -> str:
    """A digest of every source and config file under ``root`` (names and bytes, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cached_folder(name: str, write: Callable[[Path], object]) -> Path:
    """The folder ``write`` fills, made once per version of the package's source.

    Concurrent first runs each write a private copy and one wins the rename; an unwritable
    cache falls back to a fresh temporary folder.
    """
    target = user_cache_dir() / f"{name}-{package_digest()}"
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    except OSError:
        fallback = Path(tempfile.mkdtemp(prefix=f"sigma-{name}-"))
        write(fallback)
        return fallback
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(target)
    except OSError:  # another run got there first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target
