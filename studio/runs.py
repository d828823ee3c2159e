"""Generation runs: streamed progress, cancel, the saved results and the history the browser
keeps, and the comparisons (a result against a reference; the leakage A/B).

A run is a generator of :class:`Progress` items ending with one :class:`Outcome`: the engine
works in a thread and reports each step through a queue, so the caller (the gradio layout, a
test) sees progress as it happens and a run that is abandoned midway is cancelled.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

import sigma_core
from sigma_core import (
    Composition,
    GenerationCancelled,
    SigmaError,
    SigmaInputError,
    SigmaOutOfMemoryError,
    SigmaOutput,
    frontend,
)
from studio import modes
from studio.engine import Engine, RunToken, Sessions
from studio.forms import MAX_IMAGES_PER_RUN, Draft, to_composition, without_images

log = logging.getLogger(__name__)
HISTORY_LIMIT = 48  # results kept in the browser (thumbnails and compositions only)
THUMB_SIDE = 192
RESULTS = "results"


@dataclass(frozen=True)
class Progress:
    """Where a run is, in image ``image`` (1-based) of ``images``: a phase starting ("plan",
    "encode" with ``step`` references of ``steps`` done, ``reused`` of them from the latent
    cache, "prefill", "decode"), or denoising step ``step`` of ``steps`` done, ``elapsed_s``
    seconds into the denoising loop."""

    image: int
    images: int
    step: int
    steps: int
    elapsed_s: float = 0.0
    preview: Image.Image | None = None
    phase: str = "denoise"
    reused: int = 0


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the history entries of the images made (newest first), and the
    message to show when it stopped early (the composition on screen is never touched)."""

    entries: tuple[dict[str, Any], ...] = ()
    error: str | None = None
    cancelled: bool = False


RunItem = Progress | Outcome


def run_seeds(seed: int | None, count: int) -> list[int]:
    """``count`` consecutive seeds from ``seed``, or from a fresh random one."""
    if not 1 <= count <= MAX_IMAGES_PER_RUN:
        raise SigmaInputError(
            f"settings.images_per_run: {count} must be from 1 to {MAX_IMAGES_PER_RUN}"
        )
    start = secrets.randbelow(frontend.MAX_SEED - count) if seed is None else seed
    if start + count > frontend.MAX_SEED:
        raise SigmaInputError(f"settings.seed: {start} + {count} images passes 2^63 - 1")
    return list(range(start, start + count))


def generate(
    engine: Engine, sessions: Sessions, session: str, draft: Draft, *, files: Path,
    time_limit_s: float,
) -> Iterator[RunItem]:  # fmt: skip
    """Run the draft: ``images_per_run`` images with consecutive seeds."""
    try:
        comp = to_composition(draft)
        seeds = run_seeds(comp.settings.seed, int(draft.settings.images_per_run))
    except SigmaError as e:
        yield Outcome(error=str(e))
        return
    yield from stream(
        engine, sessions, session, comp, seeds=seeds, files=files, time_limit_s=time_limit_s
    )


