"""Sequence layouts: SIGMA's training sequence at inference, exact and cheap.

The compact phantom ViT block (one zero-input token whose key carries ln N) must give what the
literal block (N materialised zero tokens) gives: the same keys and values for every token
outside the phantom blocks, the same velocities and the same final latent, in every CFG row.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sigma_core import Composition, Reference, Settings
from sigma_core.planning import build_plan
from sigma_core.planning.layout import vit_grid, vit_size
from sigma_core.runtime.contexts import Denoiser, prefill_contexts
from sigma_core.runtime.sampler import Guidance, euler_step, timesteps
from tests.phantoms import literal_phantoms

ENDS_WITH_TEXT = "Put [1] on a beach next to [2] at sunset"
ENDS_WITH_IMAGE = "Put [1] on a beach next to [2]"
# fp32 rounding: the compact and the literal block sum their attention over different numbers of
# keys, in an order that depends on the thread count, so each result may differ by a number of
# units in the last place of its own scale. The worst seen over the matrix below, 1 or 2 threads,
# is about 21 ulps (2.5e-6 of the scale); 128 leaves room for other machines' kernels. In float64
# the two agree to 1e-12 (test_compact_phantom_is_exact_in_float64): rounding, not approximation.
ULPS = 128


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _composition(prompt: str, layout: str, *, mask: bool = True) -> Composition:
    refs = [
        Reference(1, _image(1, (64, 48)), ("<subject>",), "the ball"),
        Reference(2, _image(2, (48, 64)), ("<id>",), "the person"),
    ]
    return Composition(prompt, refs, Settings(size=(64, 64), mask=mask, layout=layout))


def _small(pipe, comp: Composition):
    """The plan with small blocks (sizes as they are) and random reference latents."""
    plan = build_plan(comp, pipe.tokenizer, {1: (64, 48), 2: (48, 64)}, resize=lambda w, h: (w, h))
    g = torch.Generator().manual_seed(3)
    refs = {
        s.slot: torch.randn(s.grid[0] * s.grid[1], 64, generator=g)
        for s in plan.segments
        if s.kind == "image"
    }
    return plan, refs


def _with_phantom_tokens(plan, n: int):
    """The plan with every phantom block standing for ``n`` tokens (a 1 x n ViT grid)."""
    segs = [replace(s, grid=(1, n)) if s.kind == "phantom" else s for s in plan.segments]
    return replace(plan, segments=segs)


def _outside_phantoms(plan) -> list[int]:
    """Slots of every token outside the phantom blocks' inside tokens, in order."""
    keep = np.ones(plan.length, dtype=bool)
    for s in plan.segments:
        if s.kind == "phantom":
            keep[s.start + 1 : s.end - 1] = False
    return np.nonzero(keep)[0].tolist()


def _assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to ULPS fp32 units in the last place of ``expected``'s largest magnitude."""
    scale = expected.abs().max().clamp(min=1.0).item()
    tolerance = ULPS * torch.finfo(torch.float32).eps * scale
    worst = (actual - expected).abs().max().item()
    assert worst <= tolerance, f"{worst:.3g} > {tolerance:.3g} ({ULPS} ulps of {scale:.3g})"


def _compare_caches(ctx_c, ctx_l, plan, literal, assert_close) -> None:
    """Keys and values of every token outside the phantom blocks, every layer, every CFG row."""
    cache_c, cache_l = ctx_c.cache, ctx_l.cache
    assert (ctx_c.text_row, ctx_c.img_row) == (ctx_l.text_row, ctx_l.img_row)
    outside_c, outside_l = _outside_phantoms(plan), _outside_phantoms(literal)
    for row in range(cache_c.batch):
        n_c, n_l = cache_c.lengths[row], cache_l.lengths[row]
        keep_c = [i for i in outside_c if i < n_c]
        keep_l = [i for i in outside_l if i < n_l]
        if row == ctx_c.img_row:  # text only: the same slots in both
            keep_c = keep_l = list(range(n_c))
            assert n_c == n_l
        assert len(keep_c) == len(keep_l)
        assert cache_c.positions[row] == cache_l.positions[row]
        for kc, kl in zip(
            cache_c.keys + cache_c.values, cache_l.keys + cache_l.values, strict=True
        ):
            assert_close(kc[row, :, keep_c], kl[row, :, keep_l])


