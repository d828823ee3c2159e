"""The metrics' table: one row each (name, label, direction, the paper's family tables it is a
column of), read by the scorer, the report, its plots and contact sheets, so a metric is named
and ordered the same everywhere (docs/evaluation.md, "Metrics").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One metric: its key in scores.jsonl, its column label, whether higher is better, and
    the benchmark families whose paper table has it as a column."""

    name: str
    label: str
    higher_is_better: bool
    paper_families: tuple[str, ...]

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


# The paper's order: XVerseBench's columns (combine), then selective generation's (select).
METRICS: tuple[Metric, ...] = (
    Metric("clip_t", "CLIP-T", True, ("combine", "select")),
    Metric("clip_i", "CLIP-I", True, ("combine", "select")),
    Metric("dino", "DINO", True, ("combine",)),
    Metric("dreamsim", "DreamSim", True, ("combine",)),
    Metric("clip_es", "CLIP-ES", False, ("select",)),
    Metric("aes", "AES", True, ("select",)),
)
METRIC_NAMES = tuple(m.name for m in METRICS)
BY_NAME = {m.name: m for m in METRICS}


def label(name: str) -> str:
    """The metric's name as tables show it (``clip_t`` -> ``CLIP-T``)."""
    return BY_NAME[name].label


def paper_columns(family: str) -> tuple[str, ...]:
    """The metrics of the paper's table for ``family`` (empty: the paper has none)."""
    return tuple(m.name for m in METRICS if family in m.paper_families)
