"""``evaluate score`` under ``accelerate launch``: two CPU processes over gloo score exactly the
images one process scores, each once, into the same scores.jsonl (the same lines in the same
order, the same values), and leave no part file behind. (``evaluate generate``'s two processes
are tested beside its resume, in test_evaluation_runs.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sigma_core.evaluation import runlog, score_files
from sigma_core.evaluation.metrics import METRIC_NAMES
from tests.evaluation_helpers import read_jsonl, score, score_argv, write_jsonl, write_run
from tests.launch_helpers import accelerate_cpu, cpu_env, run_workers

LEFT_OUT = ("pair", "mask=off", 2)  # an image the run lacks, so the shares are uneven


def _run(root: Path) -> Path:
    """11 images: two items, two arms, three seeds, less LEFT_OUT. In the scoring order (item by
    item) the first process's share (6) ends inside the second item, so an item is split."""
    run = write_run(root, seeds=3)
    lines = [x for x in runlog.read_log(run / runlog.LOG) if runlog.key_of(x) != LEFT_OUT]
    write_jsonl(run / runlog.LOG, lines)
    return run


def _values(line: dict) -> dict[str, float]:
    """A score line's numbers: each metric not null, and each metric's per-reference values."""
    out = {m: line[m] for m in METRIC_NAMES if line[m] is not None}
    out |= {f"{m}/{k}": v for m, refs in line["per_reference"].items() for k, v in refs.items()}
    return out


@pytest.mark.slow
def test_two_processes_through_accelerate_score_what_one_scores(models, tmp_path, capsys):
    one, two = _run(tmp_path / "one"), _run(tmp_path / "two")
    assert score(one, models) == 0
    assert "scored 11 images (0 already scored)" in capsys.readouterr().out
    result = run_workers(accelerate_cpu(score_argv(two, models)), cpu_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scored 11 images (0 already scored)" in result.stdout  # once: the main process
    assert not list(two.glob(score_files.PART_GLOB))
    ours, theirs = read_jsonl(two / score_files.SCORES), read_jsonl(one / score_files.SCORES)
    keys = [runlog.key_of(x) for x in ours]
    assert keys == [runlog.key_of(x) for x in theirs]  # the same lines, in the same order
    assert len(set(keys)) == len(keys) == 11  # none twice, none missed
    for a, b in zip(ours, theirs, strict=True):
        assert {k: a[k] for k in ("family", "models")} == {k: b[k] for k in ("family", "models")}
        # Not bit-equal: the processes batch other images together (the item split between
        # them is embedded in two batches) and run one thread each, so the float32 embeddings'
        # last bits differ; a score is 100 x their cosine (seen: up to 7e-7 apart).
        assert _values(a) == pytest.approx(_values(b), abs=1e-5)
    ours, theirs = (json.loads((run / score_files.SUMMARY).read_text()) for run in (two, one))
    assert ours["models"] == theirs["models"] and ours["metrics"] == theirs["metrics"]
    assert set(ours["skipped"]) == set(theirs["skipped"]) == {"dreamsim"}


@pytest.mark.slow
def test_the_cpu_benchmark_runs_quick(capsys) -> None:
    """benchmarks/bench_eval.py's code path, small: generate and score, one process against two
    through accelerate (the figures themselves come from its full run, on an idle machine)."""
    from benchmarks.bench_eval import main

    rows = main(["--quick"])["rows"]
    assert [(r["setting"].split(",")[0], r["processes"]) for r in rows] == [
        ("generate", 1), ("generate", 2), ("score", 1), ("score", 2)
    ]  # fmt: skip
    assert all(r["images"] == 3 and r["images_per_s"] > 0 for r in rows)
    assert "| setting | processes | images | seconds | images/s |" in capsys.readouterr().out
