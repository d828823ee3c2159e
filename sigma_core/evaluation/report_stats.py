"""The numbers of a report: per arm and metric the mean, its standard error and the count,
over all items and per benchmark family, laid out as the paper's ablation table.

The standard error is that of the mean over the n scored images of an arm (items x seeds):
the sample standard deviation (ddof=1) over sqrt(n); none for n < 2. An image without a score
line, or with null for a metric that was scored, is counted as missing, never dropped silently.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sigma_core.errors import SigmaInputError
from sigma_core.evaluation.benchmark import FAMILIES
from sigma_core.evaluation.metrics import BY_NAME, METRIC_NAMES, paper_columns
from sigma_core.evaluation.report_inputs import Run

FAMILY_TITLES = {
    "combine": "combine: combinatorial generation (the paper's XVerseBench table)",
    "select": "select: selective generation (the paper's selection table)",
}
# The paper's numbers (docs/sigma-facts: Reported results), for scale only.
PAPER_ROWS = {
    "combine": {
        "SIGMA (paper)": {"clip_t": 31.96, "clip_i": 75.57, "dino": 59.52, "dreamsim": 67.87},
        "BAGEL (paper)": {"clip_t": 24.32, "clip_i": 66.32, "dino": 56.13, "dreamsim": 53.31},
    },
    "select": {
        "SIGMA (paper)": {"clip_t": 25.90, "clip_i": 80.26, "clip_es": 58.02, "aes": 5.849},
        "BAGEL (paper)": {"clip_t": 23.49, "clip_i": 70.61, "clip_es": 67.90, "aes": 5.209},
    },
}


@dataclass(frozen=True)
class Stat:
    """A mean over ``n`` values and its standard error (None when n < 2; mean None when 0)."""

    mean: float | None
    se: float | None
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "se": self.se, "n": self.n}


def stat(values: Sequence[float]) -> Stat:
    """Mean and standard error of the mean: stdev with ddof=1, over sqrt(n)."""
    n = len(values)
    if n == 0:
        return Stat(None, None, 0)
    mean = math.fsum(values) / n
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return Stat(mean, se, n)


@dataclass(frozen=True)
class Table:
    """Rows = arms, columns = metrics, as the paper's ablation table."""

    title: str
    family: str | None  # None: all items
    arms: tuple[str, ...]
    metrics: tuple[str, ...]
    cells: dict[str, dict[str, Stat]]  # arm -> metric -> Stat

    def best(self, metric: str) -> set[str]:
        """The arms with the best mean in ``metric`` (ties all), when two or more have one."""
        means = {a: m for a in self.arms if (m := self.cells[a][metric].mean) is not None}
        if len(means) < 2:
            return set()
        top = (max if BY_NAME[metric].higher_is_better else min)(means.values())
        return {a for a, m in means.items() if m == top}

    def delta(self, arm: str, metric: str) -> float | None:
        """``arm``'s mean minus the first arm's (the full model), when both have one."""
        mine, first = self.cells[arm][metric].mean, self.cells[self.arms[0]][metric].mean
        return None if mine is None or first is None else mine - first

    def to_json(self) -> dict[str, Any]:
        return {
            arm: {metric: self.cells[arm][metric].to_json() for metric in self.metrics}
            for arm in self.arms
        }


@dataclass(frozen=True)
class Scored:
    """One scores.jsonl line under its arm's report name."""

    arm: str
    family: str
    values: dict[str, float | None]


