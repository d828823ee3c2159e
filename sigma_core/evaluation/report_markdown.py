"""report.md: the runs, the ablation table over all items and per family, what is missing, the
generation time, and links to the plots and contact sheets.

Names from the run files (arms, items, checkpoints) are a stranger's text: every one is escaped
before it goes into Markdown, so none can break a table or add a link.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sigma_core.evaluation.metrics import BY_NAME, METRICS, label
from sigma_core.evaluation.report_inputs import Run
from sigma_core.evaluation.report_stats import (
    PAPER_ROWS,
    Results,
    Stat,
    Table,
)
from sigma_core.inputs.fields import cut

PREVIEW_WARNING = (
    "**Warning: the preview engine (random weights) made these images: the numbers below are "
    "meaningless.** They check the harness, not SIGMA; run `evaluate generate` with "
    "`--checkpoint` for real numbers."
)
HOW = (
    "Each cell is the mean over the n scored images of the arm (items × seeds) ± the standard "
    "error of that mean: the sample standard deviation (ddof=1) over √n (— when n < 2). ↑: "
    "higher is better, ↓: lower is better; **bold**: the best arm in the column. Δ rows: the "
    "arm's mean minus the first arm's (the full model). An image without a score is counted "
    "as missing below, never left out silently."
)


def esc(text: object, width: int = 200) -> str:
    """``text`` safe inside Markdown: one line, cut to ``width`` (marked "..."), punctuation
    escaped."""
    flat = cut("".join(c if c.isprintable() else " " for c in str(text)), width)
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", flat)


def markdown(
    runs: Sequence[Run], numbers: Results, sheets: dict[str, str], plots: dict[str, str]
) -> str:
    """The whole of report.md."""
    out = ["# Evaluation report", ""]
    if any(r.preview for r in runs):
        out += [PREVIEW_WARNING, ""]
    out += _runs(runs) + _models(runs)
    overall = numbers.overall()
    out += ["## Results: all items", "", HOW, ""]
    out += _table(overall, numbers)
    out += _not_scored(numbers) + _missing(numbers)
    out += ["## Per family", ""]
    for table in numbers.by_family():
        out += [f"### {table.title}", "", *_table(table, numbers)]  # our titles: no escaping
    out += _plots(plots) + _timing(numbers) + _sheets(sheets)
    return "\n".join(out) + "\n"


def _runs(runs: Sequence[Run]) -> list[str]:
    lines = [
        "## Runs",
        "",
        "| Run | Benchmark | Engine | Precision | Arms | Items | Seeds |",
        "|---|---|---|---|---|---:|---|",
    ]
    for r in runs:
        engine = r.record["engine"]
        checkpoint = engine.get("checkpoint")
        shown = "preview engine (random weights)" if r.preview else esc(checkpoint)
        arms = ", ".join(esc(a) for a in r.arms)
        seeds = ", ".join(str(s) for s in r.record["seeds"])
        lines.append(
            f"| {esc(r.name)} | {esc(r.record['benchmark'])} | {shown} | "
            f"{esc(engine.get('precision', '?'))} | {arms} | {len(r.record['items'])} | {seeds} |"
        )
    return [*lines, ""]


def _models(runs: Sequence[Run]) -> list[str]:
    """Which model scored each metric, per run (scores.json's ``models``)."""
    metrics = [m for m in METRICS if any(m.name in r.scoring["models"] for r in runs)]
    if not metrics:
        return []
    lines = ["## Models", "", "The model each metric was scored with (scores.json).", ""]
    lines += ["| Metric | " + " | ".join(esc(r.name) for r in runs) + " |"]
    lines += ["|---|" + "---|" * len(runs)]
    for m in metrics:
        cells = [esc(r.scoring["models"].get(m.name, "not scored")) for r in runs]
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _table(table: Table, numbers: Results) -> list[str]:
    heads = [f"{BY_NAME[m].label} {BY_NAME[m].arrow}" for m in table.metrics]
    lines = [
        "| Arm | Images | " + " | ".join(heads) + " |",
        "|---|---:|" + "---:|" * len(table.metrics),
    ]
    lines += _arm_rows(table, numbers) + _delta_rows(table) + _paper_rows(table)
    return [*lines, ""]


def _arm_rows(table: Table, numbers: Results) -> list[str]:
    best = {m: table.best(m) for m in table.metrics}
    lines = []
    for arm in table.arms:
        n = numbers.scored_count(arm, table.family)
        cells = [_cell(table.cells[arm][m], n, m, numbers, arm in best[m]) for m in table.metrics]
        lines.append(f"| {esc(arm)} | {n} | " + " | ".join(cells) + " |")
    return lines


def _delta_rows(table: Table) -> list[str]:
    return [
        f"| Δ {esc(arm)} |  | "
        + " | ".join(_signed(table.delta(arm, m)) for m in table.metrics)
        + " |"
        for arm in table.arms[1:]
    ]


def _paper_rows(table: Table) -> list[str]:
    rows = PAPER_ROWS.get(table.family or "", {})
    lines = [
        f"| *{name}* |  | "
        + " | ".join(f"*{_num(row[m])}*" if m in row else "" for m in table.metrics)
        + " |"
        for name, row in rows.items()
    ]
    note = "*(paper)* rows: the paper's numbers, for scale only (its models, its data)."
    return [*lines, "", note] if rows else lines


def _cell(s: Stat, scored: int, metric: str, numbers: Results, best: bool) -> str:
    if metric in numbers.not_scored:
        return "not scored"
    if s.mean is None:
        return "—"
    digits = _digits(s.mean)
    se = "—" if s.se is None else f"{s.se:.{digits}f}"
    text = f"{s.mean:.{digits}f} ± {se}"
    text = f"**{text}**" if best else text
    return text if s.n == scored else f"{text} (n={s.n})"


def _digits(value: float) -> int:
    """Decimals as the paper prints them: 2 for values from 10 (CLIP-T 31.96), else 3."""
    return 2 if abs(value) >= 10 else 3


def _num(value: float) -> str:
    return f"{value:.{_digits(value)}f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.{_digits(value)}f}".replace("-", "−")


def _not_scored(numbers: Results) -> list[str]:
    return [
        f"- {label(m)}: not scored ({esc(reason, 600)})" for m, reason in numbers.not_scored.items()
    ] + ([""] if numbers.not_scored else [])


def _missing(numbers: Results) -> list[str]:
    """Images made but not scored, and scored images with no value for a scored metric."""
    lines = []
    for arm, c in numbers.counts.items():
        if c["generated"] < c["expected"]:
            lines.append(f"- {esc(arm)}: {c['generated']} of {c['expected']} images generated")
        if c["unscored"]:
            lines.append(f"- {esc(arm)}: {c['unscored']} generated images have no score line")
    for m in numbers.metrics:
        for arm, k in numbers.missing(m).items():
            if k:
                lines.append(f"- {esc(arm)}: {label(m)} is missing on {k} scored images")
    return ["Missing:", "", *lines, ""] if lines else ["Missing: none.", ""]


def _plots(plots: dict[str, str]) -> list[str]:
    lines = ["## Plots", ""]
    lines += [f"![{label(m)}](plots/{name})" for m, name in plots.items()]
    return [*lines, ""]


def _timing(numbers: Results) -> list[str]:
    lines = [
        "## Generation time",
        "",
        "From generated.jsonl: each image's seconds, as its run measured them.",
        "",
        "| Arm | Images | Seconds per image | Images per second |",
        "|---|---:|---:|---:|",
    ]
    for arm, t in numbers.timing.items():
        lines.append(
            f"| {esc(arm)} | {t['images']:.0f} | {t['seconds_per_image']:.2f} | "
            f"{t['images_per_second']:.3f} |"
        )
    return [*lines, ""]


def _sheets(sheets: dict[str, str]) -> list[str]:
    lines = [
        "## Contact sheets",
        "",
        "Per item: its references (slot, role, attributes), then each arm's image for the "
        "first seed with its scores.",
        "",
    ]
    lines += [f"- [{esc(item)}](contact/{name})" for item, name in sheets.items()]
    return lines
