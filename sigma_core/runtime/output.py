"""What a run returns, and the guards every run goes through (cancel, out of memory)."""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sigma_core.errors import (
    GenerationCancelled,
    SigmaError,
    SigmaInputError,
    SigmaOutOfMemoryError,
    SigmaResourceError,
)
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.preset import write_png
from sigma_core.inputs.settings import Settings
from sigma_core.model.bagel import patchify, unpatchify
from sigma_core.planning.sequence import Plan
from sigma_core.runtime.contexts import CALLBACK_TENSORS, Denoiser, StepVelocities

if TYPE_CHECKING:
    from sigma_core.runtime.placement import Offload

PREVIEW_NOTICE = "preview engine (random weights)"
# a step callback: (pipeline, step, t, tensors) -> None, or {"latents": ...} to replace them
StepCallback = Callable[[Any, int, torch.Tensor, dict[str, Any]], Any]
OUTPUT_TYPES = ("pil", "np", "latent")
# a phase callback: (phase, done, total) as a phase starts (encode: of the references,
# denoise: of its steps, decode: of the images); "encode" again after each reference (k of n
# done); in a call of n > 1 images, ("image", i, n) as image i + 1's denoising loop starts
PhaseCallback = Callable[[str, int, int], Any]
PHASES = {  # a run's phases, in order, as an out-of-memory message names each
    "plan": "planning the run", "encode": "encoding the references",
    "prefill": "prefilling the context", "denoise": "denoising", "decode": "decoding",
}  # fmt: skip


class RunPhases:
    """The phases of one run: each reported to ``callback`` as it starts, timed into
    :attr:`timings` (``name + "_s"``), and run with its module on the device (``offload``) and
    out of memory turned into a :class:`SigmaOutOfMemoryError` that names the phase. A phase
    run again (denoise, once per image) adds to its time."""

    def __init__(self, device: torch.device, offload: Offload, callback: PhaseCallback | None):
        self.device, self.offload, self.callback = device, offload, callback
        self.timings: dict[str, float] = {}

    def report(self, name: str, done: int = 0, total: int = 1) -> None:
        if self.callback is not None:
            self.callback(name, done, total)

    @contextmanager
    def __call__(
        self, name: str, module: torch.nn.Module | None = None, total: int = 1
    ) -> Iterator[None]:
        self.report(name, 0, total)
        start = time.perf_counter()
        placed = self.offload.using(module) if module is not None else nullcontext()
        with out_of_memory(PHASES[name], self.device), placed:
            yield
        key = f"{name}_s"
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start


def denoise_each(
    phase: RunPhases, denoise: Denoiser, noises: Sequence[tuple[torch.Tensor, int]],
    ts: torch.Tensor, on_step: Callable[[int, torch.Tensor, StepVelocities], torch.Tensor],
) -> tuple[list[torch.Tensor], int, GenerationCancelled | None]:  # fmt: skip
    """Each image's Euler loop in turn from its noise tokens (see :meth:`Denoiser.sample`), a
    "denoise" phase announced as ("image", i, n) when n > 1. Returns each image's final latents
    [1, z, H/8, W/8], the passes made, and a cancel that stopped the loops after image 1: it
    names its image, and holds no traceback (that would keep the KV cache). A cancel before
    that is raised."""
    finals: list[torch.Tensor] = []
    passes, n = 0, len(noises)
    for i, (x, _) in enumerate(noises):
        if n > 1:
            phase.report("image", i, n)
        try:
            with phase("denoise", denoise.model, total=len(denoise.steps)):
                x, done = denoise.sample(x, ts, on_step)
        except GenerationCancelled as e:
            if n == 1:
                raise
            where = f"during image {i + 1} of {n}, {str(e).removeprefix('cancelled ')}"
            stopped = GenerationCancelled(f"cancelled {where}", step=e.step)
            if not finals:
                raise stopped from None
            return finals, passes, stopped
        finals.append(unpatchify(x, denoise.grid, denoise.model.latent_channels))
        passes += done
    return finals, passes, None


@dataclass
class SigmaOutput:
    """The result of one run. ``composition`` carries the seed actually used, so saving it
    reproduces the image. A run of n images (``num_images_per_prompt``) holds them all, in
    order: n PIL images or an array [n, H, W, 3], latents [n, z, H/8, W/8], each image's seed
    in ``seeds`` (``seed`` and the composition's are the first's); :meth:`split` gives one
    result per image."""

    images: list[Image.Image] | np.ndarray | None
    latents: torch.Tensor  # [n, z, H/8, W/8], fp32 (n = 1 but for num_images_per_prompt)
    seed: int
    composition: Composition
    plan: Plan
    preview: bool = False
    num_passes: int = 0  # LLM passes over the noise block, all steps and branches
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. what saving could not store
    seeds: list[int] = field(default_factory=list)  # each image's seed; [seed] when not given

    def __post_init__(self) -> None:
        self.seeds = self.seeds or [self.seed]

    def split(self) -> list[SigmaOutput]:
        """One result per image, each with its own seed in its composition (so each saves and
        reproduces on its own), its share of the passes, and the whole call's timings."""
        n = len(self.seeds)
        if n == 1:
            return [self]
        images = self.images
        return [
            replace(
                self,
                images=None if images is None else images[i : i + 1],
                latents=self.latents[i : i + 1],
                seed=seed,
                seeds=[seed],
                composition=replace(self.composition, settings=self.settings.replace(seed=seed)),
                num_passes=self.num_passes // n,
                timings=dict(self.timings),
                warnings=list(self.warnings),
            )
            for i, seed in enumerate(self.seeds)
        ]

    @property
    def settings(self) -> Settings:
        return self.composition.settings

    @property
    def notice(self) -> str | None:
        return PREVIEW_NOTICE if self.preview else None

    def save(
        self, path: str | os.PathLike, *, overwrite: bool = False, rescue: bool = False
    ) -> Path:
        """PNG with the composition (the placed references embedded) in its metadata, written
        atomically. Returns the path written: an existing file is kept unless ``overwrite``, and
        the image goes to ``stem-2.png``; that, and references left out, are added to
        ``warnings``. With ``rescue``, an image that cannot be written there (the disk filled
        up, the folder went away during the run) is saved in the system's temporary folder and
        the error says where, so a long run is never lost."""
        if not isinstance(self.images, list) or not self.images:
            raise SigmaInputError("save: this result has no PIL image (use output_type='pil')")
        if len(self.images) > 1:
            raise SigmaInputError(
                f"save: this result holds {len(self.images)} images; save each of its split()"
            )
        write = functools.partial(
            write_png, self.images[0], self.composition, notice=self.notice, warnings=self.warnings
        )
        try:
            return write(path, overwrite=overwrite)
        except SigmaError as e:
            if not rescue:
                raise
            saved = write(Path(tempfile.gettempdir()) / f"sigma-{self.seed}-{os.getpid()}.png")
            kind = SigmaResourceError if isinstance(e, SigmaResourceError) else SigmaInputError
            raise kind(f"{e}\nthe image was saved to {saved} instead") from None


