"""SigmaPipeline: composition in, image out, in diffusers' conventions.

The flow: build the interleaved plan; VAE-encode each reference; prefill three KV-cache contexts
once (gen: everything, with SIGMA's mask; cfg_text: gen before the last text segment; cfg_img:
the text only), exactly as BAGEL's inferencer builds them; then each Euler step runs only the
noise block against those caches, never writing to them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sigma_core.cache import cached_folder
from sigma_core.composition import Composition, Settings, write_png
from sigma_core.errors import GenerationCancelled, SigmaInputError
from sigma_core.images import vae_resize
from sigma_core.loader import (
    AE_FILE,
    BASE_PATTERNS,
    SIGMA_PATTERNS,
    LoadReport,
    check_sigma_token_ids,
    is_preview_checkpoint,
    load_generator,
    resolve_checkpoint,
)
from sigma_core.mask import segment_masks
from sigma_core.model.bagel import BagelGenerator, patchify, unpatchify
from sigma_core.model.mot import KVCache
from sigma_core.model.vae import FluxVAE
from sigma_core.sampler import Guidance, euler_step, guide, timesteps
from sigma_core.sequence import Plan, Segment, TokenIds, build_plan
from sigma_core.tokenizer import load_tokenizer

OUTPUT_TYPES = ("pil", "np", "latent")
PREVIEW_NOTICE = "preview engine (random weights)"
LATENT_CACHE_SIZE = 32
StepCallback = Callable[
    ["SigmaPipeline", int, torch.Tensor, dict[str, Any]], "dict[str, Any] | None"
]


@dataclass
class SigmaOutput:
    """The result of one run. ``composition`` carries the seed actually used, so saving it
    reproduces the image."""

    images: list[Image.Image] | np.ndarray | None
    latents: torch.Tensor  # [1, z, H/8, W/8], fp32
    seed: int
    composition: Composition
    plan: Plan
    preview: bool = False
    num_passes: int = 0  # LLM passes over the noise block, all steps and branches
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.composition.settings

    @property
    def notice(self) -> str | None:
        return PREVIEW_NOTICE if self.preview else None

    def save(self, path: str | os.PathLike) -> Path:
        """PNG with the composition (references embedded) in its metadata."""
        if not isinstance(self.images, list) or not self.images:
            raise SigmaInputError("save: this result has no PIL image (use output_type='pil')")
        return write_png(self.images[0], self.composition, path, notice=self.notice)


@dataclass
class Contexts:
    """The three prefilled contexts. A cfg context is None when it is not needed or when it
    equals gen (cfg_text when the prompt ends with an image, cfg_img when there is no image),
    so the conditional pass is reused rather than recomputed: the result is bit-identical."""

    gen: KVCache
    cfg_text: KVCache | None
    cfg_img: KVCache | None
    hidden: torch.Tensor | None = None  # final hidden states of gen's context, when asked


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
    ) -> None:
        check_sigma_token_ids(tokenizer, model.config.vocab_size)
        self.model, self.vae, self.tokenizer = model, vae, tokenizer
        self.token_ids = TokenIds.from_tokenizer(tokenizer)
        ids = self.token_ids
        self._markers = torch.tensor([ids.vision_start, ids.vision_end], device=self.device)
        self.preview = preview
        self.load_report = load_report
        self.interrupt = False
        # Reference latents by pixel hash: re-running with the same references skips the VAE.
        self._latents: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.model.vae2llm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.vae2llm.weight.dtype

    # ------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        sigma_weights: str | os.PathLike | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> SigmaPipeline:
        """Load a BAGEL folder or hub repo; ``sigma_weights`` (folder or repo) overrides its
        ema.safetensors. Defaults: cuda with bf16 when available, else cpu with fp32."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        base = resolve_checkpoint(path_or_repo_id, patterns=BASE_PATTERNS)
        sigma = (
            resolve_checkpoint(sigma_weights, patterns=SIGMA_PATTERNS) if sigma_weights else None
        )
        model, report = load_generator(base, sigma_folder=sigma, dtype=dtype, device=device)
        vae = FluxVAE.from_file(base / AE_FILE, dtype=dtype, device=device)
        tokenizer = load_tokenizer(base)
        return cls(model, vae, tokenizer, preview=is_preview_checkpoint(base), load_report=report)

    @classmethod
    def preview_engine(cls, *, device: str | torch.device | None = None) -> SigmaPipeline:
        """The offline preview: a tiny random checkpoint written once into the user cache.
        Its results are marked as previews everywhere."""
        from sigma_core import tiny
        from sigma_core.model import bagel, mot, vae

        folder = cached_folder(
            "preview-checkpoint", tiny.make_tiny_checkpoint, depends_on=(tiny, bagel, mot, vae)
        )
        return cls.from_pretrained(folder, device=device or "cpu", dtype=torch.float32)

    # ------------------------------------------------------------------------- the call

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
    ) -> SigmaOutput:
        """Generate. ``num_inference_steps`` overrides the settings' num_timesteps (BAGEL counts
        timesteps: N give N-1 Euler steps). ``latents`` is the initial noise [1, 16, H/8, W/8].
        The callback gets (pipe, step, t, {"latents": ...}) after each step and may return
        {"latents": ...} to replace them; setting ``pipe.interrupt = True`` cancels the run
        with :class:`GenerationCancelled`."""
        t0 = time.perf_counter()
        self.interrupt = False
        settings = composition.settings
        problems = settings.problems()
        if num_inference_steps is not None:
            if not isinstance(num_inference_steps, int) or num_inference_steps < 2:
                problems.append(f"num_inference_steps: {num_inference_steps!r} must be >= 2")
            elif not problems:
                settings = replace(settings, num_timesteps=num_inference_steps)
        if output_type not in OUTPUT_TYPES:
            problems.append(f"output_type: {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        if problems:
            raise SigmaInputError("\n".join(problems))

        images = composition.load_images()
        plan = build_plan(composition, self.tokenizer, {s: im.size for s, im in images.items()})
        noise_seg = plan.segments[-1]
        x, seed = self._initial_noise(noise_seg, generator, latents, settings.seed)
        composition = replace(composition, settings=replace(settings, seed=seed))
        g = Guidance(
            settings.cfg_text_scale,
            settings.cfg_img_scale,
            tuple(settings.cfg_interval),
            settings.cfg_renorm_type,
            settings.cfg_renorm_min,
        )
        ts = timesteps(settings.num_timesteps, settings.timestep_shift, self.device)
        need_text = any(g.branches(float(t))[0] for t in ts[:-1])
        need_img = any(g.branches(float(t))[1] for t in ts[:-1])

        try:
            refs = self.encode_references(plan, images)
            t1 = time.perf_counter()
            ctx = self.encode_context(
                plan, refs, need_text=need_text, need_img=need_img,
                attribute_projection=settings.attribute_projection,
            )  # fmt: skip
            t2 = time.perf_counter()
            passes = 0
            for i in range(len(ts) - 1):
                v, n = self._velocity(x, ts[i], noise_seg, ctx, g)
                passes += n
                x = euler_step(x, v, ts[i], ts[i + 1])
                if callback_on_step_end is not None:
                    lat = unpatchify(x, noise_seg.grid, self.model.latent_channels)
                    out = callback_on_step_end(self, i, ts[i], {"latents": lat}) or {}
                    if "latents" in out:
                        x = patchify(out["latents"].to(x))
                if self.interrupt:
                    raise GenerationCancelled(
                        f"cancelled after step {i + 1} of {len(ts) - 1}", step=i + 1
                    )
            t3 = time.perf_counter()
            final = unpatchify(x, noise_seg.grid, self.model.latent_channels)
            out_images = None if output_type == "latent" else self._decode(final, output_type)
        except torch.OutOfMemoryError:
            raise SigmaInputError(
                "out of memory: use a smaller output size, fewer or smaller references, or a "
                "GPU with more memory"
            ) from None
        finally:
            self.interrupt = False
        return SigmaOutput(
            images=out_images,
            latents=final,
            seed=seed,
            composition=composition,
            plan=plan,
            preview=self.preview,
            num_passes=passes,
            timings={
                "encode_s": t1 - t0,
                "prefill_s": t2 - t1,
                "denoise_s": t3 - t2,
                "total_s": time.perf_counter() - t0,
            },
        )

    # ------------------------------------------------------------------------- stages

    def encode_references(
        self, plan: Plan, images: dict[int, Image.Image]
    ) -> dict[int, torch.Tensor]:
        """VAE latent tokens [h*w, 64] per slot: BAGEL's resize, [-1, 1], posterior mean.
        Cached by pixel content, so regenerating with the same references skips the VAE."""
        out = {}
        for seg in plan.segments:
            if seg.kind != "image" or seg.slot in out:
                continue
            img = vae_resize(images[seg.slot])
            assert img.size == seg.size, (img.size, seg.size)
            key = hashlib.sha256(img.tobytes()).hexdigest() + f"{img.size}"
            if key not in self._latents:
                pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
                pixels = pixels.float().div(255).sub(0.5).div(0.5)[None]
                self._latents[key] = patchify(self.vae.encode(pixels).float())
                while len(self._latents) > LATENT_CACHE_SIZE:
                    self._latents.popitem(last=False)
            self._latents.move_to_end(key)
            out[seg.slot] = self._latents[key]
        return out

    def _block(
        self,
        seg: Segment,
        tokens: torch.Tensor,
        t: torch.Tensor,
        attributes: tuple[str, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """<|vision_start|> latents <|vision_end|> as LLM inputs, and its expert mask."""
        ids = torch.tensor(
            [self.token_ids.vision_start, self.token_ids.vision_end], device=self.device
        )
        markers = self.model.llm.embed_tokens(ids)
        latent = self.model.embed_latents(tokens, t, seg.grid, attributes)
        x = torch.cat((markers[:1], latent, markers[1:]))
        gen = torch.ones(x.shape[0], dtype=torch.bool, device=self.device)
        gen[0] = gen[-1] = False
        return x, gen

    def encode_context(
        self,
        plan: Plan,
        refs: dict[int, torch.Tensor],
        *,
        need_text: bool = True,
        need_img: bool = True,
        attribute_projection: bool = True,
        return_hidden: bool = False,
    ) -> Contexts:
        """Prefill gen segment by segment (SIGMA's mask on text segments), then cfg_text as
        gen's prefix before the last text segment, and cfg_img from the text segments only."""
        dev, llm = self.device, self.model.llm
        cfg = self.model.config
        noise = plan.segments[-1]
        gen = KVCache.empty(cfg, noise.start + noise.length, dtype=self.dtype, device=dev)
        zero = torch.zeros(1, device=dev)
        cut, cut_pos = 0, 0
        hidden = []
        texts = []
        for seg, sm in zip(plan.segments[:-1], segment_masks(plan), strict=False):
            positions = plan.position_ids[seg.start : seg.end].to(dev)
            if seg.kind == "text":
                cut, cut_pos = seg.start, seg.position  # official: copy gen before each text
                ids = plan.token_ids[seg.start : seg.end].to(dev)
                texts.append(ids)
                x = llm.embed_tokens(ids)
                expert = torch.zeros(seg.length, dtype=torch.bool, device=dev)
                mask = sm.mask.to(dev)
                gen.position = seg.position + seg.length
            else:
                attrs = seg.attributes if attribute_projection else ()
                x, expert = self._block(seg, refs[seg.slot], zero, attrs)
                mask = None
                gen.position = seg.position + 1
            h = llm(x, positions, expert, gen, mask, commit=True)
            if return_hidden:
                hidden.append(h)
            if seg.kind == "image":
                cut, cut_pos = seg.end, gen.position  # ... and after each image
        cfg_text = None
        if need_text and cut < gen.length:
            cfg_text = gen.prefix(cut, cut_pos, cut + noise.length)
        has_images = any(seg.kind == "image" for seg in plan.segments)
        cfg_img = self._text_only_context(texts, noise.length) if need_img and has_images else None
        return Contexts(gen, cfg_text, cfg_img, torch.cat(hidden) if return_hidden else None)

    def _text_only_context(self, texts: list[torch.Tensor], extra: int) -> KVCache:
        """The cfg_img context: every text segment, causal, positions counted over text only."""
        total = sum(t.numel() for t in texts)
        cache = KVCache.empty(
            self.model.config, total + extra, dtype=self.dtype, device=self.device
        )
        for ids in texts:
            n, past = ids.numel(), cache.length
            positions = torch.arange(cache.position, cache.position + n, device=self.device)
            mask = torch.ones(n, past + n, dtype=torch.bool, device=self.device).tril(past)
            expert = torch.zeros(n, dtype=torch.bool, device=self.device)
            self.model.llm(
                self.model.llm.embed_tokens(ids), positions, expert, cache, mask, commit=True
            )
            cache.position += n
        return cache

    def _velocity(
        self, x: torch.Tensor, t: torch.Tensor, seg: Segment, ctx: Contexts, g: Guidance
    ) -> tuple[torch.Tensor, int]:
        """The guided velocity at t, and how many LLM passes it took."""
        x_in, expert = self._block(seg, x, t.reshape(1))
        n = x_in.shape[0]

        def run(cache: KVCache) -> torch.Tensor:
            positions = torch.full((n,), cache.position, device=self.device)
            h = self.model.llm(x_in, positions, expert, cache, None, commit=False)
            return self.model.velocity(h[1:-1]).float()

        want_text, want_img = g.branches(float(t))
        v = run(ctx.gen)
        passes = 1
        v_text = v_img = None
        if want_text:
            if ctx.cfg_text is None:
                v_text = v  # identical context: the official pass would return exactly v
            else:
                v_text, passes = run(ctx.cfg_text), passes + 1
        if want_img:
            if ctx.cfg_img is None:
                v_img = v  # a prompt without images: cfg_img's context is gen's
            else:
                v_img, passes = run(ctx.cfg_img), passes + 1
        return guide(v, v_text, v_img, g), passes

    def _initial_noise(
        self,
        seg: Segment,
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
        seed: int | None,
    ) -> tuple[torch.Tensor, int]:
        """Noise tokens [h*w, 64] in fp32, and the seed behind them."""
        z = self.model.latent_channels
        shape = (1, z, seg.grid[0] * 2, seg.grid[1] * 2)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise SigmaInputError(
                    f"latents: shape {list(latents.shape)} does not match the output "
                    f"{seg.size[0]}x{seg.size[1]}: expected {list(shape)}"
                )
            noise = latents
            seed = generator.initial_seed() if generator is not None else (seed or 0)
        else:
            if generator is None:
                seed = seed if seed is not None else secrets.randbelow(2**63)
                generator = torch.Generator("cpu").manual_seed(seed)
            else:
                seed = generator.initial_seed()
            noise = torch.randn(shape, generator=generator, device=generator.device)
        return patchify(noise.to(self.device, torch.float32)), seed

    def _decode(self, latent: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray:
        img = self.vae.decode(latent).float()
        img = (img * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)  # [1, H, W, 3]
        if output_type == "np":
            return img.cpu().numpy()
        return [Image.fromarray((img[0] * 255).to(torch.uint8).cpu().numpy())]
