"""The training loop: accelerate runs it on one process or many (DDP or FSDP, set by
``accelerate launch`` and its config), everything else is here in order.

Per step: read samples from the data position until the packed batch is full, encode their
images together (or read their VAE posteriors from the latent cache), noise each target at a
logit-normal t, one packed forward, BAGEL's flow loss, clip, AdamW, cosine LR, EMA.
Every random draw of a sample (resize, dropout, VAE posterior) is seeded by its place in the
data order, and each step's timesteps and noise by the step, so a resumed run repeats an
uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from sigma_core.errors import SigmaInputError, SigmaOutOfMemoryError
from sigma_core.inputs.preset import load_preset
from sigma_core.model.attribute_projection import AttributeProjection
from sigma_core.model.bagel import BagelGenerator
from sigma_core.runtime.output import out_of_memory
from sigma_core.runtime.pipeline import SigmaPipeline
from sigma_core.training import checkpoints
from sigma_core.training.config import TrainConfig
from sigma_core.training.data import DataPosition, TrainDataset
from sigma_core.training.flow import flow_loss, sample_timesteps
from sigma_core.training.packing import Draft, ExampleMaker, ImageBounds, PackedBatch, pack
from sigma_core.training.posteriors import open_cache
from sigma_core.training.rows import SkipCounter, TrainSample

# The generation branch (the paper trains only it): the gen expert of every layer, and the
# connectors between latents and the LLM. The latent position table is fixed (sin-cos).
GEN_BRANCH = ("_moe_gen", "vae2llm.", "llm2vae.", "time_embedder.", "attribute_embed.")
FIXED = ("latent_pos_embed.",)
# LoRA goes on the gen expert's linear layers, both attention and MLP.
LORA_TARGETS = r".*layers\.\d+\.(self_attn\.[qkvo]_proj_moe_gen|mlp_moe_gen\.(gate|up|down)_proj)"


class TrainingOutOfMemoryError(SigmaOutOfMemoryError):
    ADVICE = (
        "lower max_tokens (tokens per batch per GPU), turn gradient_checkpointing on, train "
        "LoRA (train: lora) or keep frozen weights in bf16 (weights_dtype: bf16), or shard over "
        "more GPUs with FSDP; the last checkpoint is kept, so --resume latest continues"
    )


@dataclass(frozen=True)
class StepStats:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    seconds: float


def trainable_names(model: nn.Module, train: str) -> list[str]:
    """The parameters a run updates: the generation branch (``gen``), everything but the fixed
    position table (``full``), or LoRA adapters plus W_tau (``lora``, after peft wrapped)."""
    names = []
    for name, _ in model.named_parameters():
        if name.startswith(FIXED):
            continue
        gen = train == "gen" and any(k in name for k in GEN_BRANCH)
        lora = train == "lora" and ("lora_" in name or "attribute_embed." in name)
        if train == "full" or gen or lora:
            names.append(name)
    return names


def prepare_model(model: BagelGenerator, cfg: TrainConfig) -> nn.Module:
    """W_tau added (zero) when asked for and missing; LoRA wrapped when asked; requires_grad
    set on exactly the trained parameters, which stay fp32 while frozen ones may be bf16."""
    if cfg.attribute_projection and model.attribute_embed is None:
        model.attribute_embed = AttributeProjection(model.config.hidden_size)
        nn.init.zeros_(model.attribute_embed.weight)
    if cfg.weights_dtype == "bf16":
        model.to(torch.bfloat16)
    model.llm.gradient_checkpointing = cfg.gradient_checkpointing
    net: nn.Module = model
    if cfg.train == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # peft says int; it divides by it
            lora_dropout=cfg.lora_dropout,
            target_modules=LORA_TARGETS,
        )
        net = inject_adapter_in_model(lora, model)
    names = set(trainable_names(net, cfg.train))
    for name, p in net.named_parameters():
        p.requires_grad_(name in names)
        if name in names and p.dtype != torch.float32:
            p.data = p.data.float()
    return net.train()


class Trainer:
    """One run of ``cfg``. ``run()`` trains to ``cfg.steps`` (or ``max_steps``), saving every
    ``save_every`` steps and at the end; it resumes from the newest checkpoint in the output
    folder when ``resume`` is "latest", or from a given checkpoint folder. ``pipeline`` gives
    an already loaded model (benchmarks fill one with random full-size weights)."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: str | None = None,
        pipeline: SigmaPipeline | None = None,
    ) -> None:
        self.cfg = cfg.check()
        self.out = Path(cfg.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with=list(cfg.trackers) or None,
            project_dir=str(self.out),
        )
        acc = self.accelerator
        set_seed(cfg.seed)
        # Everything a user gave is checked before the model loads: the data, the checkpoint
        # to resume, the validation preset.
        self.skipped = SkipCounter()
        self.dataset = TrainDataset(list(cfg.data), seed=cfg.seed, skipped=self.skipped)
        resume_from = checkpoints.find(self.out, resume) if resume else None
        self.cache = open_cache(cfg.latent_cache, cfg.latent_cache_bytes)
        self.sample_composition = None
        if cfg.sample_every:
            assert cfg.sample_preset is not None  # TrainConfig refuses sample_every without one
            comp = load_preset(cfg.sample_preset)
            # sampled in the sequence the model trains on: its layout and mask
            settings = comp.settings.replace(
                num_timesteps=cfg.sample_steps, seed=0, layout=cfg.layout, mask=cfg.mask
            )
            self.sample_composition = dataclasses.replace(comp, settings=settings)
        # fp32 on the CPU first: prepare_model casts, and accelerate places it
        self.pipe = pipeline or SigmaPipeline.from_pretrained(
            cfg.base, sigma_weights=cfg.sigma_weights, precision="fp32", device="cpu"
        )
        model = self.pipe.model
        self.net = prepare_model(model, cfg)
        self.pipe.vae.to(acc.device)
        self.names = trainable_names(self.net, cfg.train)
        params = [p for n, p in self.net.named_parameters() if n in set(self.names)]
        if not params:
            raise SigmaInputError(f"train: {cfg.train!r} leaves nothing to train in this model")
        optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, cfg.warmup_steps, cfg.steps, min_lr=cfg.min_lr
        )
        # The scheduler stays outside prepare: accelerate would step it once per process, but
        # its length counts optimizer steps, as BAGEL's does.
        self.model, self.optimizer = acc.prepare(self.net, optimizer)
        self.scheduler = scheduler
        self.ema = checkpoints.ParamEMA(self.model, self.names, cfg.ema)
        self.train_state = checkpoints.TrainState(
            model=acc.unwrap_model(self.model),
            optimizer=self.optimizer,
            ema=self.ema,
            names=tuple(self.names),
            rank=acc.process_index,
            main=acc.is_main_process,
            barrier=acc.wait_for_everyone,
        )
        self.maker = ExampleMaker(
            self.pipe.tokenizer,
            self.pipe.vae,
            bounds=ImageBounds(cfg.max_image_size, cfg.min_image_size, cfg.resize_jitter),
            max_tokens=cfg.max_tokens,
            mask=cfg.mask,
            layout=cfg.layout,
            text_dropout=cfg.text_dropout,
            image_dropout=cfg.image_dropout,
            vit_dropout=cfg.vit_dropout,
            skipped=self.skipped,
            cache=self.cache,
        )
        self.step = 0
        self.position = DataPosition()
        self._pending: tuple[DataPosition, Draft] | None = None
        self._last_norm = float("nan")
        self._saved_step = -1
        self.interrupted = False  # set when Ctrl-C stopped the last run() early
        if resume_from:
            self.load(resume_from)

    # ------------------------------------------------------------------------- data

    def _drafts(self) -> Iterator[tuple[DataPosition, Draft | None]]:
        """(position before, draft or None) for this process's samples, from the position.
        The draft that overflowed the last batch is made once and handed back first."""
        acc = self.accelerator
        before = self.position
        stream = self.dataset.iterate(before, rank=acc.process_index, world=acc.num_processes)
        for after, sample in stream:
            pending, self._pending = self._pending, None
            if pending is not None and pending[0] == before:
                yield before, pending[1]
            else:
                yield before, self._make(before, sample)
            before = after

    def _make(self, at: DataPosition, sample: TrainSample) -> Draft | None:
        seed = hash((self.cfg.seed, at.epoch, at.cursor)) & 0x7FFF_FFFF
        g = torch.Generator(self.pipe.vae.device).manual_seed(seed)
        return self.maker(sample, random.Random(seed), g)

    def next_batch(self) -> PackedBatch:
        """Examples from the data position until the next would overflow ``max_tokens``; the
        position then points at that next sample, so it is the next batch's first. Their
        images are encoded together, once the batch is known."""
        taken: list[Draft] = []
        size = misses = 0
        for before, draft in self._drafts():
            if draft is None:
                misses += 1
                if misses > len(self.dataset):  # a whole epoch and nothing usable
                    raise SigmaInputError(
                        f"data: no row fits (max_tokens {self.cfg.max_tokens:,}, images "
                        f"{self.cfg.min_image_size}-{self.cfg.max_image_size} px); "
                        f"{self.skipped.summary()}"
                    )
                continue
            misses = 0
            if taken and size + draft.length > self.cfg.max_tokens:
                self.position, self._pending = before, (before, draft)
                break
            taken.append(draft)
            size += draft.length
        examples = self.maker.encode(taken)
        acc = self.accelerator
        g = torch.Generator().manual_seed(
            (self.cfg.seed * 1_000_003 + self.step * 7919 + acc.process_index) & 0x7FFF_FFFF
        )
        t = sample_timesteps(len(examples), self.cfg.timestep_shift, generator=g)
        noise = [torch.randn(ex.target.shape, generator=g) for ex in examples]
        base = self.pipe.model
        return pack(
            examples, t, noise,
            max_latent_size=base.max_latent_size,
            # always given when W_tau trains, so it is used (zero rows) in every step (DDP)
            attributes=self.cfg.attribute_projection and base.attribute_embed is not None,
            frozen_und=self.cfg.train != "full",
            flex=self.cfg.flex_attention and acc.device.type == "cuda",
            device=acc.device,
        )  # fmt: skip

    # ------------------------------------------------------------------------- one step

    def train_step(self) -> StepStats:
        acc, cfg = self.accelerator, self.cfg
        start = time.perf_counter()
        tokens, loss_sum = 0, 0.0
        for _ in range(cfg.grad_accum):
            batch = self.next_batch()
            with torch.enable_grad():  # whatever the caller's grad mode
                loss = self._forward_backward(batch)
            loss_sum += float(acc.reduce(loss.detach(), "sum")) / cfg.grad_accum
            tokens += batch.sequence.length
        self.ema.update(self.model)
        self.step += 1
        lr = self.scheduler.get_last_lr()[0]
        norm = self._last_norm
        return StepStats(self.step, loss_sum, lr, norm, tokens, time.perf_counter() - start)

    def _forward_backward(self, batch: PackedBatch) -> torch.Tensor:
        """One micro-batch: BAGEL's loss over the global batch's loss tokens, backward, and
        on the last micro-batch of a step the clip, AdamW and the LR schedule."""
        acc, cfg = self.accelerator, self.cfg
        total = acc.reduce(torch.tensor(batch.loss_tokens, device=acc.device), "sum")
        with acc.accumulate(self.model):
            pred = self.model(batch.sequence)
            loss = flow_loss(pred, batch.target, total.float() / acc.num_processes)
            acc.backward(loss)
            if acc.sync_gradients and cfg.grad_clip:
                norm = acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self._last_norm = float(norm)
            self.optimizer.step()  # a no-op until the last micro-batch (accelerate)
            if acc.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    # ------------------------------------------------------------------------- the run

    def run(self, max_steps: int | None = None) -> list[StepStats]:
        """Train to ``cfg.steps`` (at most ``max_steps`` more); returns each step's stats."""
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.cfg
        stop = min(cfg.steps, self.step + max_steps) if max_steps else cfg.steps
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        acc.init_trackers("sigma", config=_flat(cfg.to_dict()))
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not acc.is_main_process,
                   desc="training", unit="step", dynamic_ncols=True)  # fmt: skip
        history = []
        self.interrupted = False
        try:
            with _stop_requests() as requested:
                while self.step < stop:
                    with out_of_memory(f"training step {self.step + 1}", acc.device,
                                       error=TrainingOutOfMemoryError):  # fmt: skip
                        stats = self.train_step()
                    history.append(stats)
                    self._report(stats, bar, stop)
                    if self._agree(requested()):
                        self.interrupted = True
                        if self._saved_step != self.step:
                            self.save()
                        break
        finally:
            bar.close()
            # every process reaches the end before accelerate tears the process group down
            # (one leaving early can leave another hanging at exit)
            acc.wait_for_everyone()
            acc.end_training()
        return history

    def _agree(self, flag: bool) -> bool:
        """Whether any process was asked to stop (all stop at the same step)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return flag
        return bool(acc.reduce(torch.tensor(int(flag), device=acc.device), "sum").item())

    def _report(self, stats: StepStats, bar: Any, stop: int) -> None:
        """Progress bar, tracker logs, validation samples and checkpoints after a step."""
        acc, cfg = self.accelerator, self.cfg
        tok_s = stats.tokens * acc.num_processes / max(stats.seconds, 1e-9)
        bar.update(1)
        postfix = dict(loss=f"{stats.loss:.4f}", tok_s=f"{tok_s:,.0f}", lr=f"{stats.lr:.2e}",
                       skipped=self.skipped.total)  # fmt: skip
        if self.cache is not None:  # this process's share of posteriors read, not encoded
            postfix["cached"] = f"{self.cache.hit_rate:.0%}"
        bar.set_postfix(postfix)
        if self.step % cfg.log_every == 0 or self.step == stop:
            acc.log({"loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                     "tokens_per_s": tok_s, "skipped": self.skipped.total},
                    step=self.step)  # fmt: skip
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            self.sample_image()
        if self.step % cfg.save_every == 0 or self.step == stop:
            self.save()

    def sample_image(self) -> Path | None:
        """Generate the validation preset with the EMA weights swapped in; PNG and tracker.
        Skipped without a preset, and under FSDP, where no process holds the whole model."""
        acc, comp = self.accelerator, self.sample_composition
        if comp is None or not acc.is_main_process or acc.distributed_type.name.startswith("FSDP"):
            return None
        with self.ema.swapped(acc.unwrap_model(self.model)), torch.no_grad():
            self.pipe.model.eval()
            images = self.pipe(comp).images
            self.pipe.model.train()
        assert isinstance(images, list)  # output_type "pil"
        image = images[0]
        path = self.out / "samples" / f"step-{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        for tracker in acc.trackers:
            if tracker.name == "tensorboard":
                import numpy as np

                tracker.writer.add_image("sample", np.asarray(image), self.step, dataformats="HWC")
        return path

    # ------------------------------------------------------------------------- checkpoints

    def progress(self) -> checkpoints.Progress:
        """Where the run stands, as a checkpoint records it."""
        return checkpoints.Progress(
            step=self.step,
            position=self.position,
            scheduler=self.scheduler.state_dict(),
            skipped=self.skipped.as_dict(),
            skipped_total=self.skipped.total,
            config=self.cfg.to_dict(),
        )

    def save(self) -> Path:
        folder = self.out / "checkpoints" / f"step-{self.step:07d}"
        checkpoints.save(self.train_state, self.progress(), folder)
        self._saved_step = self.step
        if self.accelerator.is_main_process:
            checkpoints.prune(self.out, self.cfg.keep_checkpoints)
        return folder

    def load(self, folder: Path) -> None:
        progress = checkpoints.load(self.train_state, folder)
        self.step = progress.step
        self.position = progress.position
        self.scheduler.load_state_dict(progress.scheduler)


@contextmanager
def _stop_requests() -> Iterator[Callable[[], bool]]:
    """Ctrl-C asks the run to stop after the current step (with a checkpoint); a second one
    stops at once. Yields a function that says whether a stop was asked. Outside the main
    thread (where signals cannot be caught) Ctrl-C keeps its usual effect."""
    asked = [False]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if asked[0]:
            raise KeyboardInterrupt
        asked[0] = True
        print("\nstopping after this step, with a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)  # fmt: skip

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: asked[0]
    finally:
        signal.signal(signal.SIGINT, previous)


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Tracker-friendly hyperparameters (scalars and strings only)."""
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
            for k, v in config.items() if v is not None}  # fmt: skip