def _sample(pipe, plan, refs, settings: Settings, *, batched: bool, steps: int = 4):
    """The pipeline's own sequence of calls for one plan: prefill, then a short Euler loop."""
    guidance = Guidance.from_settings(settings)
    ts = timesteps(steps, settings.timestep_shift)
    branches = guidance.steps(ts)
    ctx = prefill_contexts(pipe.model, plan, refs, need_text=True, need_img=True)
    den = Denoiser(pipe.model, ctx, plan.noise.grid, guidance, batched=batched, steps=branches)
    grid = plan.noise.grid
    x = torch.randn(grid[0] * grid[1], 64, generator=torch.Generator().manual_seed(5))
    velocities = []
    for i, (want_text, want_img) in enumerate(branches):
        v = den(x, ts[i], want_text, want_img)
        velocities.append((v.cond, v.text, v.img))
        x = euler_step(x, v.guided, ts[i], ts[i + 1])
    return ctx, velocities, x


def test_training_layout_places_phantoms_and_rope_as_sigmas_packer(pipe):
    comp = _composition(ENDS_WITH_TEXT, "training")
    plan = pipe.plan(comp)
    kinds = [s.kind for s in plan.segments]
    assert kinds == ["text", "image", "phantom", "text", "image", "phantom", "text", "noise"]
    assert plan.layout == "training"
    for i, seg in enumerate(plan.segments):
        if seg.kind == "image":
            phantom, after = plan.segments[i + 1], plan.segments[i + 2]
            assert phantom.position == seg.position + 1  # the ViT block at p + 1
            assert after.position == seg.position + 2  # rope +2 per reference
            assert (phantom.slot, phantom.group) == (seg.slot, seg.group)
            src = {1: (64, 48), 2: (48, 64)}[seg.slot]
            assert phantom.grid == vit_grid(*src) and phantom.size == vit_size(*src)
            assert phantom.length == 3
            inside = phantom.start + 1
            assert plan.token_type[inside] == 2 and plan.group[inside] == seg.group
            assert plan.expert[phantom.start : phantom.end].tolist() == [0, 0, 0]
            assert plan.key_bias[inside].item() == pytest.approx(math.log(phantom.phantom_tokens))
    assert plan.key_bias.count_nonzero().item() == 2
    inference = pipe.plan(_composition(ENDS_WITH_TEXT, "inference"))
    no_vit = pipe.plan(_composition(ENDS_WITH_TEXT, "training-no-vit"))
    assert "phantom" not in [s.kind for s in no_vit.segments]
    # every later position is k higher after k references, in both training layouts
    assert no_vit.noise.position == inference.noise.position + 2 == plan.noise.position
    assert not no_vit.has_key_bias and not inference.has_key_bias


