"""A bar chart per metric: each arm's mean over all items, its standard error as the error bar.

Drawn on a bare matplotlib Figure with the Agg canvas (no pyplot, no display, no global state),
so a report can be made on a headless machine or in a thread.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sigma_core.evaluation.metrics import BY_NAME
from sigma_core.evaluation.report_stats import Table
from sigma_core.inputs.fields import cut

SIZE_INCHES, DPI = (6.4, 4.0), 100  # 640x400 pixels


def write_plots(table: Table, folder: Path) -> dict[str, str]:
    """``<metric>.png`` in ``folder`` for each metric of ``table``; returns metric -> file."""
    folder.mkdir()
    out = {}
    for metric in table.metrics:
        name = f"{metric}.png"
        _plot(table, metric).print_png(str(folder / name))
        out[metric] = name
    return out


def _plot(table: Table, metric: str) -> FigureCanvasAgg:
    fig = Figure(figsize=SIZE_INCHES, dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cells = [table.cells[arm][metric] for arm in table.arms]
    means = [c.mean if c.mean is not None else 0.0 for c in cells]
    errors = [c.se if c.se is not None else 0.0 for c in cells]
    positions = list(range(len(cells)))
    ax.bar(positions, means, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(positions, [_label(arm, c.n) for arm, c in zip(table.arms, cells, strict=True)])
    ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    m = BY_NAME[metric]
    arrow = f"{m.arrow} {'higher' if m.higher_is_better else 'lower'} is better"
    ax.set_ylabel(f"{m.label} ({arrow})")
    ax.set_title(f"{m.label}: mean ± standard error, {table.title.lower()}")
    fig.tight_layout()
    return canvas


def _label(arm: str, n: int) -> str:
    """An arm's tick label: cut, printable, and a '$' kept as text (not mathtext)."""
    shown = cut("".join(c if c.isprintable() else "?" for c in arm[:40]), 30)
    return shown.replace("$", r"\$") + f"\nn={n}"
