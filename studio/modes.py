"""Precision, offload and memory in the page: the modes this machine runs, switching the
studio's one engine to another (for every session at once, so only where the engine's ``lock``
allows), and whether a run fits in memory before it starts, with a mode that would fit when it
does not. Nothing is re-implemented here: what a machine refuses, and why, is the engine's
word, and the memory a run needs is sigma_core's estimate."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sigma_core import SigmaInputError, frontend
from studio.engine import Engine, refusals

if TYPE_CHECKING:
    from sigma_core import Composition, MemoryEstimate

Refusals = Mapping[tuple[str, str], str]  # (precision, offload) -> the engine's reason


def precision_choices(refused: Refusals) -> list[tuple[str, str]]:
    """Every precision, those this machine cannot run marked with the engine's reason."""
    return [(_label(p, refused.get((p, "none"))), p) for p in frontend.PRECISIONS]


def offload_choices(refused: Refusals, precision: str) -> list[tuple[str, str]]:
    """Every offload mode, those that cannot run with ``precision`` here marked."""
    return [(_label(o, refused.get((precision, o))), o) for o in frontend.OFFLOAD_MODES]


def _label(name: str, reason: str | None) -> str:
    """``name``, or ``name (not here: why)`` with the reason's first clause, field prefix off."""
    if reason is None:
        return name
    why = reason.split(": ", 1)[-1].split(";", 1)[0]
    return f"{name} (not here: {why})"


def switch_engine(engine: Engine, precision: str, offload: str) -> str:
    """Reload ``engine`` in another precision and offload, between runs; what changed. Raises
    the engine's SigmaError when the mode cannot load here, and the old engine stays."""
    if engine.lock is not None:
        raise SigmaInputError(
            f"engine: {engine.lock}, so its page cannot change the engine for everyone; "
            f"restart it with --precision {precision} --offload {offload} (or --engine-switch on)"
        )
    before = engine.info
    if (precision, offload) == (before.precision, before.offload):
        return f"The engine already runs {precision} with offload {offload}."
    engine.switch(precision, offload)
    return (
        f"The engine now runs {engine.info.precision} with offload {engine.info.offload} (was "
        f"{before.precision}, offload {before.offload}), for everyone using this studio."
    )


# What to propose when a run does not fit, best quality first: each halves the memory or more.
CANDIDATES = (
    ("fp8", "none"),
    ("int8", "none"),
    ("nf4", "none"),
    ("nf4", "model"),
    ("bf16", "sequential"),
)
Estimator = Callable[[str, str], "MemoryEstimate"]  # (precision, offload) -> one run's needs


@dataclass(frozen=True)
class Fit:
    """A composition's predicted memory against what the engine's device has free, shown
    before it runs; a run that does not fit is not started."""

    fits: bool
    text: str
    proposal: tuple[str, str] | None = None


def fit_for(engine: Engine, composition: Composition) -> Fit:
    """:func:`check_fit` of one run of ``composition`` on ``engine`` as it is now."""
    info = engine.info
    return check_fit(
        lambda precision, offload: engine.estimate(composition, precision, offload),
        (info.precision, info.offload), engine.memory_available(), info.device,
        refusals(info.device), engine.lock,
    )  # fmt: skip


def check_fit(
    estimate: Estimator, mode: tuple[str, str], available: int | None, device: str,
    refused: Refusals, lock: str | None,
) -> Fit:  # fmt: skip
    """Whether the run fits in ``available`` bytes of ``device`` in ``mode`` (precision,
    offload); when it does not, the first of :data:`CANDIDATES` that would, and how to get it.
    ``available`` None: unknown until the run (ZeroGPU), so the run goes ahead."""
    now = estimate(*mode)
    if available is None:
        return Fit(True, f"Predicted peak {now.describe()}.")
    head = f"Predicted peak {now.describe()}; {_gib(available)} GiB available on {device}."
    if now.fits(available):
        return Fit(True, head)
    proposal = first_fitting(estimate, mode, available, device, refused)
    if proposal is None:
        advice = "No precision or offload fits it here: use a smaller size or fewer references."
    else:
        need = _gib(estimate(*proposal).peak)
        advice = f"{how_to(*proposal, lock=lock)} (about {need} GiB), or a smaller size."
    return Fit(False, f"{head} This run does not fit, so it will not start. {advice}", proposal)


def first_fitting(
    estimate: Estimator, mode: tuple[str, str], budget: int, device: str, refused: Refusals
) -> tuple[str, str] | None:
    """The first candidate other than ``mode`` that runs here and needs at most ``budget``.
    Off CUDA, offloading moves nothing out of the memory it shares, so it is never proposed."""
    for candidate in CANDIDATES:
        if candidate == mode or candidate in refused:
            continue
        if candidate[1] != "none" and not device.startswith("cuda"):
            continue
        if estimate(*candidate).fits(budget):
            return candidate
    return None


def how_to(precision: str, offload: str, *, lock: str | None) -> str:
    """The exact setting (or, on a locked studio, the flags) that selects a mode."""
    if lock is None:
        return (
            f"In Settings › Engine choose precision {precision} and offload {offload}, "
            "then reload the engine"
        )
    return f"Restart the studio with --precision {precision} --offload {offload}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def after_out_of_memory(engine: Engine, composition: Composition) -> str:
    """What to change once a run of ``composition`` ran out of memory: the first mode that
    needs less than this one (the estimate was not enough, so it is the bound), and how."""
    info = engine.info
    mode = (info.precision, info.offload)

    def estimate(precision: str, offload: str) -> MemoryEstimate:
        return engine.estimate(composition, precision, offload)

    budget = estimate(*mode).peak - 1
    smaller = first_fitting(estimate, mode, budget, info.device, refusals(info.device))
    if smaller is None:
        return "To fit, use a smaller output size or fewer references."
    return f"To fit: {how_to(*smaller, lock=engine.lock)}; or use a smaller size."
