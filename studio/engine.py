"""The studio's one pipeline, and the per-session cancel tokens.

Every browser session shares one :class:`Engine`; it runs one generation at a time (a lock, on
top of gradio's queue, so direct callers such as tests are safe too), and changes precision or
offload only between runs. As-you-type validation plans through the pipeline's planner, which
takes its own lock (a fast tokenizer is not safe to use from two threads at once, and a run
tokenizes its prompt while the user keeps typing).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sigma_core import (
    Composition,
    MemoryEstimate,
    Plan,
    SigmaError,
    SigmaOutOfMemoryError,
    SigmaOutput,
    SigmaPipeline,
    frontend,
)
from studio.options import StudioOptions, engine_lock
from studio.zerogpu import gpu_function, on_zerogpu

log = logging.getLogger(__name__)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
PREVIEW_SIDE = 256  # the live preview's longer side: big enough to judge, small to stream
PREVIEW_WEIGHTS = "tiny random checkpoint, results are noise"
# step (1-based), total steps, live preview image (None when it could not be made)
StepReport = Callable[[int, int, Image.Image | None], None]
# a phase starting (plan, encode, prefill, denoise, decode), done and total (encode: references)
PhaseReport = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EngineInfo:
    """What the banner says about the loaded weights."""

    weights: str
    preview: bool
    precision: str
    offload: str
    vae_dtype: str
    device: str
    weights_bytes: int


class Engine:
    """Owns the pipeline: planning for the sequence view, generation behind a lock."""

    def __init__(self, pipe: SigmaPipeline, *, weights: str, options: StudioOptions) -> None:
        self.weights = weights
        self.options = options  # what ``pipe`` was loaded with; a switch reloads from them
        self._run_lock = threading.Lock()
        self._plan_lock = threading.Lock()
        self._run = gpu_function(self._run)  # ZeroGPU attaches a GPU for this call only
        self._use(pipe)

    @property
    def lock(self) -> str | None:
        """Why the page may not switch this engine, which every session shares; None if it may."""
        return engine_lock(self.options, os.environ)

    def _use(self, pipe: SigmaPipeline) -> None:
        self.pipe = pipe
        self._preview_failed = False
        tensors = [*pipe.model.parameters(), *pipe.model.buffers(), *pipe.vae.parameters()]
        weights = f"{frontend.PREVIEW_NOTICE}: {self.weights}" if pipe.preview else self.weights
        self.info = EngineInfo(
            weights=weights,
            preview=pipe.preview,
            precision=pipe.precision.name,
            offload=pipe.offload.mode,
            vae_dtype=DTYPE_NAMES.get(pipe.vae.dtype, str(pipe.vae.dtype)),
            device=str(pipe.device),
            weights_bytes=sum(t.numel() * t.element_size() for t in tensors),
        )

    def switch(self, precision: str, offload: str) -> None:
        """Reload the weights with another precision and offload: after the run in progress,
        before the next (the run lock). The new engine loads beside the old one, which stays
        when it fails (this machine cannot run the mode, a missing package...). When the two
        do not fit together, the old one is released first, and loaded again if the new one
        fails too."""
        wanted = replace(self.options, precision=precision, offload=offload)
        with self._run_lock:
            try:
                pipe = load_pipeline(wanted)
            except SigmaOutOfMemoryError:
                self._load_alone(wanted)
            else:
                with self._plan_lock:
                    self._use(pipe)
            self.options = wanted

    def _load_alone(self, wanted: StudioOptions) -> None:
        """Use ``wanted`` with the old engine released first; the old one again on failure.
        Planning waits meanwhile (the plan lock) rather than see no engine."""
        with self._plan_lock:
            self.pipe = None
            _free_memory()
            try:
                self._use(load_pipeline(wanted))
            except SigmaError as failure:
                _free_memory()
                try:
                    self._use(load_pipeline(self.options))
                except SigmaError as again:
                    raise SigmaError(
                        f"{failure}; the previous engine did not load again either ({again}): "
                        "restart the studio"
                    ) from again
                raise

    def plan(self, composition: Composition, images: dict[int, Image.Image]) -> Plan:
        """The plan this engine would run (its tokenizer, its position budget)."""
        with self._plan_lock:
            return self.pipe.planner.plan(composition, images)

    def generate(
        self, composition: Composition, *, cancel: Any, on_step: StepReport | None = None,
        on_phase: PhaseReport | None = None, seeds: Sequence[int] = (),
    ) -> SigmaOutput:  # fmt: skip
        """One image per seed of ``seeds`` (none: one, with the composition's seed), in one
        pipeline call that encodes and prefills once (SigmaOutput.split gives each image);
        ``cancel`` (anything with ``is_set()``) stops it within one step; ``on_phase`` hears
        each phase start ("image", i, n as image i + 1 of several starts), ``on_step`` each
        step end."""
        total = composition.settings.num_timesteps - 1

        def step_end(pipe: SigmaPipeline, step: int, t: Any, tensors: dict[str, Any]) -> None:
            if on_step is not None:
                on_step(step + 1, total, self.live_preview(tensors))

        # each image's noise as a pipeline call of one image with its seed draws it
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds] or None
        with self._run_lock:
            return self._run(composition, generators, cancel, step_end, on_phase)

    def _run(
        self, composition: Composition, generators: list[torch.Generator] | None, cancel: Any,
        step_end: Any, on_phase: Any,
    ) -> SigmaOutput:  # fmt: skip
        """The pipeline call: the part that needs the GPU (wrapped for ZeroGPU in __init__)."""
        return self.pipe(
            composition,
            generator=generators,
            callback_on_step_end=step_end,
            callback_on_step_end_tensor_inputs=frontend.LIVE_PREVIEW_TENSORS,
            cancel=cancel,
            callback_on_phase=on_phase,
        )

    def live_preview(self, tensors: dict[str, Any]) -> Image.Image | None:
        """The step's estimate of the final image (x0 = x_t - t·v through sigma_core's linear
        latent-to-RGB map), scaled to :data:`PREVIEW_SIDE`: cheap enough for every step. A failure
        turns the preview off for this engine, logged, and never stops a run."""
        if self._preview_failed:
            return None
        try:
            h, w = tensors["latents"].shape[-2:]
            scale = PREVIEW_SIDE / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            return self.pipe.live_preview(tensors, size=size)
        except Exception:
            log.exception("live preview failed; runs go on without it")
            self._preview_failed = True
            return None

    def memory_in_use(self) -> str:
        """Memory held now: the GPU's allocator on CUDA, the process's resident set elsewhere."""
        device = torch.device(self.info.device)
        if device.type == "cuda":
            used = torch.cuda.memory_allocated(device)
            return f"{_gib(used)} GiB of GPU memory in use"
        return f"{_gib(_resident_bytes())} GiB of process memory in use"

    def estimate(self, composition: Composition, precision: str, offload: str) -> MemoryEstimate:
        """The memory one run of ``composition`` needs on this engine's weights in ``precision``
        and ``offload``: its own modes, or those a switch would load."""
        other = {"precision": precision, "offload": offload}
        if (precision, offload) == (self.info.precision, self.info.offload):
            other = {}  # the engine's own modes, device map included
        with self._plan_lock:
            return self.pipe.estimate_memory(composition, **other)

    def memory_available(self) -> int | None:
        """Bytes a run on this engine may use: its device's free memory plus what the engine
        already holds there (the estimate counts its weights). None on ZeroGPU, where a GPU is
        attached for each run only."""
        if on_zerogpu():
            return None
        available = frontend.available_memory(torch.device(self.info.device))
        return None if available is None else available + self.info.weights_bytes


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def _resident_bytes() -> int:
    """The process's resident set size (Linux /proc); 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _free_memory() -> None:
    """Return a released engine's memory: Python's cycles, then CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_pipeline(options: StudioOptions) -> SigmaPipeline:
    """The pipeline the options ask for; raises a SigmaError (a mode this machine cannot run,
    a bad device, missing weights), checked by the engine before any weight is read."""
    modes = {
        "precision": options.precision,
        "offload": options.offload,
        "vae_dtype": options.vae_dtype,
        "device_map": options.device_map,
    }
    if options.model is None:
        return SigmaPipeline.preview_engine(device=options.device, **modes)
    return SigmaPipeline.from_pretrained(
        options.model, sigma_weights=options.sigma_weights, device=options.device, **modes
    )


def load_engine(options: StudioOptions) -> Engine:
    """The engine the options ask for (see :func:`load_pipeline`)."""
    if options.model is None:
        weights = PREVIEW_WEIGHTS
    else:
        weights = options.model + (
            f" + SIGMA {options.sigma_weights}" if options.sigma_weights else ""
        )
    return Engine(load_pipeline(options), weights=weights, options=options)


@functools.cache
def refusals(device: str) -> dict[tuple[str, str], str]:
    """Why each (precision, offload) pair cannot run on ``device``; pairs that run are absent.
    Found by loading the tiny preview engine in each mode (a fraction of a second each), so
    the reasons are the engine's own checks and messages, nothing re-implemented here; any
    other failure of a trial (a library's kernels missing for this GPU) refuses the mode too.
    On ZeroGPU there is no GPU to try outside a run, so nothing is marked."""
    out: dict[tuple[str, str], str] = {}
    if on_zerogpu():
        return out
    for precision in frontend.PRECISIONS:
        for offload in frontend.OFFLOAD_MODES:
            try:
                SigmaPipeline.preview_engine(device=device, precision=precision, offload=offload)
            except SigmaError as e:
                out[(precision, offload)] = str(e)
            except Exception as e:  # a probe: whatever fails here cannot run here
                log.warning("%s, offload %s fails on %s", precision, offload, device, exc_info=e)
                out[(precision, offload)] = f"{precision}: loading fails ({type(e).__name__}: {e})"
    return out


@dataclass(frozen=True)
class RunToken:
    """A run's cancel token: the session's Cancel button, or the studio's time limit."""

    cancel: threading.Event
    deadline: float  # time.monotonic() after which the run stops

    def is_set(self) -> bool:
        return self.cancel.is_set() or self.timed_out()

    def timed_out(self) -> bool:
        return time.monotonic() > self.deadline


@dataclass
class Sessions:
    """One cancel token per browser session, so one session's Cancel never stops another's
    run. A token is armed (cleared) when Generate is pressed, before the run queues, so a
    Cancel pressed while the run waits in the queue still stops it."""

    _tokens: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def arm(self, session: str) -> threading.Event:
        with self._lock:
            self._tokens[session] = event = threading.Event()
            return event

    def token(self, session: str) -> threading.Event:
        with self._lock:
            return self._tokens.setdefault(session, threading.Event())

    def cancel(self, session: str) -> bool:
        """Stop this session's run; False when it has none armed."""
        with self._lock:
            event = self._tokens.get(session)
        if event is None:
            return False
        event.set()
        return True

    def forget(self, session: str) -> None:
        """A closed session: stop its run and drop its token."""
        with self._lock:
            event = self._tokens.pop(session, None)
        if event is not None:
            event.set()


@dataclass(frozen=True)
class Studio:
    """Everything the UI's events share: the engine, the sessions' cancel tokens, the options
    and the folder where results and restored images live (gradio serves files from it)."""

    engine: Engine
    sessions: Sessions
    options: StudioOptions
    files: Path
