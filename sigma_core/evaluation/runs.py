"""``evaluate generate BENCH --out RUN``: a benchmark's images, per arm, item and seed.

Everything given is checked before a model loads. ``RUN/run.json`` records what the run is (the
benchmark, arms, seeds, items, engine and setting flags); a second command into the same RUN
continues it only when that record is the same, and refuses otherwise, naming what differs.
``RUN/benchmark.jsonl`` (and ``RUN/refs/``) is a self-contained copy of the items, so scoring
needs only RUN. Each image is ``RUN/images/<arm>/<item>/<seed>.png``, its composition embedded
(so it opens in the studio); ``generated.jsonl`` lists the finished ones (:mod:`.runlog`).

Every (item, seed) draws the same noise in every arm (a CPU generator seeded with the seed), so
the arms differ only in what they name. The work list is arm by arm (an arm that changes the
precision loads its engine once), item by item, seed by seed; under ``accelerate launch`` each
process takes its contiguous share (``PartialState.split_between_processes``), and an item's
seeds in one share run as one call (one encode and prefill, then one Euler loop per seed,
exactly the images separate calls would make).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sigma_core.errors import PresetError, SigmaInputError
from sigma_core.evaluation import runlog
from sigma_core.evaluation.arms import Arm, parse_arms
from sigma_core.evaluation.benchmark import (
    MANIFEST,
    REFS,
    Benchmark,
    copy_text,
    load_benchmark,
    write_copy,
)
from sigma_core.evaluation.run_record import (
    RECORD,
    RUN_VERSION,
    read_run_record,
    write_run_record,
)
from sigma_core.inputs.bounded import read_bounded
from sigma_core.inputs.outfile import check_run_folder
from sigma_core.inputs.settings import SETTING_SPECS, SPECS, settings_from_text
from sigma_core.limits import MAX_BENCHMARK_BYTES, MAX_EVAL_SEEDS
from sigma_core.model.modes import EngineChoice


@dataclass(frozen=True)
class Job:
    """One image to make."""

    arm: Arm
    item: str
    seed: int

    @property
    def key(self) -> runlog.Key:
        return self.item, self.arm.name, self.seed


@dataclass(frozen=True)
class RunSpec:
    """What a run is: checked from the command line, recorded in run.json."""

    benchmark: Benchmark
    given: str  # BENCH as given
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    engine: EngineChoice
    overrides: Mapping[str, str]  # setting name -> the flag's text

    def record(self) -> dict[str, Any]:
        """run.json's content for this run (what a resume must match)."""
        return {
            "version": RUN_VERSION,
            "benchmark": self.given,
            "arms": [arm.to_dict() for arm in self.arms],
            "seeds": list(self.seeds),
            "items": [item.id for item in self.benchmark.items],
            "engine": asdict(self.engine),
            "settings_overrides": dict(self.overrides),
        }

    def jobs(self) -> list[Job]:
        """The work list: arm by arm, item by item, seed by seed."""
        items = [item.id for item in self.benchmark.items]
        return [Job(*job) for job in itertools.product(self.arms, items, self.seeds)]


def check_spec(args: argparse.Namespace) -> RunSpec:
    """The run the options ask for, or a SigmaInputError naming the first thing wrong."""
    if not 1 <= args.seeds <= MAX_EVAL_SEEDS:
        raise SigmaInputError(f"--seeds: {args.seeds} must be from 1 to {MAX_EVAL_SEEDS}")
    if args.limit is not None and args.limit < 1:
        raise SigmaInputError(f"--limit: {args.limit} must be at least 1")
    arms = parse_arms(args.vary)
    engine = EngineChoice.from_args(args)
    check_run_folder(args.out, "RUN")
    bench = load_benchmark(args.benchmark)
    bench = replace(bench, items=bench.items[: args.limit])
    overrides = _overrides(args)
    for item in bench.items:  # each arm's settings are checked as a preset's are
        for arm in arms:
            try:
                arm.apply(_settings(item.composition, overrides))
            except (PresetError, SigmaInputError) as e:
                raise SigmaInputError(
                    f"item {item.id} (line {item.line}), {arm.name}: {e}"
                ) from None
    given = str(Path(args.benchmark))
    return RunSpec(bench, given, arms, tuple(range(args.seeds)), engine, overrides)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    """The settings the flags give (``--steps``, ``--size``), as text, each checked alone."""
    overrides = {
        spec.name: str(getattr(args, spec.flag))
        for spec in SETTING_SPECS
        if spec.flag and getattr(args, spec.flag, None) is not None
    }
    for name, text in overrides.items():
        try:
            settings_from_text({name: text})
        except SigmaInputError as e:
            raise SigmaInputError(f"--{SPECS[name].flag}: {e}") from None
    return overrides


def _settings(comp: Any, overrides: Mapping[str, str]) -> Any:
    return replace(comp, settings=settings_from_text(dict(overrides), comp.settings))


