"""SigmaPipeline: composition in, image out, in diffusers' conventions.

What an inferencer does, and only that: plan the sequence, encode the references, prefill the
CFG contexts, run the Euler loop, decode. Embeddings, expert routing and the KV cache's books are
the model's (:mod:`sigma_core.model.bagel`); the contexts and the guided step are in
:mod:`sigma_core.runtime.contexts`. A run keeps all its state to itself, so one pipeline serves
several threads, each with its own cancel token.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sigma_core.errors import SigmaInputError, SigmaOutOfMemoryError
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.fields import did_you_mean
from sigma_core.inputs.settings import LAYOUTS, Settings
from sigma_core.model.bagel import BagelGenerator, patchify, unpatchify
from sigma_core.model.modes import VAE_DTYPES
from sigma_core.model.precision import DTYPES, Precision, resolve_precision
from sigma_core.model.vae import FluxVAE
from sigma_core.planning.layout import DEFAULT_LAYOUT
from sigma_core.planning.sequence import Plan, build_plan
from sigma_core.planning.tokenizer import load_tokenizer
from sigma_core.runtime.contexts import CALLBACK_TENSORS, Denoiser, prefill_contexts
from sigma_core.runtime.device import available_memory, resolve_device
from sigma_core.runtime.loader import (
    AE_FILE,
    BASE_PATTERNS,
    SIGMA_PATTERNS,
    LoadReport,
    is_preview_checkpoint,
    load_generator,
    resolve_checkpoint,
    trained_layout,
)
from sigma_core.runtime.memory import EngineShape, MemoryEstimate, estimate_for_plan, module_bytes
from sigma_core.runtime.output import (
    PREVIEW_NOTICE,
    CancelToken,
    SigmaOutput,
    check_cancel,
    out_of_memory,
)
from sigma_core.runtime.placement import Offload, check_offload
from sigma_core.runtime.references import ReferenceEncoder
from sigma_core.runtime.sampler import Guidance, euler_step, initial_noise, timesteps
from sigma_core.runtime.tiny import preview_checkpoint

OUTPUT_TYPES = ("pil", "np", "latent")
StepCallback = Callable[["SigmaPipeline", int, torch.Tensor, dict[str, Any]], Any]


class SigmaPipeline:
    """Runs SIGMA compositions on a BAGEL-compatible checkpoint."""

    def __init__(
        self,
        model: BagelGenerator,
        vae: FluxVAE,
        tokenizer: Any,
        *,
        preview: bool = False,
        load_report: LoadReport | None = None,
        precision: Precision | None = None,
        offload: Offload | None = None,
        compile: bool = False,
        layout: str | None = None,
        trained_layout: str | None = None,
    ) -> None:
        self.model, self.vae, self.tokenizer = model, vae, tokenizer
        # The layout a composition's "auto" runs in, and the one the weights were trained in
        # (their model card's; None for SIGMA's weights). See sigma_core.planning.layout.
        self.trained_layout = trained_layout
        self.layout = layout or trained_layout or DEFAULT_LAYOUT
        self.preview = preview
        self.load_report = load_report
        self.precision = precision or Precision(_name_of(model.dtype), model.dtype)
        self.offload = offload or Offload("none", model.device, model, vae)
        self.compile = compile
        # One compiled pass per pipeline: dynamo caches its graphs across runs.
        self._velocity = torch.compile(model.velocity) if compile else None
        self.encode_references = ReferenceEncoder(vae)
        # Offloading moves shared modules: runs then take turns (no effect otherwise).
        self._turns = threading.Lock() if self.offload.mode != "none" else nullcontext()

    @property
    def device(self) -> torch.device:
        """Where the run computes (the first device of a device map)."""
        return self.offload.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        sigma_weights: str | os.PathLike | None = None,
        precision: str | None = None,
        dtype: torch.dtype | None = None,
        vae_dtype: str = "fp32",
        device: str | torch.device | None = None,
        offload: str = "none",
        device_map: str | dict[str, str] | None = None,
        compile: bool = False,
        layout: str | None = None,
    ) -> SigmaPipeline:
        """Load a BAGEL folder or hub repo; ``sigma_weights`` (folder or repo) overrides its
        ema.safetensors.

        ``precision``: one of :data:`~sigma_core.model.precision.PRECISIONS` (default bf16 on a
        GPU, fp32 on cpu; ``dtype`` is the same choice as a torch dtype). ``vae_dtype``: fp32
        as the official code keeps it; bf16 halves the VAE's memory for about 1.5% decoder
        error. ``offload``: none, model or sequential (see runtime.placement). ``device_map``:
        "auto" or {module prefix: device} to spread the layers over GPUs. ``compile``:
        torch.compile the denoising pass (off by default; see the README's Performance).
        ``layout``: the sequence layout compositions set to "auto" run in (see
        sigma_core.planning.layout); by default the one the weights' model card records, else
        SIGMA's released inferencer; a warning says when it differs from the card's.
        Everything is checked before a byte is read.
        """
        device = resolve_device(device)
        precision = _precision_name(precision, dtype, device)
        mode = resolve_precision(precision, device)
        offload = check_offload(offload, mode, device)
        if vae_dtype not in VAE_DTYPES:
            raise SigmaInputError(
                f"vae_dtype: {str(vae_dtype)[:40]!r} is not one of {', '.join(VAE_DTYPES)}"
            )
        if device_map is not None and offload != "none":
            raise SigmaInputError("device_map and offload exclude each other; choose one")
        if isinstance(device_map, dict):
            device_map = {k: str(resolve_device(v)) for k, v in device_map.items()}
        elif device_map not in (None, "auto"):
            raise SigmaInputError(
                f"device_map: {str(device_map)[:40]!r} must be 'auto' or {{module: device}}"
            )
        if compile is not True and compile is not False:
            raise SigmaInputError(f"compile: {compile!r} must be True or False")
        base = resolve_checkpoint(path_or_repo_id, patterns=BASE_PATTERNS)
        sigma = (
            resolve_checkpoint(sigma_weights, patterns=SIGMA_PATTERNS) if sigma_weights else None
        )
        trained = trained_layout(sigma)
        layout = _check_layout(layout, trained)
        tokenizer = load_tokenizer(base)
        load_on = torch.device("cpu") if offload == "sequential" else device
        with out_of_memory("loading the weights", device):
            model, report = load_generator(
                base, tokenizer, sigma_folder=sigma, precision=mode, device=load_on,
                device_map=device_map,
            )  # fmt: skip
            vae = FluxVAE.from_file(base / AE_FILE, dtype=DTYPES[vae_dtype], device=model.device)
        placed = Offload(offload, model.device if device_map else device, model, vae)
        return cls(
            model, vae, tokenizer, preview=is_preview_checkpoint(base), load_report=report,
            precision=mode, offload=placed, compile=compile, layout=layout,
            trained_layout=trained,
        )  # fmt: skip

    @classmethod
    def preview_engine(
        cls,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> SigmaPipeline:
        """The offline preview: a tiny random checkpoint written once into the user cache, on
        cpu in fp32 unless asked (``options`` as for :meth:`from_pretrained`). Its results are
        marked as previews everywhere, in the pixels too."""
        if dtype is None and options.get("precision") is None:
            dtype = torch.float32
        return cls.from_pretrained(
            preview_checkpoint(), device=device or "cpu", dtype=dtype, **options
        )

    def check_inputs(
        self, settings: Settings, num_inference_steps: int | None, output_type: str,
        tensor_inputs: Sequence[str],
    ) -> Settings:  # fmt: skip
        """Refuse bad call arguments before any work; the settings the run uses."""
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

    def plan(self, composition: Composition, images: dict[int, Image.Image] | None = None) -> Plan:
        """The sequence this pipeline would run, checked against its model's position budget;
        its ``warnings`` are worth showing before a long run. ``images`` are the loaded
        references by slot (read from the composition when omitted)."""
        if images is None:
            images = composition.load_images()
        sizes = {slot: im.size for slot, im in images.items()}
        budget = self.model.config.max_position_embeddings
        plan = build_plan(
            composition, self.tokenizer, sizes, max_positions=budget, weights_layout=self.layout
        )
        if self.trained_layout not in (None, plan.layout):
            plan.warnings.append(_layout_warning(plan.layout, self.trained_layout))
        return plan

    @torch.no_grad()
    def __call__(
        self,
        composition: Composition,
        *,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        cancel: CancelToken | None = None,
        batch_cfg: bool = False,
    ) -> SigmaOutput:
        """Generate. ``num_inference_steps`` overrides the settings' num_timesteps (BAGEL counts
        timesteps: N give N-1 Euler steps). ``latents`` is the initial noise [1, 16, H/8, W/8].

        After each step the callback gets (pipe, step, t, tensors) with the tensors named in
        ``callback_on_step_end_tensor_inputs`` (see :data:`CALLBACK_TENSORS`) and may return
        {"latents": ...} to replace them. Setting ``cancel`` (e.g. a threading.Event) stops the
        run before its next step, the first included, with :class:`GenerationCancelled`.
        ``batch_cfg`` runs a step's CFG branches as one batched forward instead of one by one
        (the default, faster on CPU by benchmarks/bench_engine.py: padded attention over the
        short cfg_img context costs more than batching saves).
        """
        t0 = time.perf_counter()
        settings = self.check_inputs(
            composition.settings, num_inference_steps, output_type,
            callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        images = composition.load_images()
        plan = self.plan(composition, images)
        noise = plan.noise
        x, seed = initial_noise(
            noise.size, generator=generator, latents=latents, seed=settings.seed, device=self.device
        )
        # the result records what ran: the seed drawn and the layout "auto" resolved to
        composition = replace(composition, settings=settings.replace(seed=seed, layout=plan.layout))
        self.check_memory(composition, batch_cfg=batch_cfg, plan=plan)
        guidance = Guidance.from_settings(settings)
        ts = timesteps(settings.num_timesteps, settings.timestep_shift, self.device)
        branches = [guidance.branches(t) for t in ts[:-1].tolist()]  # once, on the host
        check_cancel(cancel, 0, len(branches))
        with self._turns:
            encoding = out_of_memory("encoding the references", self.device)
            with encoding, self.offload.using(self.vae):
                refs = self.encode_references(plan, images)
            t1 = time.perf_counter()
            with self.offload.using(self.model):
                with out_of_memory("prefilling the context", self.device):
                    ctx = prefill_contexts(
                        self.model, plan, refs, need_text=any(b[0] for b in branches),
                        need_img=any(b[1] for b in branches),
                        attribute_projection=settings.attribute_projection,
                    )  # fmt: skip
                t2 = time.perf_counter()
                denoise = Denoiser(
                    self.model, ctx, noise.grid, guidance, batched=batch_cfg, steps=branches,
                    velocity=self._velocity,
                )  # fmt: skip
                del ctx  # the denoiser holds the KV cache until the loop ends, no longer
                passes = 0
                with out_of_memory("denoising", self.device):
                    for i, (want_text, want_img) in enumerate(branches):
                        v = denoise(x, ts[i], want_text, want_img)
                        passes += v.passes
                        x = euler_step(x, v.guided, ts[i], ts[i + 1])
                        if callback_on_step_end is not None:
                            tensors = v.callback_tensors(
                                callback_on_step_end_tensor_inputs, x, ts[i], ts[i + 1], noise.grid
                            )
                            out = callback_on_step_end(self, i, ts[i], tensors) or {}
                            if "latents" in out:
                                x = patchify(out["latents"].to(x))
                        check_cancel(cancel, i + 1, len(branches))
                del denoise, v  # free the KV cache before the VAE decodes
            t3 = time.perf_counter()
            final = unpatchify(x, noise.grid, self.model.latent_channels)
            decoded = None
            if output_type != "latent":
                with out_of_memory("decoding", self.device), self.offload.using(self.vae):
                    decoded = self._decode(final, output_type)
        timings = {"encode_s": t1 - t0, "prefill_s": t2 - t1, "denoise_s": t3 - t2}
        return SigmaOutput(
            images=decoded, latents=final, seed=seed, composition=composition, plan=plan,
            preview=self.preview, num_passes=passes,
            timings={**timings, "total_s": time.perf_counter() - t0},
        )  # fmt: skip

    def live_preview(
        self, tensors: dict[str, Any], *, size: tuple[int, int] | str = "latent"
    ) -> Image.Image:
        """A step's estimate of the final image, for a step callback that asked for "latents",
        "velocity" and "t_next": x0 = latents - t_next * velocity shown through a linear
        latent-to-RGB map fitted to this pipeline's VAE, without decoding. ``size`` is "latent"
        (H/8 x W/8), "output" (H x W) or (width, height). Thread-safe; the first call for a VAE
        with no stored factors fits them once (a few encodes, see runtime.live_preview)."""
        from sigma_core.runtime.live_preview import previewer_for

        return previewer_for(self.vae).preview_step(tensors, size=size)

    def _decode(self, latent: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray:
        img = self.vae.decode(latent).float()
        img = (img * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)  # [1, H, W, 3]
        if output_type == "np":
            return img.cpu().numpy()
        image = Image.fromarray((img[0] * 255).to(torch.uint8).cpu().numpy())
        return [_stamp_preview(image) if self.preview else image]

    def check_memory(
        self, composition: Composition, *, batch_cfg: bool = False, plan: Plan | None = None
    ) -> None:
        """Refuse a run predicted not to fit, before any work: :meth:`estimate_memory` against
        what the device has free plus what this pipeline's weights already hold there. Where
        the free memory is unknown (mps), the run goes ahead."""
        available = available_memory(self.device)
        if available is None:
            return
        shape = EngineShape.of(self.model, self.vae, self.precision, self.offload.mode, self.device)
        plan = plan or self.plan(composition)
        need = estimate_for_plan(shape, plan, composition.settings, batch_cfg=batch_cfg)
        held = module_bytes((self.model, self.vae), self.device)
        if need.peak > held + available:
            gib = 2**30
            raise SigmaOutOfMemoryError(
                "planning the run",
                str(self.device),
                f" (predicted peak {need.describe()}; the weights hold {held / gib:.1f} GiB "
                f"and {available / gib:.1f} GiB more is free, so it would not fit)",
            )

    def estimate_memory(
        self,
        composition: Composition,
        *,
        batch_cfg: bool = False,
        precision: str | None = None,
        offload: str | None = None,
    ) -> MemoryEstimate:
        """The memory a run of ``composition`` would need here, predicted from its exact plan,
        this precision, offload mode, device map and VAE before any work (see
        :mod:`sigma_core.runtime.memory`); ``batch_cfg`` as for :meth:`__call__`;
        ``precision``/``offload`` ask what another mode of this checkpoint would need."""
        shape = EngineShape.of(self.model, self.vae, self.precision, self.offload.mode, self.device)
        return estimate_for_plan(
            shape, self.plan(composition), composition.settings, batch_cfg=batch_cfg,
            precision=precision, offload=offload,
        )  # fmt: skip


def _stamp_preview(image: Image.Image) -> Image.Image:
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


def _check_layout(layout: str | None, trained: str | None) -> str:
    """The pipeline's layout for "auto": ``layout`` (checked), else the trained one, else the
    released inferencer's; warns when it differs from the one the weights were trained in."""
    if layout is None:
        return trained or DEFAULT_LAYOUT
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise SigmaInputError(
            f"layout: {str(layout)[:40]!r} is not one of {', '.join(LAYOUTS)}"
            + did_you_mean(layout, LAYOUTS)
        )
    if trained is not None and layout != trained:
        warnings.warn(_layout_warning(layout, trained), UserWarning, stacklevel=3)
    return layout


def _layout_warning(layout: str, trained: str) -> str:
    return (
        f"layout {layout!r} differs from {trained!r}, the layout these weights were trained in "
        "(their model card): positions and attention differ from what training saw"
    )


def _precision_name(precision: str | None, dtype: torch.dtype | None, device: torch.device) -> str:
    """The precision asked, by name or as a torch dtype; bf16 on a GPU and fp32 elsewhere when
    neither is given."""
    if dtype is not None:
        if dtype not in DTYPES.values():
            raise SigmaInputError(f"dtype: {dtype} is not one of float32, bfloat16, float16")
        if precision is not None and DTYPES.get(precision) != dtype:
            raise SigmaInputError(f"precision {precision!r} and dtype {dtype} disagree; give one")
        return _name_of(dtype)
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _name_of(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)
