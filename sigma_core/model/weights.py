"""Checking a checkpoint's tensors against a model from the file headers, before loading any.

Both the LLM loader and the VAE loader go through :func:`check_tensors`, so a wrong file is
refused the same way: every missing, unexpected and misshapen tensor named, nothing read.
Only safetensors files are accepted; nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from safetensors import SafetensorError, safe_open

from sigma_core.errors import CheckpointError

Shapes = Mapping[str, tuple[int, ...]]
MAX_LISTED = 8


def header_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape from a safetensors header alone (no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({e}). Only .safetensors checkpoints are "
            "accepted."
        ) from None


def check_tensors(found: Shapes, expected: Shapes, *, source: str, hint: str = "") -> None:
    """Refuse ``found`` unless its keys and shapes are exactly ``expected``'s.

    The message lists (up to eight of each) the missing tensors, the unexpected ones and the
    wrong shapes, then ``hint``: what the file should be.
    """
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = sorted(
        f"{k}: checkpoint shape {list(found[k])} but the model expects {list(expected[k])}"
        for k in expected.keys() & found.keys()
        if tuple(found[k]) != tuple(expected[k])
    )
    problems = [
        f"{label}: {listed(items, sep=sep)}"
        for label, items, sep in (
            ("missing tensors", missing, ", "),
            ("unexpected tensors", unexpected, ", "),
            ("wrong shape", wrong, "; "),
        )
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{source}: the tensors do not fit the model:\n"
            + "\n".join(problems)
            + (f"\n{hint}" if hint else "")
        )


def listed(items: Iterable[str], limit: int = MAX_LISTED, *, sep: str = ", ") -> str:
    """The first ``limit`` items, joined by ``sep``, and how many more there are."""
    items = list(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more
