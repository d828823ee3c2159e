"""The runtime on tiny checkpoints: batched against sequential CFG, compilation, per-run state
(threads, cancel), the step callback's tensors, frozen weights and the error types."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sigma_core import (
    CheckpointError,
    Composition,
    GenerationCancelled,
    ImageInputError,
    PresetError,
    PromptError,
    Reference,
    Settings,
    SigmaError,
    SigmaInputError,
    SigmaOutOfMemoryError,
    SigmaPipeline,
    build_plan,
)
from sigma_core.errors import SigmaResourceError
from sigma_core.model import patchify, unpatchify
from sigma_core.runtime import CALLBACK_TENSORS, Denoiser, Guidance, guide, prefill_contexts
from sigma_core.runtime.sampler import timesteps

ENDS_WITH_TEXT = "Put [1] on a beach next to [2] at sunset"
ENDS_WITH_IMAGE = "Paint [1] in the style of [2]"


def _image(seed: int, size=(512, 512)) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def _comp(prompt: str = ENDS_WITH_TEXT, **settings) -> Composition:
    refs = [
        Reference(1, _image(1), ("<subject>",), "the ball"),
        Reference(2, _image(2, (640, 512)), ("<id>",), "the person"),
    ]
    settings.setdefault("size", (128, 128))
    return Composition(prompt, refs, Settings(**settings))


def _prefilled(pipe: SigmaPipeline, comp: Composition):
    images = comp.load_images()
    plan = build_plan(comp, pipe.tokenizer, {s: im.size for s, im in images.items()})
    refs = pipe.encode_references(plan, images)
    need_img = comp.settings.cfg_img_scale > 1  # as the pipeline decides
    with torch.no_grad():
        ctx = prefill_contexts(pipe.model, plan, refs, need_img=need_img)
    return plan, ctx


# ----------------------------------------------------------------------------- batched CFG


@pytest.mark.parametrize(
    ("prompt", "img_scale"),
    [(ENDS_WITH_TEXT, 2.0), (ENDS_WITH_IMAGE, 2.0), (ENDS_WITH_TEXT, 1.0)],
    ids=["ends-with-text", "ends-with-image", "image-cfg-off"],
)
def test_batched_cfg_equals_sequential(pipe, prompt: str, img_scale: float) -> None:
    """One forward with B rows (cfg rows padded to gen's length and masked) gives the velocities
    of the rows run one by one, to 1e-5 in fp32, at every kind of step."""
    comp = _comp(prompt, cfg_img_scale=img_scale)
    plan, ctx = _prefilled(pipe, comp)
    rows = 1 + (ctx.text_row is not None) + (ctx.img_row is not None)
    assert rows == {ENDS_WITH_TEXT: 3 if img_scale > 1 else 2, ENDS_WITH_IMAGE: 2}[prompt]
    g = Guidance.from_settings(comp.settings)
    batched = Denoiser(pipe.model, ctx, plan.noise.grid, g, batched=True)
    sequential = Denoiser(pipe.model, ctx, plan.noise.grid, g, batched=False)
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
    for t, (want_text, want_img) in ((0.9, (True, img_scale > 1)), (0.3, (False, False))):
        with torch.no_grad():
            a = batched(x, torch.tensor(t), want_text, want_img)
            b = sequential(x, torch.tensor(t), want_text, want_img)
        assert a.passes == b.passes
        for name in ("guided", "cond", "text", "img"):
            va, vb = getattr(a, name), getattr(b, name)
            assert (va is None) == (vb is None), name
            if va is not None:
                torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5, msg=name)
    out = {
        mode: pipe(comp, num_inference_steps=4, output_type="latent", batch_cfg=mode).latents
        for mode in (True, False)
    }
    torch.testing.assert_close(out[True], out[False], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_denoising_pass_compiles_whole(pipe) -> None:
    """The pass has fixed shapes and no host sync: torch.compile takes it as one graph and
    gives the eager numbers."""
    comp = _comp()
    plan, ctx = _prefilled(pipe, comp)
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(6))
    t = torch.tensor(0.7)
    with torch.no_grad():
        dctx = pipe.model.denoise_context(ctx.cache, plan.noise.grid)
        eager = pipe.model.velocity(x, t, dctx)
        compiled = torch.compile(pipe.model.velocity, fullgraph=True, dynamic=False)
        torch.testing.assert_close(compiled(x, t, dctx), eager, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(compiled(x, torch.tensor(0.2), dctx), pipe.model.velocity(
            x, torch.tensor(0.2), dctx), atol=1e-5, rtol=1e-5)  # fmt: skip


# ----------------------------------------------------------------------------- per-run state


def _run(pipe: SigmaPipeline, seed: int, cancel=None, callback=None) -> torch.Tensor:
    return pipe(
        _comp(seed=seed), num_inference_steps=5, output_type="latent", cancel=cancel,
        callback_on_step_end=callback,
    ).latents  # fmt: skip


def test_two_threads_share_one_pipeline(pipe) -> None:
    alone = {seed: _run(pipe, seed) for seed in (3, 4)}
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(2)

    def work(seed: int) -> None:
        start.wait()
        results[seed] = _run(pipe, seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in (3, 4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for seed in (3, 4):
        assert torch.equal(results[seed], alone[seed])


def test_cancelling_one_run_leaves_the_other(pipe) -> None:
    expected = _run(pipe, 4)
    stop_a, stop_b = threading.Event(), threading.Event()
    a_started = threading.Event()
    outcome: dict[str, object] = {}

    def slow_a(p, step, t, tensors):
        a_started.set()
        stop_a.wait(timeout=30)  # cancelled from outside while it runs

    def run_a() -> None:
        try:
            _run(pipe, 3, cancel=stop_a, callback=slow_a)
        except GenerationCancelled as e:
            outcome["a"] = e

    def run_b() -> None:
        a_started.wait(timeout=30)
        outcome["b"] = _run(pipe, 4, cancel=stop_b)
        stop_a.set()

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert isinstance(outcome["a"], GenerationCancelled) and outcome["a"].step == 1
    assert torch.equal(outcome["b"], expected)
    assert not stop_b.is_set()


def test_cancel_before_the_first_step_is_honoured(pipe) -> None:
    stop = threading.Event()
    stop.set()
    steps = []
    with pytest.raises(GenerationCancelled, match="before step 1 of 4") as e:
        _run(pipe, 1, cancel=stop, callback=lambda p, i, t, k: steps.append(i))
    assert e.value.step == 0 and steps == []
    assert _run(pipe, 1).shape == (1, 16, 16, 16)  # the pipeline is still usable


# ----------------------------------------------------------------------------- callback


def test_step_callback_gets_every_tensor_it_asks_for(pipe) -> None:
    seen = []

    def record(p, step, t, tensors):
        seen.append(tensors)

    comp = _comp(cfg_interval=(0.5, 1.0))
    out = pipe(
        comp, num_inference_steps=5, output_type="latent", callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=CALLBACK_TENSORS,
    )  # fmt: skip
    ts = timesteps(5, comp.settings.timestep_shift)
    g = Guidance.from_settings(comp.settings)
    assert len(seen) == 4
    for i, k in enumerate(seen):
        assert set(k) == set(CALLBACK_TENSORS)
        assert torch.equal(k["t"], ts[i]) and torch.equal(k["t_next"], ts[i + 1])
        active = g.active(float(ts[i]))
        assert (k["v_text"] is not None) == active and (k["v_img"] is not None) == active
        shape = (1, 16, 16, 16)
        assert k["latents"].shape == k["velocity"].shape == k["v_cond"].shape == shape
        tokens = {
            n: None if k[n] is None else patchify(k[n]) for n in ("v_cond", "v_text", "v_img")
        }
        torch.testing.assert_close(
            k["velocity"], unpatchify(guide(tokens["v_cond"], tokens["v_text"], tokens["v_img"], g),
                                      (8, 8)))  # fmt: skip
    assert torch.equal(seen[-1]["latents"], out.latents)
    with pytest.raises(SigmaInputError, match="'v_uncond' not in latents, velocity"):
        pipe(comp, callback_on_step_end_tensor_inputs=("latents", "v_uncond"))


# ----------------------------------------------------------------------------- weights, errors


def test_loaded_weights_are_frozen_and_in_eval_mode(pipe) -> None:
    for module in (pipe.model, pipe.vae):
        assert not any(p.requires_grad for p in module.parameters())
        assert not any(m.training for m in module.modules())


def test_out_of_memory_is_a_resource_error_with_advice(pipe, monkeypatch) -> None:
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipe.model, "velocity", exhausted)
    with pytest.raises(SigmaOutOfMemoryError) as e:
        pipe(_comp(), num_inference_steps=3)
    msg = str(e.value)
    assert "out of memory on cpu while denoising" in msg
    assert "smaller output size" in msg and "fewer or smaller references" in msg
    assert isinstance(e.value, SigmaResourceError) and not isinstance(e.value, SigmaInputError)

    def cpu_exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                           "memory: you tried to allocate 68719476736 bytes.")  # fmt: skip

    monkeypatch.setattr(pipe.model, "velocity", cpu_exhausted)
    with pytest.raises(SigmaOutOfMemoryError, match="while denoising"):
        pipe(_comp(), num_inference_steps=3)


def test_error_hierarchy() -> None:
    for cls in (SigmaInputError, CheckpointError, SigmaResourceError, GenerationCancelled):
        assert issubclass(cls, SigmaError)
    for cls in (PresetError, ImageInputError, PromptError):
        assert issubclass(cls, SigmaInputError)
    assert issubclass(SigmaOutOfMemoryError, SigmaResourceError)
    for cls in (CheckpointError, SigmaResourceError, GenerationCancelled):
        assert not issubclass(cls, SigmaInputError)


# ----------------------------------------------------------------------------- raw syntax


def test_raw_prompt_needs_no_slot_attributes_and_warns_on_disagreement(tokenizer) -> None:
    sizes = {1: (512, 512), 2: (512, 512)}
    refs = [Reference(1, "a.png"), Reference(2, "b.png", ("<style>",))]
    raw = "Put <subject> the ball <image_1> on <id> the person <image_2>"
    plan = build_plan(Composition(raw, refs), tokenizer, sizes)
    blocks = [s for s in plan.segments if s.kind == "image"]
    assert [b.attributes for b in blocks] == [("<subject>",), ("<id>",)]
    assert plan.warnings == [
        "<image_2> is bound to <id> by the prompt, but slot 2 lists <style>; the prompt's "
        "tokens are used"
    ]
    agreeing = replace(refs[1], attributes=("<id>",))
    assert build_plan(Composition(raw, [refs[0], agreeing]), tokenizer, sizes).warnings == []
    with pytest.raises(PromptError, match=r"\[1\] places slot 1, which has no attributes"):
        build_plan(Composition("Put [1] on [2]", refs), tokenizer, sizes)
    template = build_plan(Composition("Put [1:subject] on [2]", refs), tokenizer, sizes)
    assert [s.attributes for s in template.segments if s.kind == "image"] == [
        ("<subject>",),
        ("<style>",),
    ]