@pytest.mark.parametrize(
    ("size", "n"),
    [
        ((768, 512), 925),  # 518 x 350
        ((512, 640), 1110),  # 420 x 518
        ((64, 48), 21 * 16),  # up to the 224 minimum: 294 x 224
        ((1600, 100), 37 * 2),  # 16:1, capped at 518: 518 x 28
    ],
)
def test_phantom_size_follows_sigmas_vit_transform(size, n):
    """518 max, 224 min, patch 14, as SIGMA's vit_image_transform_args (sigma-facts.md's N)."""
    rows, cols = vit_grid(*size)
    assert rows * cols == n


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("prompt", [ENDS_WITH_TEXT, ENDS_WITH_IMAGE])
@pytest.mark.parametrize("n", [1, 2, 7, None])  # None: N as the ViT resize gives it (336, 294)
def test_compact_phantom_equals_literal_block(pipe, prompt, mask, n, batched):
    comp = _composition(prompt, "training", mask=mask)
    plan, refs = _small(pipe, comp)
    if n is not None:
        plan = _with_phantom_tokens(plan, n)
    literal = literal_phantoms(plan)
    assert not literal.has_key_bias
    assert literal.length - plan.length == sum(max(s.phantom_tokens - 1, 0) for s in plan.segments)
    settings = comp.settings.replace(cfg_img_scale=2.0, cfg_text_scale=4.0)
    with torch.no_grad():
        ctx_c, v_c, x_c = _sample(pipe, plan, refs, settings, batched=batched)
        ctx_l, v_l, x_l = _sample(pipe, literal, refs, settings, batched=batched)
    _compare_caches(ctx_c, ctx_l, plan, literal, _assert_fp32_close)
    for step_c, step_l in zip(v_c, v_l, strict=True):
        for a, b in zip(step_c, step_l, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                _assert_fp32_close(a, b)
    _assert_fp32_close(x_c, x_l)


@pytest.mark.parametrize("n", [7, None])
def test_compact_phantom_is_exact_in_float64(tiny_checkpoint, n):
    """In float64 the compact block and the literal one agree to 1e-10 in every key and value
    of every CFG row (0.0 measured): the ln N bias is exact, not an approximation."""
    from sigma_core import SigmaPipeline

    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu")
    pipe.model.double()
    comp = _composition(ENDS_WITH_TEXT, "training")
    plan, refs = _small(pipe, comp)
    if n is not None:
        plan = _with_phantom_tokens(plan, n)
    literal = literal_phantoms(plan)
    refs = {k: v.double() for k, v in refs.items()}
    with torch.no_grad():
        ctx_c = prefill_contexts(pipe.model, plan, refs)
        ctx_l = prefill_contexts(pipe.model, literal, refs)
    assert ctx_c.cache.batch == 3 and ctx_c.cache.keys[0].dtype == torch.float64

    def exact(a: torch.Tensor, b: torch.Tensor) -> None:
        assert (a - b).abs().max().item() <= 1e-10

    _compare_caches(ctx_c, ctx_l, plan, literal, exact)


def test_phantom_blocks_change_the_result_and_the_bias_matters(pipe):
    """The layouts are different sequences; dropping the ln N bias is not the same block."""
    comp = _composition(ENDS_WITH_TEXT, "training")
    plan, refs = _small(pipe, comp)
    unbiased = _with_phantom_tokens(plan, 1)  # one token standing for one: no bias
    with torch.no_grad():
        x = {
            "training": _sample(pipe, plan, refs, comp.settings, batched=False)[2],
            "no bias": _sample(pipe, unbiased, refs, comp.settings, batched=False)[2],
        }
        for layout in ("inference", "training-no-vit"):
            other = replace(comp, settings=comp.settings.replace(layout=layout))
            x[layout] = _sample(pipe, _small(pipe, other)[0], refs, comp.settings, batched=False)[2]
    names = list(x)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (x[a] - x[b]).abs().max() > 1e-4, (a, b)


def test_cfg_img_context_keeps_the_training_rope_holes(pipe):
    """cfg_img in the training layouts: the text alone, at the positions it holds in gen."""
    for layout, hole in (("inference", 0), ("training", 2), ("training-no-vit", 2)):
        plan, refs = _small(pipe, _composition(ENDS_WITH_TEXT, layout))
        with torch.no_grad():
            ctx = prefill_contexts(pipe.model, plan, refs)
        text_len = sum(s.length for s in plan.segments if s.kind == "text")
        cache = ctx.cache
        assert cache.lengths[ctx.img_row] == text_len
        assert cache.positions[ctx.img_row] == text_len + hole * plan.num_groups
        assert cache.positions[0] == plan.noise.position
        last_text = plan.segments[-2]
        assert cache.positions[ctx.text_row] == last_text.position


@pytest.mark.parametrize("mask", [True, False])
def test_mask_treats_the_phantom_token_as_an_image_token_of_its_group(pipe, mask):
    from sigma_core.planning import dense_mask

    plan, _ = _small(pipe, _composition(ENDS_WITH_TEXT, "training", mask=mask))
    dense = dense_mask(plan)
    first = next(s for s in plan.segments if s.kind == "phantom")
    inside = first.start + 1
    special = [i for i, t in enumerate(plan.token_type.tolist()) if t == 1]
    other = [i for i in special if plan.group[i] != first.group and i > inside]
    assert other  # the <id> token of the second reference comes after the first phantom
    assert dense[other[0], inside].item() is (not mask)
    # full attention inside the block: start marker, token and end marker see each other
    block = slice(first.start, first.end)
    assert dense[block, block].all()
    assert not dense[: first.start, block].any()  # nothing earlier sees it


def test_pipeline_runs_each_layout_and_records_what_ran(pipe, tiny_checkpoint):
    from sigma_core import SigmaInputError, SigmaPipeline

    comp = _composition(ENDS_WITH_IMAGE, "auto")
    comp = replace(comp, settings=comp.settings.replace(num_timesteps=3))
    out = pipe(comp, output_type="latent")
    # SIGMA's weights carry no layout: "auto" runs the released inferencer's, and says so
    assert out.plan.layout == "inference" and out.composition.settings.layout == "inference"
    latents = {"inference": out.latents}
    for layout in ("training", "training-no-vit"):
        c = replace(comp, settings=comp.settings.replace(layout=layout))
        out = pipe(c, output_type="latent")
        assert out.plan.layout == layout and out.composition.settings.layout == layout
        assert not out.plan.warnings  # no model card: no layout to disagree with
        latents[layout] = out.latents
    assert not torch.equal(latents["inference"], latents["training"])
    with pytest.raises(SigmaInputError, match="layout: 'trainnig' is not one of"):
        SigmaPipeline.from_pretrained(tiny_checkpoint, layout="trainnig")
    chosen = SigmaPipeline.from_pretrained(tiny_checkpoint, layout="training")
    assert chosen.planner.layout == "training" and chosen.planner.trained_layout is None
    assert chosen.plan(comp).layout == "training"  # "auto" follows the pipeline's layout


def test_a_broken_training_record_is_a_clear_checkpoint_error(tmp_path):
    import json

    from sigma_core import CheckpointError
    from sigma_core.runtime.loader import trained_layout

    assert trained_layout(tmp_path) is None  # SIGMA's weights: no record
    record = tmp_path / "sigma_training.json"
    good = {"format": "sigma-studio-training", "base": "b", "sigma_weights": None, "data": ["d"],
            "steps": 3, "train": "gen", "mask": True, "attribute_projection": True,
            "layout": "training", "weights": "ema", "skipped_rows": {}, "skipped_total": 0,
            "config": {}}  # fmt: skip
    for text, needle in (
        (json.dumps(good), None),
        (json.dumps({**good, "layout": "sideways"}), "layout: 'sideways' is not one of"),
        ('{"layout": "training"}', "format: missing"),
        ("[1, 2]", "expected an object, got a list"),
        ("{not json", "malformed JSON"),
        (" " * (16 << 20) + "{}", "a checkpoint file is at most 16 MB"),
    ):
        record.write_text(text)
        if needle is None:
            assert trained_layout(tmp_path) == "training"
        else:
            with pytest.raises(CheckpointError, match=f"sigma_training.json: {needle}"):
                trained_layout(tmp_path)


def test_cli_generate_runs_the_layout_asked_and_records_it(tmp_path, capsys):
    from sigma_core import read_png_composition
    from sigma_core.cli import main

    preset = Path(__file__).resolve().parent.parent / "presets" / "select_coffee_cup.json"
    out = tmp_path / "x.png"
    args = ["generate", str(preset), "--layout", "training", "--steps", "2", "--size", "64x64"]
    assert main([*args, "-o", str(out)]) == 0
    assert read_png_composition(out).settings.layout == "training"
    capsys.readouterr()
    assert main([*args[:2], "--layout", "sideways", "-o", str(tmp_path / "y.png")]) == 2
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
