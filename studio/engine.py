"""The studio's one pipeline, and the per-session cancel tokens.

Every browser session shares one :class:`Engine`; it runs one generation at a time (a lock, on
top of gradio's queue, so direct callers such as tests are safe too). As-you-type validation
plans on a private copy of the tokenizer: a fast tokenizer is not safe to use from two threads
at once, and a run tokenizes its prompt while the user keeps typing.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import sigma_core
from sigma_core import Composition, Plan, SigmaOutput, SigmaPipeline
from studio.options import StudioOptions
from studio.zerogpu import gpu_function

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
PREVIEW_SIDE = 256  # the live preview's longer side: big enough to judge, small to stream
# step (1-based), total steps, live preview image (None when it could not be made)
StepReport = Callable[[int, int, Image.Image | None], None]


@dataclass(frozen=True)
class EngineInfo:
    """What the banner says about the loaded weights."""

    weights: str
    preview: bool
    precision: str
    device: str
    weights_bytes: int


class Engine:
    """Owns the pipeline: planning for the sequence view, generation behind a lock."""

    def __init__(self, pipe: SigmaPipeline, *, weights: str) -> None:
        self.pipe = pipe
        self._run_lock = threading.Lock()
        self._plan_lock = threading.Lock()
        self._preview_failed = False
        self._run = gpu_function(self._run)  # ZeroGPU attaches a GPU for this call only
        self._planner = copy.copy(pipe)
        self._planner.tokenizer = copy.deepcopy(pipe.tokenizer)
        tensors = [*pipe.model.parameters(), *pipe.model.buffers(), *pipe.vae.parameters()]
        self.info = EngineInfo(
            weights=f"{sigma_core.PREVIEW_NOTICE}: {weights}" if pipe.preview else weights,
            preview=pipe.preview,
            precision=DTYPE_NAMES.get(pipe.dtype, str(pipe.dtype)),
            device=str(pipe.device),
            weights_bytes=sum(t.numel() * t.element_size() for t in tensors),
        )

    def plan(self, composition: Composition, images: dict[int, Image.Image]) -> Plan:
        """The plan this engine would run (its tokenizer, its position budget)."""
        with self._plan_lock:
            return self._planner.plan(composition, images)

    def generate(
        self, composition: Composition, *, cancel: Any, on_step: StepReport | None = None
    ) -> SigmaOutput:
        """One image; ``cancel`` (anything with ``is_set()``) stops it within one step."""
        total = composition.settings.num_timesteps - 1

        def step_end(pipe: SigmaPipeline, step: int, t: Any, tensors: dict[str, Any]) -> None:
            if on_step is not None:
                on_step(step + 1, total, self.live_preview(tensors))

        with self._run_lock:
            return self._run(composition, cancel, step_end)

    def _run(self, composition: Composition, cancel: Any, step_end: Any) -> SigmaOutput:
        """The pipeline call: the part that needs the GPU (wrapped for ZeroGPU in __init__)."""
        return self.pipe(
            composition,
            callback_on_step_end=step_end,
            callback_on_step_end_tensor_inputs=sigma_core.LIVE_PREVIEW_TENSORS,
            cancel=cancel,
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
        device = self.pipe.device
        if device.type == "cuda":
            used = torch.cuda.memory_allocated(device)
            return f"{_gib(used)} GiB of GPU memory in use"
        return f"{_gib(_resident_bytes())} GiB of process memory in use"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def _resident_bytes() -> int:
    """The process's resident set size (Linux /proc); 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def load_engine(options: StudioOptions) -> Engine:
    """The engine the options ask for; raises a SigmaError (bad device, missing weights)."""
    dtype = DTYPES.get(options.precision) if options.precision else None
    if options.model is None:
        pipe = SigmaPipeline.preview_engine(device=options.device, dtype=dtype)
        return Engine(pipe, weights="tiny random checkpoint, results are noise")
    pipe = SigmaPipeline.from_pretrained(
        options.model, sigma_weights=options.sigma_weights, dtype=dtype, device=options.device
    )
    weights = options.model + (f" + SIGMA {options.sigma_weights}" if options.sigma_weights else "")
    return Engine(pipe, weights=weights)


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