def stream(
    engine: Engine, sessions: Sessions, session: str, composition: Composition, *,
    seeds: Sequence[int] = (), files: Path, time_limit_s: float,
) -> Iterator[RunItem]:  # fmt: skip
    """Make one image per seed (none: one, with the composition's seed), reporting every
    step, in one engine call: the references are encoded and the prompt prefilled once, and
    each image's steps follow. Each image is saved as its own result, those done before a
    cancel or the time limit too. When one image does not fit in memory, nothing starts (more
    images need no more memory)."""
    try:
        fit = modes.fit_for(engine, composition)
    except SigmaError as e:
        fit = modes.Fit(False, str(e))
    if not fit.fits:
        yield Outcome(error=fit.text)
        return
    token = RunToken(sessions.token(session), time.monotonic() + time_limit_s)
    events: queue.Queue[Any] = queue.Queue()
    done = object()

    def work() -> None:
        try:
            report = _Reporter(events, max(len(seeds), 1))
            stopped: GenerationCancelled | None = None
            try:
                out = engine.generate(
                    composition, seeds=seeds, cancel=token, on_step=report.step,
                    on_phase=report.phase,
                )  # fmt: skip
            except GenerationCancelled as e:
                if e.partial is None:
                    raise
                out, stopped = e.partial, e  # the images done before it are the user's
            for result in out.split():
                events.put(save_result(result, files, reused=report.reused))
            if stopped is not None:
                events.put(stopped)
        except Exception as e:  # every failure is reported to the consumer, bugs included
            events.put(e)
        finally:
            events.put(done)

    worker = threading.Thread(target=work, name=f"sigma-run-{session[:8]}", daemon=True)
    worker.start()
    entries: list[dict[str, Any]] = []
    failure: BaseException | None = None
    try:
        finished = False
        while not finished:
            items = _waiting(events)
            finished = items[-1] is done  # the worker's last word
            for item in items:
                if isinstance(item, dict):
                    entries.insert(0, item)
                elif item is not done and not isinstance(item, Progress):
                    failure = item
            newest = next((i for i in reversed(items) if isinstance(i, Progress)), None)
            if newest is not None and not finished:
                yield newest
    finally:
        if worker.is_alive():  # the consumer went away (page closed): stop the engine
            token.cancel.set()
    error = None
    if failure is not None:
        error = describe_failure(
            failure, engine, token, time_limit_s, composition, kept=len(entries),
            images=max(len(seeds), 1),
        )  # fmt: skip
    yield Outcome(tuple(entries), error, cancelled=isinstance(failure, GenerationCancelled))


class _Reporter:
    """Puts a run's phases and steps on ``events`` as :class:`Progress` of the image running
    (of ``images``); the steps carry the seconds since its denoising began, so the time left
    follows the step rate alone (encoding and prefill, however long, do not make it up)."""

    def __init__(self, events: queue.Queue[Any], images: int) -> None:
        self.events, self.image, self.images = events, 1, images
        self.denoise_start = time.monotonic()
        self.reused = 0  # references whose latents came from the engine's cache

    def phase(self, name: str, done: int, total: int) -> None:
        if name == "image":  # image done + 1 of several: its denoising follows
            self.image = done + 1
            return
        if name == "denoise":
            self.denoise_start = time.monotonic()
        if name == "reuse":  # a reference done, from the cache: still the encode phase
            self.reused += 1
            name = "encode"
        progress = Progress(self.image, self.images, done, total, phase=name, reused=self.reused)
        self.events.put(progress)

    def step(self, step: int, steps: int, preview: Image.Image | None) -> None:
        elapsed = time.monotonic() - self.denoise_start
        self.events.put(Progress(self.image, self.images, step, steps, elapsed, preview))


def _waiting(events: queue.Queue[Any]) -> list[Any]:
    """The next item and every one already queued behind it. A consumer slower than the
    engine (a browser, a remote API caller) then gets the newest step, not a backlog: what it
    shows is where the run is, and a Cancel lands within a step of what it shows."""
    items = [events.get()]
    while True:
        try:
            items.append(events.get_nowait())
        except queue.Empty:
            return items


def describe_failure(
    error: BaseException, engine: Engine, token: RunToken, time_limit_s: float,
    composition: Composition, *, kept: int = 0, images: int = 1,
) -> str:  # fmt: skip
    """The message for a run of ``composition`` (``images`` per run) that stopped: what
    happened, the images ``kept`` (those done before a cancel), and what to do."""
    if isinstance(error, GenerationCancelled):
        made = f"; {kept} image{'s' * (kept != 1)} kept" if kept else ""
        if token.timed_out() and not token.cancel.is_set():
            fewer = "fewer steps, fewer images per run" if images > 1 else "fewer steps"
            return (
                f"stopped {str(error).removeprefix('cancelled ')}: the run took longer than this "
                f"studio's time limit of {time_limit_s:g} s{made}; use {fewer} or a smaller size"
            )
        return f"{error}{made}; the composition is unchanged, press Generate to run it again"
    if isinstance(error, SigmaOutOfMemoryError):
        return f"{error}. {modes.after_out_of_memory(engine, composition)}"
    if isinstance(error, SigmaError):
        return str(error)
    log.error("engine error", exc_info=error)
    advice = modes.after_out_of_memory(engine, composition)
    return (
        f"engine error ({type(error).__name__}: {error}); the studio keeps running and your "
        f"composition is kept. If it happens again and memory is short: {advice}"
    )


