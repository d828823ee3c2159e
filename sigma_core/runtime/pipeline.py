"""SigmaPipeline: composition in, image out, in diffusers' conventions.

What BAGEL's inferencer does, and only that, in five numbered phases: plan the sequence, encode
the references, prefill the CFG contexts, run the Euler loop, decode. Planning is the
:class:`~sigma_core.planning.planner.Planner`'s; embeddings, expert routing and the KV cache's
books are the model's (:mod:`sigma_core.model.bagel`); the contexts and the guided step are in
:mod:`sigma_core.runtime.contexts`; the memory prediction in :mod:`sigma_core.runtime.memory`.
A run keeps all its state to itself, so one pipeline serves several threads, each with its own
cancel token.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from sigma_core.inputs.composition import Composition
from sigma_core.model.bagel import BagelGenerator
from sigma_core.model.precision import Precision, dtype_name
from sigma_core.model.vae import FluxVAE
from sigma_core.planning.planner import Planner
from sigma_core.planning.sequence import Plan
from sigma_core.runtime.contexts import Denoiser, prefill_contexts
from sigma_core.runtime.live_preview import PreviewSize, previewer_for
from sigma_core.runtime.loader import LoadOptions, LoadReport, load_checkpoint
from sigma_core.runtime.memory import EngineShape, MemoryEstimate, check_fits, estimate_for_plan
from sigma_core.runtime.output import (
    CancelToken,
    PhaseCallback,
    RunPhases,
    SigmaOutput,
    StepCallback,
    check_call,
    check_cancel,
    denoise_each,
    step_hook,
    to_output,
)
from sigma_core.runtime.placement import Offload
from sigma_core.runtime.references import LATENT_CACHE_BYTES, ReferenceEncoder
from sigma_core.runtime.sampler import Guidance, initial_noises, timesteps
from sigma_core.runtime.tiny import preview_checkpoint


class SigmaPipeline:
    """Runs SIGMA compositions on a BAGEL-compatible checkpoint."""

    def __init__(
        self, model: BagelGenerator, vae: FluxVAE, tokenizer: Any, *, preview: bool = False,
        load_report: LoadReport | None = None, precision: Precision | None = None,
        offload: Offload | None = None, compile: bool = False, layout: str | None = None,
        trained_layout: str | None = None, latent_cache_bytes: int = LATENT_CACHE_BYTES,
    ) -> None:  # fmt: skip
        """``layout`` is what "auto" runs in, by default ``trained_layout`` (planning.planner);
        ``latent_cache_bytes`` bounds the references' latent cache (runtime.references)."""
        self.model, self.vae, self.preview, self.load_report = model, vae, preview, load_report
        self.planner = Planner(
            tokenizer, model.config.max_position_embeddings, layout=layout,
            trained_layout=trained_layout,
        )  # fmt: skip
        self.precision = precision or Precision(dtype_name(model.dtype), model.dtype)
        self.offload = offload or Offload("none", model.device, model, vae)
        self.compile = compile
        # One compiled pass per pipeline: dynamo caches its graphs across runs.
        self._velocity = torch.compile(model.velocity) if compile else None
        self.encode_references = ReferenceEncoder(vae, max_bytes=latent_cache_bytes)
        # Offloading moves shared modules: runs then take turns (no effect otherwise).
        self._turns = threading.Lock() if self.offload.mode != "none" else nullcontext()

    @property
    def device(self) -> torch.device:
        """Where the run computes (the first device of a device map)."""
        return self.offload.device

    @functools.cached_property
    def shape(self) -> EngineShape:
        """What a run's memory depends on besides its plan, as plain data (runtime.memory)."""
        return EngineShape.of(self.model, self.vae, self.precision, self.offload.mode, self.device)

    @property
    def tokenizer(self) -> Any:
        return self.planner.tokenizer

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        sigma_weights: str | os.PathLike | None = None,
        **options: Any,
    ) -> SigmaPipeline:
        """Load a BAGEL folder or hub repo; ``sigma_weights`` (folder or repo) overrides its
        ema.safetensors. ``options``: precision (or dtype), vae_dtype, device, offload,
        device_map, compile, layout and latent_cache_bytes, each checked before a byte is read (see
        :class:`~sigma_core.runtime.loader.LoadOptions`)."""
        opts = LoadOptions.check(**options)
        ckpt = load_checkpoint(path_or_repo_id, sigma_weights, opts)
        device = ckpt.model.device if opts.device_map else opts.device
        return cls(
            ckpt.model, ckpt.vae, ckpt.tokenizer, preview=ckpt.preview, load_report=ckpt.report,
            precision=opts.precision, offload=Offload(opts.offload, device, ckpt.model, ckpt.vae),
            compile=opts.compile, layout=opts.layout, trained_layout=ckpt.trained_layout,
            latent_cache_bytes=opts.latent_cache_bytes,
        )  # fmt: skip

    @classmethod
    def preview_engine(cls, **options: Any) -> SigmaPipeline:
        """The offline preview: a tiny random checkpoint written once into the user cache, on
        cpu in fp32 unless asked (``options`` as for :meth:`from_pretrained`). Its results are
        marked as previews everywhere, in the pixels too."""
        if options.get("dtype") is None and options.get("precision") is None:
            options["dtype"] = torch.float32
        options["device"] = options.get("device") or "cpu"
        return cls.from_pretrained(preview_checkpoint(), **options)

    def plan(self, composition: Composition, images: dict[int, Image.Image] | None = None) -> Plan:
        """The sequence this pipeline would run (see :meth:`Planner.plan`)."""
        return self.planner.plan(composition, images)

    @torch.no_grad()
    def __call__(
        self,
        composition: Composition,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        cancel: CancelToken | None = None,
        batch_cfg: bool = False,
        callback_on_phase: PhaseCallback | None = None,
        num_images_per_prompt: int = 1,
    ) -> SigmaOutput:
        """Generate. ``num_inference_steps`` overrides the settings' num_timesteps (BAGEL counts
        timesteps: N give N-1 Euler steps). ``latents`` is the initial noise [1, 16, H/8, W/8].

        After each step the callback gets (pipe, step, t, tensors) with the tensors named in
        ``callback_on_step_end_tensor_inputs`` (see :data:`CALLBACK_TENSORS`) and may return
        {"latents": ...} to replace them. Setting ``cancel`` (e.g. a threading.Event) stops the
        run before its next step, the first included, with :class:`GenerationCancelled`.
        ``batch_cfg`` runs a step's CFG branches as one batched forward instead of one by one
        (the default, faster on CPU by benchmarks/bench_engine.py). ``callback_on_phase`` gets
        (phase, done, total) as each phase starts, and each reference as it is encoded ("reuse"
        when its latent was cached).

        ``num_images_per_prompt`` images (consecutive seeds from the settings' seed), or one per
        generator of a list, share the encode and the prefill: only the Euler loop repeats, on
        the same contexts, so image i is exactly what a call of one image with its seed makes.
        Its loop is announced as ("image", i, n) to ``callback_on_phase``; see SigmaOutput. A
        cancel during image i > 1 still decodes the i - 1 images done, after the KV cache is
        freed: the GenerationCancelled raised holds them in its ``partial``.
        """
        phase = RunPhases(self.device, self.offload, callback_on_phase)
        start = time.perf_counter()
        # 1. plan: check the call, lay out the sequence, draw the noise, refuse what won't fit
        with phase("plan"):
            settings = check_call(
                composition.settings, num_inference_steps, output_type,
                callback_on_step_end_tensor_inputs,
            )  # fmt: skip
            images = composition.load_images()
            plan = self.planner.plan(composition, images)
            noises = initial_noises(
                plan.noise.block_size, num_images_per_prompt, generator=generator,
                latents=latents, seed=settings.seed, device=self.device,
            )  # fmt: skip
            seeds = [seed for _, seed in noises]
            # the result records what ran: the seed drawn and the layout "auto" resolved to
            settings = settings.replace(seed=seeds[0], layout=plan.layout)
            composition = replace(composition, settings=settings)
            self.check_memory(composition, batch_cfg=batch_cfg, plan=plan)
            guidance = Guidance.from_settings(settings)
            ts = timesteps(settings.num_timesteps, settings.timestep_shift, self.device)
            branches = guidance.steps(ts)
            check_cancel(cancel, 0, len(branches))
        with self._turns:
            # 2. encode the references (cached by pixels)
            with phase("encode", self.vae, total=plan.num_references):
                refs = self.encode_references(plan, images, on_reference=phase.report)
            # 3. prefill gen, cfg_text and cfg_img into one KV cache, held by the denoiser alone
            with phase("prefill", self.model):
                ctx = prefill_contexts(
                    self.model, plan, refs, need_text=any(b[0] for b in branches),
                    need_img=any(b[1] for b in branches),
                    attribute_projection=settings.attribute_projection,
                )  # fmt: skip
                denoise = Denoiser(
                    self.model, ctx, plan.noise.block_grid, guidance, batched=batch_cfg,
                    steps=branches, velocity=self._velocity,
                )  # fmt: skip
                del ctx
            # 4. denoise: the Euler loop, once per image on the same contexts (no pass changes
            # them: see model.cache), then the KV cache is freed
            on_step = step_hook(
                self, plan, ts, callback_on_step_end, callback_on_step_end_tensor_inputs, cancel
            )
            finals, passes, stopped = denoise_each(phase, denoise, noises, ts, on_step)
            del denoise
            # 5. decode, each image alone (those done when a cancel came after the first)
            final, decoded = torch.cat(finals), None
            if output_type != "latent":
                with phase("decode", self.vae, total=len(finals)):
                    pixels = torch.cat([self.vae.decode(f) for f in finals])
                    decoded = to_output(pixels, output_type, preview=self.preview)
        timings = {**phase.timings, "total_s": time.perf_counter() - start}
        out = SigmaOutput(
            images=decoded, latents=final, seed=seeds[0], composition=composition, plan=plan,
            preview=self.preview, num_passes=passes, timings=timings, seeds=seeds[: len(finals)],
        )  # fmt: skip
        if stopped is not None:
            stopped.partial = out
            raise stopped
        return out

    def live_preview(self, tensors: dict[str, Any], *, size: PreviewSize = "latent") -> Image.Image:
        """A step's estimate of the final image from a callback's "latents", "velocity" and
        "t_next", without decoding (see runtime.live_preview). ``size`` is "latent" (H/8 x W/8),
        "output" (H x W) or (width, height). Thread-safe."""
        return previewer_for(self.vae).preview_step(tensors, size=size)

    def check_memory(
        self, composition: Composition, *, batch_cfg: bool = False, plan: Plan | None = None
    ) -> None:
        """Refuse a run predicted not to fit, before any work (see runtime.memory.check_fits)."""
        plan = plan or self.plan(composition)
        need = estimate_for_plan(self.shape, plan, composition.settings, batch_cfg=batch_cfg)
        check_fits(need, self.device, (self.model, self.vae))

    def estimate_memory(
        self, composition: Composition, *, batch_cfg: bool = False, precision: str | None = None,
        offload: str | None = None,
    ) -> MemoryEstimate:  # fmt: skip
        """The memory a run of ``composition`` would need here, from its exact plan (see
        runtime.memory); ``precision``/``offload`` ask what another mode would need."""
        return estimate_for_plan(
            self.shape, self.plan(composition), composition.settings, batch_cfg=batch_cfg,
            precision=precision, offload=offload,
        )  # fmt: skip