def check_resume(spec: RunSpec, run: Path) -> bool:
    """Whether RUN holds this run already (False: a new or empty folder); a RUN holding another
    run, or other files, is refused, naming what differs."""
    if not run.exists() or {p.name for p in run.iterdir()} <= {MANIFEST, REFS}:
        return False  # new, or a start stopped before its record: start again
    if not (run / RECORD).is_file():
        raise SigmaInputError(
            f"RUN {str(run)!r} holds files but no {RECORD}; choose a new or empty folder"
        )
    old = read_run_record(run)
    new = spec.record()
    differ = [key for key in new if old.get(key) != json.loads(json.dumps(new[key]))]
    if differ:
        raise SigmaInputError(
            f"RUN {str(run)!r} holds another run (its {', '.join(differ)} differ); resume with "
            "the same BENCH and options, or choose a new RUN"
        )
    copy = read_bounded(run / MANIFEST, MAX_BENCHMARK_BYTES, what="benchmark copy",
                        error=SigmaInputError)  # fmt: skip
    if copy != copy_text(spec.benchmark).encode("utf-8"):
        raise SigmaInputError(
            f"RUN {str(run)!r}: the benchmark's items changed since this run began; choose a "
            "new RUN"
        )
    return True


def start_run(spec: RunSpec, run: Path) -> None:
    """A new run's copy of the benchmark, then its record (the main process only): a RUN with
    a record always has its copy."""
    run.mkdir(parents=True, exist_ok=True)
    write_copy(spec.benchmark, run)
    write_run_record(run, spec.record())


class Engines:
    """The engine of the arm at hand, loaded once per precision (the work list is ordered so
    that each loads once), the previous one freed first."""

    def __init__(self, choice: EngineChoice, device: Any, pipe: Any = None) -> None:
        """``pipe``: an engine already built for ``choice`` (benchmarks build random weights)."""
        self.choice, self.device, self.pipe = choice, device, pipe
        self.precision: str | None = choice.precision if pipe is not None else None

    def for_arm(self, arm: Arm) -> Any:
        """The engine for ``arm``'s precision, loaded when it differs from the one held."""
        precision = arm.precision(self.choice.precision)
        if precision != self.precision:
            from sigma_core.runtime.engine import load_engine

            self.pipe = None
            self.pipe = load_engine(replace(self.choice, precision=precision), self.device)
            self.precision = precision
        return self.pipe


def make_images(
    spec: RunSpec, run: Path, share: list[Job], engines: Engines, log: runlog.LogWriter
) -> int:
    """Make the images of ``share`` not already finished; returns how many were made."""
    import torch

    done = runlog.finished(run)
    made = 0
    for (arm, item_id), group in itertools.groupby(share, key=lambda j: (j.arm, j.item)):
        todo = [job for job in group if job.key not in done]
        if not todo:
            continue
        item = spec.benchmark.item(item_id)
        comp = arm.apply(_settings(item.composition, spec.overrides))
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in todo]
        out = engines.for_arm(arm)(comp, generator=generators)
        seconds = out.timings["total_s"] / len(todo)
        prompt = comp.raw_prompt()[0]
        for job, one in zip(todo, out.split(), strict=True):
            file = runlog.image_file(job.key)
            (run / file).parent.mkdir(parents=True, exist_ok=True)
            one.save(run / file, overwrite=True)
            line = {"item": job.item, "arm": arm.name, "seed": job.seed, "file": file,
                    "seconds": round(seconds, 3), "prompt": prompt}  # fmt: skip
            log.append(line)
            made += 1
            print(f"{job.item} [{arm.name}] seed {job.seed}: {seconds:.2f} s", flush=True)
    return made


def _processes(spec: RunSpec, args: argparse.Namespace) -> tuple[Any, Any]:
    """accelerate's process state and this process's device, every arm's engine options checked
    there before anything loads."""
    from sigma_core.runtime.device import process_device, process_state
    from sigma_core.runtime.loader import LoadOptions

    state = process_state()
    device = process_device(state, args.device)
    for precision in dict.fromkeys(arm.precision(spec.engine.precision) for arm in spec.arms):
        LoadOptions.check(**replace(spec.engine, precision=precision).load_options(device))
    return state, device


def _made_here(total: int, made: int, world: int) -> str:
    """What the last line says this command did: alone, the images it made and those an
    earlier command had made; under accelerate, the main process's share (each prints none)."""
    if world == 1:
        return f"{made} made now, {total - made} by an earlier command"
    return f"{made} made by the main process, one of {world} processes"


def main(args: argparse.Namespace) -> int:
    """Run ``evaluate generate``; returns the exit code (errors raise a SigmaError: exit 2)."""
    spec = check_spec(args)
    state, device = _processes(spec, args)
    world, run = state.num_processes, Path(args.out)
    resumed = check_resume(spec, run)  # every process checks, before any writes
    state.wait_for_everyone()
    if state.is_main_process and not resumed:
        start_run(spec, run)
    state.wait_for_everyone()
    jobs = spec.jobs()
    log = runlog.LogWriter(run / runlog.log_name(state.process_index, world))
    if not spec.engine.checkpoint and state.is_main_process:
        print("no --checkpoint: using the preview engine (random weights)", file=sys.stderr)
    with state.split_between_processes(jobs) as share:
        made = make_images(spec, run, share, Engines(spec.engine, device), log)
    state.wait_for_everyone()
    if state.is_main_process:
        total = runlog.merge(run, [job.key for job in jobs])
        print(f"{run}: {total} of {len(jobs)} images done ({_made_here(total, made, world)})")
    return 0
