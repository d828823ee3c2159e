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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from sigma_core.errors import SigmaInputError, SigmaOutOfMemoryError
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.settings import Settings
from sigma_core.model.bagel import BagelGenerator, patchify, unpatchify
from sigma_core.model.precision import DTYPES, Precision, dtype_name
from sigma_core.model.vae import FluxVAE
from sigma_core.planning.planner import Planner
from sigma_core.planning.sequence import Plan
from sigma_core.planning.tokenizer import load_tokenizer
from sigma_core.runtime.contexts import CALLBACK_TENSORS, CFGContexts, Denoiser, prefill_contexts
from sigma_core.runtime.device import available_memory
from sigma_core.runtime.loader import (
    AE_FILE,
    BASE_PATTERNS,
    SIGMA_PATTERNS,
    LoadOptions,
    LoadReport,
    is_preview_checkpoint,
    load_generator,
    resolve_checkpoint,
    trained_layout,
)
from sigma_core.runtime.memory import EngineShape, MemoryEstimate, estimate_for_plan, module_bytes
from sigma_core.runtime.output import (
    CancelToken,
    SigmaOutput,
    check_cancel,
    out_of_memory,
    to_output,
)
from sigma_core.runtime.placement import Offload
from sigma_core.runtime.references import ReferenceEncoder
from sigma_core.runtime.sampler import Guidance, euler_step, initial_noise, timesteps
from sigma_core.runtime.tiny import preview_checkpoint