def to_output(
    pixels: torch.Tensor, output_type: str, *, preview: bool
) -> list[Image.Image] | np.ndarray:
    """Decoded pixels [n, 3, H, W] in [-1, 1] as ``output_type``: "np", a float array
    [n, H, W, 3] in [0, 1]; "pil", n images, stamped as previews when ``preview``."""
    img = (pixels.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)  # [n, H, W, 3]
    if output_type == "np":
        return img.cpu().numpy()
    images = [Image.fromarray(i) for i in (img * 255).to(torch.uint8).cpu().numpy()]
    return [stamp_preview(image) for image in images] if preview else images


def stamp_preview(image: Image.Image) -> Image.Image:
    """A visible label in the bottom-left corner, so a preview is never taken for a result
    (metadata is lost on a screenshot). Narrow images get the short form."""
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for text in (PREVIEW_NOTICE, "preview engine", "preview"):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left + 4 <= image.width:
            break
    y = image.height - (bottom - top) - 4
    draw.rectangle((0, y, right - left + 4, image.height), fill=(0, 0, 0))
    draw.text((2 - left, y + 2 - top), text, fill=(255, 255, 255), font=font)
    return image


def check_call(
    settings: Settings, num_inference_steps: int | None, output_type: str,
    tensor_inputs: Sequence[str],
) -> Settings:  # fmt: skip
    """Refuse a pipeline call's bad arguments before any work; the settings the run uses
    (``num_inference_steps`` overrides their num_timesteps)."""
    problems = []
    if num_inference_steps is not None and (
        not isinstance(num_inference_steps, int) or num_inference_steps < 2
    ):
        problems.append(f"num_inference_steps: {num_inference_steps!r} must be >= 2")
    if output_type not in OUTPUT_TYPES:
        problems.append(f"output_type: {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
    unknown = [name for name in tensor_inputs if name not in CALLBACK_TENSORS]
    if unknown:
        problems.append(
            f"callback_on_step_end_tensor_inputs: {', '.join(map(repr, unknown))} not in "
            f"{', '.join(CALLBACK_TENSORS)}"
        )
    if problems:
        raise SigmaInputError("\n".join(problems))
    if num_inference_steps is None:
        return settings
    return settings.replace(num_timesteps=num_inference_steps)


def step_hook(
    pipe: Any, plan: Plan, ts: torch.Tensor, callback: StepCallback | None,
    tensor_inputs: Sequence[str], cancel: CancelToken | None,
) -> Callable[[int, torch.Tensor, StepVelocities], torch.Tensor]:  # fmt: skip
    """What follows Euler step i of a pipeline's run over schedule ``ts``: the user's step
    callback, called as (pipe, i, t, tensors) with the tensors it asked for (it may return
    {"latents": ...} to replace them), then the cancel check."""
    total = len(ts) - 1

    def on_step(i: int, x: torch.Tensor, v: StepVelocities) -> torch.Tensor:
        if callback is not None:
            tensors = v.callback_tensors(tensor_inputs, x, ts[i], ts[i + 1], plan.noise.block_grid)
            out = callback(pipe, i, ts[i], tensors) or {}
            if "latents" in out:
                x = patchify(out["latents"].to(x))
        check_cancel(cancel, i + 1, total)
        return x

    return on_step


class CancelToken(Protocol):
    """Anything with ``is_set()``: a ``threading.Event`` is one. Each run takes its own."""

    def is_set(self) -> bool: ...


def check_cancel(cancel: CancelToken | None, done: int, total: int) -> None:
    """Stop between steps when the run's token is set."""
    if cancel is not None and cancel.is_set():
        where = f"after step {done} of {total}" if done else f"before step 1 of {total}"
        raise GenerationCancelled(f"cancelled {where}", step=done)


@contextmanager
def out_of_memory(
    where: str,
    device: torch.device,
    *,
    error: type[SigmaOutOfMemoryError] = SigmaOutOfMemoryError,
) -> Iterator[None]:
    """Out of memory, on any device, as a :class:`SigmaOutOfMemoryError` (or the subclass
    ``error``, whose advice fits the work) with advice."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        raise error(where, str(device)) from None
    except RuntimeError as e:
        if "not enough memory" in str(e) or "can't allocate memory" in str(e):
            raise error(where, str(device)) from None
        raise
