"""``evaluate report RUN [RUN2 ...]``: report.md, results.json, a contact sheet per item and a
plot per metric, laid out as the paper's ablation table (docs/evaluation.md, "Reports").

Several runs are compared in one table, their arms named ``<run folder>/<arm>``; they must
cover the same items. The report is written into a private folder beside OUT and moved in
place when complete, so a failed report never leaves half a folder or destroys the last one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sigma_core.errors import SigmaInputError
from sigma_core.evaluation.contact_sheet import write_sheets
from sigma_core.evaluation.metrics import BY_NAME
from sigma_core.evaluation.plots import write_plots
from sigma_core.evaluation.report_inputs import Run, read_run
from sigma_core.evaluation.report_markdown import markdown
from sigma_core.evaluation.report_stats import Results, check_comparable, results
from sigma_core.inputs.outfile import check_output_folder, staged_folder

REPORT_FORMAT, REPORT_VERSION = "sigma-studio/evaluation-report", 1
STATISTIC = (
    "mean over the n scored images (items x seeds) of an arm; se: the standard error of that "
    "mean, the sample standard deviation (ddof=1) over sqrt(n), null when n < 2"
)


def main(args: argparse.Namespace) -> int:
    """Read the runs, check OUT, write the report; prints where it went."""
    runs = [read_run(Path(p)) for p in args.runs]
    check_comparable(runs)
    out = Path(args.out) if args.out else runs[0].folder / "report"
    _check_out(out, runs, overwrite=args.overwrite)
    write_report(runs, out)
    print(f"report: {out / 'report.md'}")
    if any(r.preview for r in runs):
        print("note: the preview engine (random weights) made these images; the numbers are noise")
    return 0


def _check_out(out: Path, runs: Sequence[Run], *, overwrite: bool) -> None:
    """OUT must be new, empty or (with --overwrite) a folder of other files; never a run
    folder or a folder holding one, which --overwrite would destroy."""
    real = out.resolve()
    for r in runs:
        if r.folder.resolve().is_relative_to(real):
            raise SigmaInputError(
                f"--out {str(out)!r} is run {r.name} or holds it; choose a folder of its own"
            )
    needed = 2**20 * (2 + len(runs[0].record["items"]))  # a contact sheet is under 1 MB
    check_output_folder(
        out,
        overwrite=overwrite,
        needed_bytes=needed,
        keep=("run.json",),
        kept="a run",
        what="--out",
    )


def write_report(runs: Sequence[Run], out: Path) -> dict[str, Any]:
    """Write the report of ``runs`` (checked) into ``out``; returns results.json's data."""
    numbers = results(runs)
    with staged_folder(out) as staging:
        sheets = write_sheets(runs, staging / "contact")
        plots = write_plots(numbers.overall(), staging / "plots")
        data = results_json(runs, numbers, sheets, plots)
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        (staging / "results.json").write_text(text, encoding="utf-8")
        (staging / "report.md").write_text(markdown(runs, numbers, sheets, plots), "utf-8")
    return data


def results_json(
    runs: Sequence[Run], numbers: Results, sheets: dict[str, str], plots: dict[str, str]
) -> dict[str, Any]:
    """Every number of the report, machine-readable (files relative to the report folder)."""
    overall = numbers.overall()
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "preview": any(r.preview for r in runs),
        "statistic": STATISTIC,
        "runs": [_run_json(r) for r in runs],
        "arms": list(numbers.arms),
        "metrics": {m: _metric_json(runs, numbers, m) for m in BY_NAME},
        "all": overall.to_json(),
        "delta": {
            arm: {m: overall.delta(arm, m) for m in overall.metrics} for arm in numbers.arms[1:]
        },
        "families": {str(t.family): t.to_json() for t in numbers.by_family()},
        "images": numbers.counts,
        "timing": numbers.timing,
        "contact_sheets": {item: f"contact/{name}" for item, name in sheets.items()},
        "plots": {metric: f"plots/{name}" for metric, name in plots.items()},
    }


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "name": run.name,
        "folder": str(run.folder),
        "benchmark": run.record["benchmark"],
        "engine": run.record["engine"],
        "preview": run.preview,
        "preview_images": len(run.notices),
        "arms": run.record["arms"],
        "seeds": run.record["seeds"],
        "items": len(run.record["items"]),
    }


def _metric_json(runs: Sequence[Run], numbers: Results, metric: str) -> dict[str, Any]:
    models = {r.name: r.scoring["models"].get(metric) for r in runs}
    return {
        "header": BY_NAME[metric].label,
        "higher_is_better": BY_NAME[metric].higher_is_better,
        "scored": metric in numbers.metrics,
        "not_scored_reason": numbers.not_scored.get(metric),
        "models": models,
        "missing": numbers.missing(metric) if metric in numbers.metrics else None,
    }
