"""Benchmarks and ``evaluate generate``: the manifest refused with the line and field named,
arms that change only what they name, a run killed and resumed equal to one uninterrupted, two
processes through accelerate equal to one, and the XVerseBench importer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sigma_core.cli import main as cli_main
from sigma_core.errors import SigmaInputError
from sigma_core.evaluation import runlog
from sigma_core.evaluation.arms import parse_arms
from sigma_core.evaluation.benchmark import FAMILIES, load_benchmark
from sigma_core.inputs import load_composition
from sigma_core.inputs.attributes import strip_tokens
from tests.launch_helpers import accelerate_cpu, cpu_env, run_workers

ROOT = Path(__file__).resolve().parent.parent
OPTS = ["--steps", "2", "--size", "64x64"]
COLOURS = [(200, 30, 30), (30, 160, 40), (40, 60, 200), (220, 200, 40)]


def _preset(a: int, b: int) -> dict:
    return {
        "format": "sigma-studio/preset", "version": 2, "prompt": "A photo of [1] next to [2]",
        "references": [
            {"slot": 1, "image": f"r{a}.png", "attributes": ["<subject>"], "entity": "a box"},
            {"slot": 2, "image": f"r{b}.png", "attributes": ["<style>"], "entity": "a swatch"},
        ],
        "settings": {"size": [64, 64], "num_timesteps": 2},
    }  # fmt: skip


def _write_bench(folder: Path, lines: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (48, 48), colour).save(folder / f"r{i}.png")
    if lines is None:
        lines = [
            {"id": f"item{i}", "family": FAMILIES[i], "preset": _preset(i, (i + 1) % 4),
             "references": {"2": {"role": "distractor"}, "1": {"role": "wanted",
                                                               "region": [0, 0, 0.5, 1]}}}
            for i in range(3)
        ]  # fmt: skip
    text = "".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (folder / "benchmark.jsonl").write_text(text.replace("}{", "}\n{") + "\n")
    return folder


def _pixels(run: Path) -> dict[tuple, np.ndarray]:
    return {
        runlog.key_of(line): np.asarray(Image.open(run / line["file"]))
        for line in runlog.read_log(run / runlog.LOG)
    }


ARGS = ["--seeds", "2", "--vary", "mask=on,off", "--vary", "tokens=off", *OPTS]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return _write_bench(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def reference(bench, tmp_path_factory) -> Path:
    """An uninterrupted run in this process: 3 items, 3 arms, 2 seeds."""
    run = tmp_path_factory.mktemp("ref") / "run"
    assert cli_main(["evaluate", "generate", str(bench), "--out", str(run), *ARGS]) == 0
    return run


def test_a_benchmark_reads_with_roles_regions_and_families(bench) -> None:
    b = load_benchmark(bench)
    assert [i.id for i in b.items] == ["item0", "item1", "item2"]
    item = b.items[0]
    assert item.references[1].region == (0.0, 0.0, 0.5, 1.0)
    assert item.references[2].role == "distractor" and item.target is None
    example = load_benchmark(ROOT / "presets" / "benchmark")
    assert {i.family for i in example.items} == set(FAMILIES)
    roles = {r.role for i in example.items for r in i.references.values()}
    assert roles == {"wanted", "distractor"}
    assert any(r.region for i in example.items for r in i.references.values())


def _line(**changes) -> dict:
    return {"id": "x", "family": "combine", "preset": _preset(0, 1), **changes}


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("{not json", "line 1: malformed JSON"),
        (_line(family="remix"), "line 1: family: 'remix' is not one of combine"),
        (_line(references={"1": {"role": "maybe"}}), "references.1.role: 'maybe'"),
        (_line(references={"3": {"role": "wanted"}}), "the preset has no slot '3'"),
        (_line(references={"1": {"role": "wanted", "region": [0, 0, 1.5, 1]}}), "region"),
        (_line(references={"1": {"role": "wanted", "region": [0.6, 0, 0.5, 1]}}), "x0 < x1"),
        (_line(id="../up"), "id: '../up' must be"),
        (_line(preset="../outside.json"), "preset: '../outside.json' goes up"),
        (_line(target="/etc/passwd"), "target: '/etc/passwd' is an absolute path"),
        (_line(extra=1), "extra"),
    ],
)
def test_a_bad_line_is_refused_naming_its_line_and_field(tmp_path, capsys, line, said) -> None:
    bench = _write_bench(tmp_path / "b", [line])
    assert cli_main(["evaluate", "generate", str(bench), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_bad_benchmarks_and_options_exit_2_before_any_model(tmp_path, capsys, bench) -> None:
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "file").write_text("")
    two = _write_bench(tmp_path / "two", [_line(), _line()])
    out = ["--out", str(tmp_path / "r")]
    cases = [
        ([str(tmp_path / "missing"), *out], "no such file"),
        ([str(tmp_path / "fifo.jsonl"), *out], "not a regular file"),
        ([str(tmp_path / "a.json"), *out], "is not a JSONL manifest"),
        ([str(two), *out], "line 2: id: 'x' is used by an earlier line"),
        ([str(bench), *out, "--seeds", "0"], "--seeds: 0 must be from 1 to 100"),
        ([str(bench), *out, "--seeds", "101"], "--seeds: 101"),
        ([str(bench), *out, "--limit", "0"], "--limit: 0"),
        ([str(bench), *out, "--vary", "cfg=1,2"], "KEY one of mask"),
        ([str(bench), *out, "--vary", "mask=maybe"], "'maybe' is not one of on, off"),
        ([str(bench), *out, "--vary", "mask=on,on"], "on is listed twice"),
        ([str(bench), *out, "--vary", "mask=on", "--vary", "mask=off"], "given twice"),
        ([str(bench), "--out", str(tmp_path / "file")], "is not a folder"),
        ([str(bench), *out, "--size", "64x64x"], "--size"),
    ]
    for argv, said in cases:
        assert cli_main(["evaluate", "generate", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert said in err, (argv, err)
        assert len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "r").exists()


def test_arms_change_only_what_they_name(bench) -> None:
    comp = load_benchmark(bench).items[0].composition
    vary = ["mask=off", "attribute_projection=off", "layout=training", "tokens=off",
            "precision=bf16"]  # fmt: skip
    arms = {a.name: a for a in parse_arms(vary)}
    base = comp.settings.to_dict()
    for name, changed in [("mask=off", {"mask": False}),
                          ("attribute_projection=off", {"attribute_projection": False}),
                          ("layout=training", {"layout": "training"})]:  # fmt: skip
        out = arms[name].apply(comp)
        assert out.settings.to_dict() == {**base, **changed} and out.prompt == comp.prompt
    stripped = arms["tokens=off"].apply(comp)
    assert stripped.settings == comp.settings and stripped.references == comp.references
    assert stripped.prompt == "A photo of a box <image_1> next to a swatch <image_2>"
    assert strip_tokens("<id> <clothing> her <image_1>") == "her <image_1>"
    assert arms["precision=bf16"].apply(comp) == comp
    assert arms["precision=bf16"].precision("auto") == "bf16"


def test_a_run_records_itself_and_its_images_open_in_the_studio(reference, bench) -> None:
    record = json.loads((reference / "run.json").read_text())
    assert [a["name"] for a in record["arms"]] == ["mask=on", "mask=off", "tokens=off"]
    assert record["seeds"] == [0, 1] and record["items"] == ["item0", "item1", "item2"]
    assert record["settings_overrides"] == {"num_timesteps": "2", "size": "64x64"}
    lines = runlog.read_log(reference / runlog.LOG)
    assert [runlog.key_of(line) for line in lines] == [
        (item, arm, seed) for arm in ("mask=on", "mask=off", "tokens=off")
        for item in ("item0", "item1", "item2") for seed in (0, 1)
    ]  # fmt: skip
    comp = load_composition(reference / "images" / "mask=off" / "item1" / "1.png")
    assert comp.settings.seed == 1 and comp.settings.mask is False
    off = next(line for line in lines if line["arm"] == "tokens=off")
    assert "<subject>" not in off["prompt"] and "<image_1>" in off["prompt"]
    copy = load_benchmark(reference)  # the run's own copy is a benchmark, images under refs/
    assert [i.id for i in copy.items] == ["item0", "item1", "item2"]
    assert len(list((reference / "refs").iterdir())) == 4


class _FakeOut:
    """What the fake engine returns: one image per generator, saved as a tiny PNG."""

    def __init__(self, n: int) -> None:
        self.n, self.timings = n, {"total_s": 0.5 * n}

    def split(self) -> list[_FakeOut]:
        return [_FakeOut(1) for _ in range(self.n)]

    def save(self, path: Path, overwrite: bool) -> Path:
        Image.new("RGB", (8, 8)).save(path)
        return path


def test_every_arm_draws_the_same_noise_and_changes_only_its_name(bench, tmp_path) -> None:
    from sigma_core import cli
    from sigma_core.evaluation import runs

    calls = []

    def engine(comp, generator):
        calls.append((comp, [g.initial_seed() for g in generator]))
        return _FakeOut(len(generator))

    argv = ["evaluate", "generate", str(bench), "--out", str(tmp_path / "run"), *ARGS]
    spec = runs.check_spec(cli.build_parser().parse_args(argv))
    runs.start_run(spec, tmp_path / "run")
    log = runlog.LogWriter(tmp_path / "run" / runlog.LOG)
    engines = runs.Engines(spec.engine, "cpu", engine)
    assert runs.make_images(spec, tmp_path / "run", spec.jobs(), engines, log) == 18
    assert [seeds for _, seeds in calls] == [[0, 1]] * 9  # each (item, seed): its own seed
    on, off, no_tokens = calls[0][0], calls[3][0], calls[6][0]
    assert on.settings.replace(mask=False) == off.settings and on.references == off.references
    assert no_tokens.settings == on.settings and "<subject>" not in no_tokens.prompt


def test_resume_skips_what_is_done_and_remakes_what_is_not(reference, bench, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["evaluate", "generate", str(bench), "--out", str(run), *ARGS]
    for path in reference.rglob("*"):  # a copy of the finished run ...
        if path.is_file():
            (run / path.relative_to(reference)).parent.mkdir(parents=True, exist_ok=True)
            (run / path.relative_to(reference)).write_bytes(path.read_bytes())
    # ... that lost an image, and whose log was cut mid-line
    (run / "images" / "mask=off" / "item2" / "0.png").unlink()
    log = (run / runlog.LOG).read_bytes()
    (run / runlog.LOG).write_bytes(log[: len(log) - 1 - len(log.splitlines()[-1]) // 2])
    capsys.readouterr()
    assert cli_main(argv) == 0
    made = [
        line.split(":")[0] for line in capsys.readouterr().out.splitlines() if "] seed " in line
    ]
    assert sorted(made) == ["item2 [mask=off] seed 0", "item2 [tokens=off] seed 1"]
    assert {k: v.tobytes() for k, v in _pixels(run).items()} == {
        k: v.tobytes() for k, v in _pixels(reference).items()
    }
    other = ["evaluate", "generate", str(bench), "--out", str(run), "--seeds", "3", *OPTS]
    assert cli_main(other) == 2
    assert "its arms, seeds differ" in capsys.readouterr().err


def test_a_run_stopped_while_starting_starts_again_or_is_refused(
    reference, bench, tmp_path, capsys
):
    """The copy is written before the record: a RUN holding only the copy starts again; a
    record whose copy is gone (removed by hand) is refused, never a crash."""
    run = tmp_path / "run"
    argv = ["evaluate", "generate", str(bench), "--out", str(run), *ARGS, "--limit", "1"]
    assert cli_main(argv) == 0
    (run / "run.json").unlink()
    for path in [*run.glob("images"), run / runlog.LOG]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert sorted(p.name for p in run.iterdir()) == ["benchmark.jsonl", "refs"]
    assert cli_main(argv) == 0  # the copy alone: a start that stopped before its record
    (run / "benchmark.jsonl").unlink()
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "benchmark.jsonl" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_run(reference, bench, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sigma_core", "evaluate", "generate", str(bench), "--out",
           str(run), *ARGS]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / runlog.LOG).exists() and (run / runlog.LOG).read_bytes().count(b"\n") >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert len(runlog.read_log(run / runlog.LOG)) < 18
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [runlog.key_of(x) for x in runlog.read_log(run / runlog.LOG)] == [
        runlog.key_of(x) for x in runlog.read_log(reference / runlog.LOG)
    ]
    ours, theirs = _pixels(run), _pixels(reference)
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.slow
def test_two_processes_through_accelerate_make_what_one_makes(reference, bench, tmp_path):
    run = tmp_path / "run"
    cmd = accelerate_cpu(["evaluate", "generate", str(bench), "--out", str(run), *ARGS])
    result = run_workers(cmd, cpu_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "one of 2 processes" in result.stdout and not list(run.glob(runlog.RANK_LOGS))
    ours, theirs = runlog.read_log(run / runlog.LOG), runlog.read_log(reference / runlog.LOG)
    assert [runlog.key_of(x) for x in ours] == [runlog.key_of(x) for x in theirs]  # none twice
    a, b = _pixels(run), _pixels(reference)
    assert all(np.array_equal(a[k], b[k]) for k in b)


def _xverse(src: Path, items: list[dict]) -> None:
    for path in ("assets/XVerseBench/human/00_man.jpg", "assets/XVerseBench/object/00_cup.jpg"):
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (90, 90, 90)).save(src / path)
    (src / "eval" / "tools").mkdir(parents=True)
    (src / "eval" / "tools" / "XVerseBench_multi.json").write_text(json.dumps(items))


def _xverse_item(index: int, prompt: str, image: str = "assets/XVerseBench/human/00_man.jpg"):
    return {
        "index": index, "input_images": [], "position_delta": [0, -32], "prompt": prompt,
        "modulation": [{"type": "adapter", "src_inputs": [
            {"image_path": image, "caption": "a man"},
            {"image_path": "assets/XVerseBench/object/00_cup.jpg", "caption": "a cup"}],
            "use_words": [[0, "man", "man"], [1, "cup", "cup"]]}],
    }  # fmt: skip


def test_xversebench_imports_as_a_benchmark(tmp_path, capsys) -> None:
    from sigma_core.evaluation.xverse import import_xverse, main

    src = tmp_path / "XVerse"
    _xverse(src, [_xverse_item(0, "A man is holding a cup."), _xverse_item(1, "A dog on a cup.")])
    assert main([str(src), str(tmp_path / "bench")]) == 0
    assert "left out (a word not in the prompt): multi-001" in capsys.readouterr().err
    (item,) = load_benchmark(tmp_path / "bench").items
    assert item.id == "multi-000" and item.family == "combine"
    assert item.composition.raw_prompt()[0] == (
        "A <id> man <image_1> is holding a <subject> cup <image_2>."
    )
    assert {r.role for r in item.references.values()} == {"wanted"}
    assert main([str(src), str(tmp_path / "bench")]) == 2  # never into a folder with files
    bad = tmp_path / "bad"
    _xverse(bad, [_xverse_item(0, "A man and a cup", image="../../secret.jpg")])
    with pytest.raises(SigmaInputError, match=r"goes up with '\.\.'"):
        import_xverse(bad, tmp_path / "bench2")
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"XVerse", "bench", "bad"}, names  # a failed import leaves nothing behind


@pytest.mark.slow
def test_the_gpu_benchmark_runs_dry_on_cpu(capsys) -> None:
    """benchmarks/bench_eval_gpu.py's code path, small, on CPU (the real run needs a GPU)."""
    from benchmarks.bench_eval_gpu import main

    result = main(["--dry-run", "--items", "2"])
    assert result["images"] == 2 and result["images_per_s"] > 0
    assert "images/s" in capsys.readouterr().out