def save_result(out: SigmaOutput, files: Path, *, reused: int = 0) -> dict[str, Any]:
    """Save the PNG (composition embedded) and describe it for the history; ``reused``
    references of the run came from the latent cache, not the VAE."""
    folder = files / RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = out.save(folder / f"sigma-{stamp}-{out.seed}.png")
    image = out.images[0]
    return {
        "file": path.name,
        "thumb": thumbnail_uri(image),
        "seed": out.seed,
        "size": list(image.size),
        "settings": out.settings.to_dict(),
        "timings": {k: round(v, 3) for k, v in out.timings.items()},
        "references": {"placed": out.plan.num_references, "reused": reused},
        "preview": out.preview,
        "name": out.composition.name,
        "prompt": out.composition.prompt,
        "warnings": [*out.plan.warnings, *out.warnings],
        "preset": frontend.dumps_preset(without_images(out.composition)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def thumbnail_uri(image: Image.Image) -> str:
    """A small JPEG data URI: what the browser's history keeps instead of the image."""
    small = image.copy()
    small.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- history


def add_to_history(history: Any, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """New results first, the oldest dropped past :data:`HISTORY_LIMIT`."""
    return [*entries, *valid_history(history)][:HISTORY_LIMIT]


def valid_history(history: Any) -> list[dict[str, Any]]:
    """The entries of a browser's history that are well formed (browser storage is the
    user's to edit, so nothing in it is trusted)."""
    if not isinstance(history, list):
        return []
    keys = {"file": str, "thumb": str, "seed": int, "preset": str}
    return [
        e
        for e in history
        if isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in keys.items())
    ][:HISTORY_LIMIT]


def result_file(entry: dict[str, Any], files: Path) -> Path | None:
    """The saved PNG of a history entry, if this server still has it. Only a plain file name
    inside the results folder is accepted: the entry comes from the browser."""
    name = str(entry.get("file", ""))
    folder = (files / RESULTS).resolve()
    if not name or Path(name).name != name or name.startswith("."):
        return None
    path = (folder / name).resolve()
    return path if path.parent == folder and path.is_file() else None


def gallery_items(history: Any, files: Path) -> list[tuple[Image.Image | str, str]]:
    """The results gallery: the full image while the server has it, else the thumbnail."""
    entries = valid_history(history)
    varying = varying_settings(entries)
    items = []
    for entry in entries:
        path = result_file(entry, files)
        try:
            image = str(path) if path else frontend.load_image(entry["thumb"], name="thumb")
        except SigmaError:
            continue
        items.append((image, caption(entry, varying)))
    return items


# how a caption names a setting that tells results apart
SHORT_NAMES = {
    "num_timesteps": "steps", "cfg_text_scale": "cfg text", "cfg_img_scale": "cfg image",
    "cfg_interval": "interval", "timestep_shift": "shift", "cfg_renorm_type": "renorm",
    "cfg_renorm_min": "renorm min", "attribute_projection": "W_tau",
}  # fmt: skip


def varying_settings(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The settings (the seed and size aside) whose values differ between ``entries``: what
    tells their results apart."""
    values: dict[str, set[str]] = {}
    for entry in entries:
        settings = entry.get("settings")
        for name, value in (settings if isinstance(settings, dict) else {}).items():
            values.setdefault(name, set()).add(json.dumps(value, sort_keys=True))
    return [n for n, seen in values.items() if len(seen) > 1 and n not in ("seed", "size")]


def caption(entry: dict[str, Any], varying: Sequence[str] = ()) -> str:
    """A result's title (its name, or its prompt's start), seed and size, and the settings in
    ``varying`` as it had them."""
    size = entry.get("size") or ["?", "?"]
    title = str(entry.get("name") or entry.get("prompt") or "untitled")
    title = title if len(title) <= 40 else title[:39] + "…"
    settings = entry.get("settings") if isinstance(entry.get("settings"), dict) else {}
    parts = [title, f"seed {entry['seed']}", f"{size[0]}×{size[1]}"]
    parts += [_setting_text(n, settings[n]) for n in varying if n in settings]
    return " · ".join(parts + (["preview engine"] if entry.get("preview") else []))


def _setting_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{SHORT_NAMES.get(name, name)} {'on' if value else 'off'}"
    return f"{SHORT_NAMES.get(name, name)} {value}"


def placed_references(entry: dict[str, Any]) -> list[int]:
    """The slots a result's prompt placed, each once: what it can be compared with."""
    try:
        prompt = json.loads(entry["preset"])["prompt"]
    except (ValueError, KeyError, TypeError):
        return []
    return list(dict.fromkeys(frontend.placed_slots(prompt))) if isinstance(prompt, str) else []


def entry_composition(entry: dict[str, Any], files: Path) -> Composition:
    """A result's composition: from its PNG (references embedded) while the server has it,
    else from the browser's copy (prompt, slots and settings, without the images)."""
    path = result_file(entry, files)
    if path is not None:
        return sigma_core.read_png_composition(path)
    return frontend.loads_preset(entry["preset"], where="history entry")


# ----------------------------------------------------------------------------- comparisons


def compare_label(slot: int) -> str:
    """What the two sides of a comparison with reference ``slot`` are."""
    return f"Compare: left, reference [{slot}] · right, the result"


def compare_with_reference(
    entry: dict[str, Any], slot: int, files: Path
) -> tuple[Image.Image, Image.Image]:
    """(reference ``slot``, the result), the reference cropped and scaled to the result's
    frame so the slider lines them up."""
    path = result_file(entry, files)
    if path is None:
        raise SigmaInputError("compare: this result's image is no longer on the server")
    comp = sigma_core.read_png_composition(path)
    ref = comp.reference(slot)
    if ref is None or ref.image is None:
        placed = ", ".join(str(r.slot) for r in comp.references if r.image is not None)
        raise SigmaInputError(
            f"compare: the result has no reference {slot} (it was made from {placed or 'none'})"
        )
    result = frontend.load_image(path, name="result")
    return ImageOps.fit(comp.load_image(ref), result.size), result


def ab_composition(entry: dict[str, Any], files: Path) -> Composition:
    """The leakage A/B's other half: the result's composition and seed with the mask flipped."""
    comp = entry_composition(entry, files)
    if result_file(entry, files) is None:
        raise SigmaInputError("A/B: this result's image is no longer on the server; make it again")
    settings = comp.settings.replace(seed=entry["seed"], mask=not comp.settings.mask)
    return replace(comp, settings=settings)


AB_LABEL = "A/B: left, SIGMA's mask on · right, mask off (same seed)"


def ab_pair(entry: dict[str, Any], other: dict[str, Any], files: Path) -> tuple[str, str]:
    """(mask on, mask off) image files of a result and its A/B twin (:data:`AB_LABEL` says
    which side is which)."""
    first, second = result_file(entry, files), result_file(other, files)
    if first is None or second is None:
        raise SigmaInputError("A/B: a result's image is no longer on the server")
    mask_on = json.loads(entry["preset"])["settings"]["mask"]
    return (str(first), str(second)) if mask_on else (str(second), str(first))