OUTPUT_TYPES = ("pil", "np", "latent")
StepCallback = Callable[["SigmaPipeline", int, torch.Tensor, dict[str, Any]], Any]
# each phase as an out-of-memory message names it
PHASES = {
    "plan": "planning the run",
    "encode": "encoding the references",
    "prefill": "prefilling the context",
    "denoise": "denoising",
    "decode": "decoding",
}


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
        self.model, self.vae = model, vae
        # the tokenizer, the position budget and what "auto" means: see planning.planner
        self.planner = Planner(
            tokenizer, model.config.max_position_embeddings, layout=layout,
            trained_layout=trained_layout,
        )  # fmt: skip
        self.preview = preview
        self.load_report = load_report
        self.precision = precision or Precision(dtype_name(model.dtype), model.dtype)
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

    @functools.cached_property
    def shape(self) -> EngineShape:
        """What a run's memory depends on besides its plan, as plain data (runtime.memory)."""
        return EngineShape.of(self.model, self.vae, self.precision, self.offload.mode, self.device)

    @property
    def tokenizer(self) -> Any:
        return self.planner.tokenizer

    @property
    def layout(self) -> str:
        """The layout compositions set to "auto" run in (see sigma_core.planning.layout)."""
        return self.planner.layout

    @property
    def trained_layout(self) -> str | None:
        """The layout the weights were trained in (their model card); None for SIGMA's."""
        return self.planner.trained_layout

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        sigma_weights: str | os.PathLike | None = None,
        **options: Any,
    ) -> SigmaPipeline:
        """Load a BAGEL folder or hub repo; ``sigma_weights`` (folder or repo) overrides its
        ema.safetensors.

        ``options`` (checked before a byte is read; see :class:`LoadOptions`): ``precision``,
        one of PRECISIONS (default bf16 on a GPU, fp32 on cpu; ``dtype`` is the same choice as
        a torch dtype); ``vae_dtype``, fp32 as the official code keeps it (bf16 halves the
        VAE's memory for about 1.5% decoder error); ``device``; ``offload``, none, model or
        sequential (see runtime.placement); ``device_map``, "auto" or {module prefix: device}
        to spread the layers over GPUs; ``compile``, torch.compile the denoising pass;
        ``layout``, the sequence layout compositions set to "auto" run in (by default the one
        the weights' model card records, else SIGMA's released inferencer; a warning says
        when it differs from the card's).
        """
        opts = LoadOptions.check(**options)
        base = resolve_checkpoint(path_or_repo_id, patterns=BASE_PATTERNS)
        sigma = (
            resolve_checkpoint(sigma_weights, patterns=SIGMA_PATTERNS) if sigma_weights else None
        )
        tokenizer = load_tokenizer(base)
        load_on = torch.device("cpu") if opts.offload == "sequential" else opts.device
        with out_of_memory("loading the weights", opts.device):
            model, report = load_generator(
                base, tokenizer, sigma_folder=sigma, precision=opts.precision, device=load_on,
                device_map=opts.device_map,
            )  # fmt: skip
            vae = FluxVAE.from_file(
                base / AE_FILE, dtype=DTYPES[opts.vae_dtype], device=model.device
            )
        device = model.device if opts.device_map else opts.device
        return cls(
            model, vae, tokenizer, preview=is_preview_checkpoint(base), load_report=report,
            precision=opts.precision, offload=Offload(opts.offload, device, model, vae),
            compile=opts.compile, layout=opts.layout, trained_layout=trained_layout(sigma),
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
        """The sequence this pipeline would run (see :meth:`Planner.plan`)."""
        return self.planner.plan(composition, images)

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
        (the default, faster on CPU by benchmarks/bench_engine.py).
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        # 1. plan: check the call, lay out the sequence, draw the noise, refuse what won't fit
        with self._phase("plan", timings):
            settings = self.check_inputs(
                composition.settings, num_inference_steps, output_type,
                callback_on_step_end_tensor_inputs,
            )  # fmt: skip
            images = composition.load_images()
            plan = self.planner.plan(composition, images)
            x, seed = initial_noise(
                plan.noise.size, generator=generator, latents=latents, seed=settings.seed,
                device=self.device,
            )  # fmt: skip
            # the result records what ran: the seed drawn and the layout "auto" resolved to
            settings = settings.replace(seed=seed, layout=plan.layout)
            composition = replace(composition, settings=settings)
            self.check_memory(composition, batch_cfg=batch_cfg, plan=plan)
            guidance = Guidance.from_settings(settings)
            ts = timesteps(settings.num_timesteps, settings.timestep_shift, self.device)
            branches = [guidance.branches(t) for t in ts[:-1].tolist()]  # once, on the host
            check_cancel(cancel, 0, len(branches))
        with self._turns:
            # 2. encode the references (cached by pixels)
            with self._phase("encode", timings, self.vae):
                refs = self.encode_references(plan, images)
            # 3. prefill gen, cfg_text and cfg_img into one KV cache
            with self._phase("prefill", timings, self.model):
                ctx = prefill_contexts(
                    self.model, plan, refs, need_text=any(b[0] for b in branches),
                    need_img=any(b[1] for b in branches),
                    attribute_projection=settings.attribute_projection,
                )  # fmt: skip
            # 4. denoise: the Euler loop (the KV cache is freed when it ends)
            with self._phase("denoise", timings, self.model):
                x, passes = self._denoise(
                    x, ctx, plan, guidance, ts, branches, batch_cfg=batch_cfg, cancel=cancel,
                    callback=callback_on_step_end,
                    tensor_inputs=callback_on_step_end_tensor_inputs,
                )  # fmt: skip
            del ctx
            # 5. decode
            final = unpatchify(x, plan.noise.grid, self.model.latent_channels)
            decoded = None
            if output_type != "latent":
                with self._phase("decode", timings, self.vae):
                    decoded = to_output(self.vae.decode(final), output_type, preview=self.preview)
        timings["total_s"] = time.perf_counter() - start
        return SigmaOutput(
            images=decoded, latents=final, seed=seed, composition=composition, plan=plan,
            preview=self.preview, num_passes=passes, timings=timings,
        )  # fmt: skip

    @contextmanager
    def _phase(
        self, name: str, timings: dict[str, float], module: torch.nn.Module | None = None
    ) -> Iterator[None]:
        """One phase of a run: ``module`` on the device for it (offload), out of memory as a
        SigmaOutOfMemoryError naming the phase, and its seconds in ``timings[name + "_s"]``."""
        start = time.perf_counter()
        placed = self.offload.using(module) if module is not None else nullcontext()
        with out_of_memory(PHASES[name], self.device), placed:
            yield
        timings[f"{name}_s"] = time.perf_counter() - start

    def _denoise(
        self, x: torch.Tensor, ctx: CFGContexts, plan: Plan, guidance: Guidance,
        ts: torch.Tensor, branches: list[tuple[bool, bool]], *, batch_cfg: bool,
        cancel: CancelToken | None, callback: StepCallback | None, tensor_inputs: Sequence[str],
    ) -> tuple[torch.Tensor, int]:  # fmt: skip
        """The Euler loop from noise tokens ``x`` [m, 64]; the final tokens and the number of
        LLM passes made. The denoiser holds the KV cache until the loop ends, no longer."""
        denoise = Denoiser(
            self.model, ctx, plan.noise.grid, guidance, batched=batch_cfg, steps=branches,
            velocity=self._velocity,
        )  # fmt: skip
        passes = 0
        for i, (want_text, want_img) in enumerate(branches):
            v = denoise(x, ts[i], want_text, want_img)
            passes += v.passes
            x = euler_step(x, v.guided, ts[i], ts[i + 1])
            if callback is not None:
                tensors = v.callback_tensors(tensor_inputs, x, ts[i], ts[i + 1], plan.noise.grid)
                out = callback(self, i, ts[i], tensors) or {}
                if "latents" in out:
                    x = patchify(out["latents"].to(x))
            check_cancel(cancel, i + 1, len(branches))
        return x, passes

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
                PHASES["plan"],
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
        return estimate_for_plan(
            self.shape, self.plan(composition), composition.settings, batch_cfg=batch_cfg,
            precision=precision, offload=offload,
        )  # fmt: skip