@dataclass(frozen=True)
class Results:
    """Everything a report shows, computed once: the scored images, the arms in order, the
    metrics with a value somewhere, why the others have none, and the images per arm."""

    arms: tuple[str, ...]
    scored: tuple[Scored, ...]
    metrics: tuple[str, ...]
    not_scored: dict[str, str]  # metric -> reason
    counts: dict[str, dict[str, int]]  # arm -> generated, scored, unscored
    timing: dict[str, dict[str, float]]  # arm -> images, seconds, seconds_per_image, ...
    families: tuple[str, ...]

    def table(self, title: str, metrics: Sequence[str], family: str | None = None) -> Table:
        values: dict[str, dict[str, list[float]]] = {a: {m: [] for m in metrics} for a in self.arms}
        for s in self.scored:
            if family is None or s.family == family:
                for m in metrics:
                    if (v := s.values.get(m)) is not None:
                        values[s.arm][m].append(v)
        cells = {a: {m: stat(values[a][m]) for m in metrics} for a in self.arms}
        return Table(title, family, self.arms, tuple(metrics), cells)

    def overall(self) -> Table:
        return self.table("All items", self.metrics)

    def by_family(self) -> list[Table]:
        """A table per family present: the paper's columns for combine and select, the scored
        metrics for the others."""
        return [
            self.table(FAMILY_TITLES.get(f, f), paper_columns(f) or self.metrics, family=f)
            for f in self.families
        ]

    def scored_count(self, arm: str, family: str | None = None) -> int:
        """The score lines of ``arm`` (in ``family`` when given)."""
        return sum(s.arm == arm and family in (None, s.family) for s in self.scored)

    def missing(self, metric: str) -> dict[str, int]:
        """Per arm: scored images with null for ``metric`` in a family where other images have
        a value (DINO is not missing on a selection item: that family has none)."""
        families = {s.family for s in self.scored if s.values.get(metric) is not None}
        out = dict.fromkeys(self.arms, 0)
        for s in self.scored:
            out[s.arm] += s.family in families and s.values.get(metric) is None
        return out


def arm_names(runs: Sequence[Run]) -> list[tuple[Run, str, str]]:
    """(run, arm, report name) for every arm: the arm's own name for one run,
    ``<run folder>/<arm>`` when runs are compared."""
    return [(r, a, a if len(runs) == 1 else f"{r.name}/{a}") for r in runs for a in r.arms]


def check_comparable(runs: Sequence[Run]) -> None:
    """Runs are compared over the same items only: a mean over other items is another
    benchmark, so runs whose items (or their families) differ are refused."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        raise SigmaInputError(
            "two runs have the same folder name, which names their arms; rename one"
        )
    first = runs[0]
    for r in runs[1:]:
        if {i: first.families[i] for i in first.record["items"]} != {
            i: r.families[i] for i in r.record["items"]
        }:
            raise SigmaInputError(
                f"runs {first.name} and {r.name} have different items; compare runs of the "
                "same benchmark items"
            )


def results(runs: Sequence[Run]) -> Results:
    """The numbers of ``runs`` (already checked by :func:`check_comparable`)."""
    arms = arm_names(runs)
    scored = _scored(arms)
    present = {m for s in scored for m, v in s.values.items() if v is not None}
    return Results(
        arms=tuple(name for _, _, name in arms),
        scored=scored,
        metrics=tuple(m for m in METRIC_NAMES if m in present),
        not_scored=_not_scored(runs, present),
        counts={name: _counts(r, arm) for r, arm, name in arms},
        timing={name: _timing(r, arm) for r, arm, name in arms},
        families=_families(scored),
    )


def _families(scored: Sequence[Scored]) -> tuple[str, ...]:
    """The families with a scored image, in the benchmark's order."""
    present = {s.family for s in scored}
    return tuple(f for f in FAMILIES if f in present)


def _scored(arms: list[tuple[Run, str, str]]) -> tuple[Scored, ...]:
    return tuple(
        Scored(name, line["family"], {m: line.get(m) for m in METRIC_NAMES})
        for r, arm, name in arms
        for line in r.scores
        if line["arm"] == arm
    )


def _not_scored(runs: Sequence[Run], present: set[str]) -> dict[str, str]:
    """Why each metric without a value has none: scores.json's reason (the first run's that
    gives one), else that no image has a value."""
    reasons = {m: r.scoring["skipped"][m] for r in reversed(runs) for m in r.scoring["skipped"]}
    return {m: reasons.get(m, "no image has a value") for m in METRIC_NAMES if m not in present}


def _counts(run: Run, arm: str) -> dict[str, int]:
    made = {(im.item, im.seed) for im in run.images if im.arm == arm}
    scored = {(s["item"], s["seed"]) for s in run.scores if s["arm"] == arm}
    return {
        "expected": len(run.record["items"]) * len(run.record["seeds"]),
        "generated": len(made),
        "scored": len(scored),
        "unscored": len(made - scored),
    }


def _timing(run: Run, arm: str) -> dict[str, float]:
    times = [im.seconds for im in run.images if im.arm == arm]
    total = math.fsum(times)
    return {
        "images": len(times),
        "seconds": total,
        "seconds_per_image": total / len(times) if times else 0.0,
        "images_per_second": len(times) / total if total > 0 else 0.0,
    }
