"""The packed training forward against inference: the same plan gives the same hidden states
and velocities, mask on and off, and SIGMA's mask cuts the gradient paths it should."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from PIL import Image

from sigma_core import Composition, Reference, Settings
from sigma_core.planning import build_plan
from sigma_core.planning.mask import dense_mask
from sigma_core.runtime.contexts import prefill_contexts
from sigma_core.training.flow import noised
from sigma_core.training.packing import (
    ExampleMaker,
    ImageBounds,
    TrainingExample,
    drop_conditions,
    pack,
)
from sigma_core.training.rows import BAD_PROMPT, SkipCounter, sample_from_row
from sigma_core.training.synthetic import png_bytes

ENDS_WITH_TEXT = "Put [1] on a beach next to [2] at sunset"
ENDS_WITH_IMAGE = "Put [1] on a beach next to [2]"


@pytest.fixture(scope="module")
def wtau_pipe(tmp_path_factory):
    """Two layers and a random W_tau, so the attribute rows are exercised too."""
    from sigma_core import SigmaPipeline
    from sigma_core.runtime import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("wtau"), seed=3, attribute_embed=True)
    return SigmaPipeline.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def one_layer_pipe(tmp_path_factory):
    from sigma_core import SigmaPipeline
    from sigma_core.runtime import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("one"), seed=4, layers=1)
    return SigmaPipeline.from_pretrained(folder, device="cpu")


def _example(
    pipe, prompt: str, *, mask: bool, seed: int, layout: str = "inference"
) -> TrainingExample:
    refs = [
        Reference(1, Image.new("RGB", (64, 48)), ("<subject>",), "the ball"),
        Reference(2, Image.new("RGB", (48, 64)), ("<id>",), "the person"),
    ]
    comp = Composition(prompt, refs, Settings(size=(64, 80), mask=mask, layout=layout))
    # small blocks: sizes taken as they are, as the trainer's bounds allow
    plan = build_plan(comp, pipe.tokenizer, {1: (64, 48), 2: (48, 64)}, resize=lambda w, h: (w, h))
    g = torch.Generator().manual_seed(seed)
    latents = {
        seg.slot: torch.randn(seg.grid[0] * seg.grid[1], 64, generator=g)
        for seg in plan.segments
        if seg.kind == "image"
    }
    grid = plan.noise.grid
    return TrainingExample(plan, latents, torch.randn(grid[0] * grid[1], 64, generator=g), "t")


def _inference(pipe, ex: TrainingExample, x_t: torch.Tensor, t: torch.Tensor):
    """Context hidden states [L_ctx, d] by prefill, velocity [m, 64] by a denoising pass."""
    model = pipe.model
    ctx = prefill_contexts(
        model, ex.plan, ex.references, need_text=False, need_img=False, return_hidden=True
    )
    dctx = model.denoise_context(ctx.cache.rows(0, 1), ex.plan.noise.grid)
    return ctx.hidden[0], model.velocity(x_t, t, dctx)[0]


@pytest.mark.parametrize("layout", ["inference", "training", "training-no-vit"])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("prompt", [ENDS_WITH_TEXT, ENDS_WITH_IMAGE])
def test_packed_forward_equals_prefill_and_denoising(wtau_pipe, prompt, mask, layout):
    """Also in the training layouts: the phantom blocks' ln N bias and the rope holes are the
    same in the packed forward (training) as in prefill (inference)."""
    pipe = wtau_pipe
    examples = [_example(pipe, prompt, mask=mask, seed=s, layout=layout) for s in (0, 1)]
    t = torch.tensor([0.3, 0.8])
    noise = [torch.randn_like(ex.target) for ex in examples]
    batch = pack(examples, t, noise, max_latent_size=pipe.model.max_latent_size, attributes=True)
    assert batch.sequence.attributes is not None  # W_tau takes part
    assert (batch.sequence.key_bias is not None) == (layout == "training")
    with torch.no_grad():
        hidden = pipe.model.packed_hidden(batch.sequence)
        velocity = pipe.model.packed_velocity(batch.sequence)
    offset = 0
    for i, ex in enumerate(examples):
        x_t = noised(ex.target, noise[i], t[i])
        with torch.no_grad():
            h_ref, v_ref = _inference(pipe, ex, x_t, t[i])
        n_ctx = ex.plan.noise.start
        torch.testing.assert_close(hidden[offset : offset + n_ctx], h_ref, rtol=1e-5, atol=1e-5)
        m = ex.target.shape[0]
        torch.testing.assert_close(velocity[i * m : (i + 1) * m], v_ref, rtol=1e-5, atol=1e-5)
        offset += ex.plan.length
    want = [n - ex.target for n, ex in zip(noise, examples, strict=True)]
    assert torch.equal(batch.target, torch.cat(want))


@pytest.mark.parametrize("layout", ["inference", "training"])
def test_flex_block_mask_gives_the_dense_result(wtau_pipe, layout):
    """flex_attention runs forward on CPU: its block mask (and, with phantom blocks, its
    score_mod adding ln N) must give the dense result."""
    pipe = wtau_pipe
    examples = [_example(pipe, ENDS_WITH_TEXT, mask=True, seed=s, layout=layout) for s in (0, 1)]
    t, noise = torch.tensor([0.5, 0.2]), [torch.zeros_like(ex.target) for ex in examples]
    kw = dict(max_latent_size=pipe.model.max_latent_size, attributes=True)
    with torch.no_grad():
        dense = pipe.model.packed_velocity(pack(examples, t, noise, **kw).sequence)
        flex = pipe.model.packed_velocity(pack(examples, t, noise, flex=True, **kw).sequence)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", [True, False])
def test_mask_cuts_the_gradient_from_other_groups_images(one_layer_pipe, mask):
    """One layer: the <id> token (group 1) sees image 1 (group 0) only when the mask is off."""
    pipe = one_layer_pipe
    ex = _example(pipe, ENDS_WITH_TEXT, mask=mask, seed=0)
    batch = pack([ex], torch.tensor([0.5]), [torch.randn_like(ex.target)],
                 max_latent_size=pipe.model.max_latent_size, attributes=False)  # fmt: skip
    seq = batch.sequence
    latents = seq.latents.clone().requires_grad_(True)
    with torch.enable_grad():
        h = pipe.model.packed_hidden(type(seq)(**{**seq.__dict__, "latents": latents}))
    plan = ex.plan
    attr = [i for i, g in enumerate(plan.group.tolist()) if plan.token_type[i] == 1 and g == 1]
    assert len(attr) == 1
    (grad,) = torch.autograd.grad(h[attr[0]].sum(), latents)
    first_image = plan.segments[1]
    assert first_image.kind == "image" and first_image.group == 0
    m0 = first_image.length - 2  # image 1's latent tokens come first among the latents
    other = grad[:m0].abs().max().item()
    if mask:
        assert other == 0.0
    else:
        assert other > 1e-6


def test_frozen_und_keeps_numbers_and_stops_text_gradients(wtau_pipe):
    pipe = wtau_pipe
    ex = _example(pipe, ENDS_WITH_TEXT, mask=True, seed=2)
    kw = dict(max_latent_size=pipe.model.max_latent_size, attributes=True)
    t, noise = torch.tensor([0.4]), [torch.randn_like(ex.target)]
    model = pipe.model
    free = pack([ex], t, noise, **kw)
    frozen = pack([ex], t, noise, frozen_und=True, **kw)
    emb = model.llm.embed_tokens.weight
    emb.requires_grad_(True)
    try:
        with torch.enable_grad():
            v_free = model.packed_velocity(free.sequence)
            v_frozen = model.packed_velocity(frozen.sequence)
            torch.testing.assert_close(v_free, v_frozen, rtol=0, atol=0)
            (g_free,) = torch.autograd.grad(v_free.sum(), emb)
            (g_frozen,) = torch.autograd.grad(v_frozen.sum(), emb, allow_unused=True)
    finally:
        emb.requires_grad_(False)
    assert g_free.abs().max() > 0
    assert g_frozen is None or g_frozen.abs().max() == 0


def test_dropped_reference_leaves_a_rope_hole_and_dropped_text_none(wtau_pipe):
    ex = _example(wtau_pipe, ENDS_WITH_TEXT, mask=True, seed=0)
    plan = ex.plan
    all_images = drop_conditions(plan, random.Random(0), text=0.0, image=1.0)
    assert [s.kind for s in all_images.segments] == ["text", "text", "text", "noise"]
    texts = [s for s in plan.segments if s.kind == "text"]
    # each dropped reference keeps its rope position: the noise block sits where it did
    assert all_images.noise.position == plan.noise.position
    assert all_images.noise.start == sum(s.length for s in texts)
    no_text = drop_conditions(plan, random.Random(0), text=1.0, image=0.0)
    assert [s.kind for s in no_text.segments] == ["image", "image", "noise"]
    assert [s.position for s in no_text.segments] == [0, 1, 2]
    assert drop_conditions(plan, random.Random(0), text=0.0, image=0.0) is plan


def test_training_layout_drops_vae_and_vit_blocks_apart_with_rope_holes(wtau_pipe):
    """SIGMA's packer drops a reference's VAE block and its ViT block independently; either
    leaves a rope hole, so every later position stays where it was."""
    plan = _example(wtau_pipe, ENDS_WITH_TEXT, mask=True, seed=0, layout="training").plan
    kinds = [s.kind for s in plan.segments]
    assert kinds == ["text", "image", "phantom", "text", "image", "phantom", "text", "noise"]
    no_vae = drop_conditions(plan, random.Random(0), text=0.0, image=1.0)
    assert [s.kind for s in no_vae.segments] == [
        "text",
        "phantom",
        "text",
        "phantom",
        "text",
        "noise",
    ]
    no_vit = drop_conditions(plan, random.Random(0), text=0.0, image=0.0, vit=1.0)
    assert [s.kind for s in no_vit.segments] == ["text", "image", "text", "image", "text", "noise"]
    for dropped in (no_vae, no_vit):
        assert dropped.noise.position == plan.noise.position
        kept = {(s.kind, s.slot, s.position) for s in dropped.segments if s.kind != "text"}
        assert kept <= {(s.kind, s.slot, s.position) for s in plan.segments}
        starts = [s.start for s in dropped.segments]
        assert starts == [sum(s.length for s in dropped.segments[:i]) for i in range(len(starts))]
    # the dropped blocks' frequencies follow their own probabilities, independently
    rng = random.Random(1)
    counts = {"image": 0, "phantom": 0}
    for _ in range(400):
        for s in drop_conditions(plan, rng, text=0.0, image=0.3, vit=0.6).segments:
            counts[s.kind] = counts.get(s.kind, 0) + 1
    assert 0.6 < counts["image"] / 800 < 0.8 and 0.3 < counts["phantom"] / 800 < 0.5


# ----------------------------------------------------------------------------- the target placed

# SIGMA rows may place their last image, the target: "<image_3>" after two references
PLACES_TARGET = (
    "<subject> the ball <image_1> turns into <image_3> beside <id> the man <image_2> now"
)
PLACED_KINDS = ["text", "image", "phantom", "text", "noise", "text", "image", "phantom", "text"]


def _placed_example(pipe, *, layout: str, mask: bool = True, seed: int = 0) -> TrainingExample:
    refs = [Reference(1, Image.new("RGB", (64, 48))), Reference(2, Image.new("RGB", (48, 64)))]
    comp = Composition(PLACES_TARGET, refs, Settings(size=(64, 80), mask=mask, layout=layout))
    plan = build_plan(
        comp, pipe.tokenizer, {1: (64, 48), 2: (48, 64)}, resize=lambda w, h: (w, h), target_slot=3
    )
    g = torch.Generator().manual_seed(seed)
    latents = {s.slot: torch.randn(s.length - 2, 64, generator=g) for s in plan.segments
               if s.kind == "image"}  # fmt: skip
    return TrainingExample(plan, latents, torch.randn(plan.noise.length - 2, 64, generator=g), "t")


def _sigma_packer(plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Rope positions and attention mask of the plan's splits by the rules of SIGMA's
    PackedDataset.pack_sequence and BAGEL's prepare_attention_mask_per_sample: text counts rope
    up token by token, causal; a clean block takes one position and advances it; the loss
    block takes the position without advancing it; a block sees itself and what precedes it;
    nothing outside the loss block sees it."""
    rope, positions = 0, []
    mask = torch.zeros(plan.length, plan.length, dtype=torch.bool)
    for seg in plan.segments:
        a, b = seg.start, seg.end
        positions += range(rope, rope + seg.length) if seg.kind == "text" else [rope] * seg.length
        rope += seg.length if seg.kind == "text" else int(seg.kind != "noise")
        mask[a:b, :a] = True
        mask[a:b, a:b] = torch.ones(b - a, b - a).tril() if seg.kind == "text" else True
    for seg in plan.segments:
        if seg.kind == "noise":
            mask[:, seg.start : seg.end] = False
            mask[seg.start : seg.end, seg.start : seg.end] = True
    return torch.tensor(positions), mask


def test_placed_target_is_laid_out_as_sigmas_packer(wtau_pipe):
    """SepPhotoTokenIterableDataset.parse_row adds the target (loss, no VAE or ViT block)
    where the instruction places it, and not again at the end."""
    plan = _placed_example(wtau_pipe, layout="training", mask=False).plan
    kinds = [s.kind for s in plan.segments]
    assert kinds == PLACED_KINDS
    assert [s.slot for s in plan.segments if s.kind == "image"] == [1, 2]
    assert [s.group for s in plan.segments if s.kind == "image"] == [0, 1]
    noise = plan.noise
    assert noise is plan.segments[4] and noise.grid == (5, 4)  # the target's own size
    assert plan.segments[5].position == noise.position == plan.segments[3].last_position + 1
    positions, mask = _sigma_packer(plan)
    assert torch.equal(plan.position_ids, positions)
    assert torch.equal(dense_mask(plan), mask)
    # the inference layout: the same placement, rope +1 per reference
    inference = _placed_example(wtau_pipe, layout="inference", mask=False).plan
    assert [s.kind for s in inference.segments] == [k for k in kinds if k != "phantom"]
    assert torch.equal(inference.position_ids, _sigma_packer(inference)[0])
    assert inference.noise.position == plan.noise.position - 1


@pytest.mark.parametrize("layout", ["inference", "training"])
def test_placed_target_sees_what_precedes_and_nothing_sees_it(wtau_pipe, layout):
    """The target's velocity is that of the sequence cut after it, and every other token's
    hidden state that of the same sequence with the target moved last (it takes no rope)."""
    ex = _placed_example(wtau_pipe, layout=layout, seed=1)
    plan, at = ex.plan, ex.plan.segments.index(ex.plan.noise)
    cut = dataclasses.replace(plan, segments=plan.segments[: at + 1])
    relaid, start = [], 0
    for s in [*plan.segments[:at], *plan.segments[at + 1 :], plan.noise]:
        relaid.append(dataclasses.replace(s, start=start))
        start += s.length
    last = dataclasses.replace(plan, segments=relaid)
    t, eps = torch.tensor([0.6]), [torch.randn_like(ex.target)]
    kw = dict(max_latent_size=wtau_pipe.model.max_latent_size, attributes=True)
    seqs = [
        pack([dataclasses.replace(ex, plan=p)], t, eps, **kw).sequence for p in (plan, cut, last)
    ]
    with torch.no_grad():
        v_plan, v_cut, v_last = (wtau_pipe.model.packed_velocity(s) for s in seqs)
        h_plan, h_last = (wtau_pipe.model.packed_hidden(seqs[i]) for i in (0, 2))
    torch.testing.assert_close(v_plan, v_cut, rtol=1e-5, atol=1e-5)
    assert (v_plan - v_last).abs().max() > 1e-4  # what follows the target is not seen
    others = torch.cat([torch.arange(s.start, s.end) for s in plan.segments if s.kind != "noise"])
    torch.testing.assert_close(h_plan[others], h_last[: others.numel()], rtol=1e-5, atol=1e-5)


def test_a_row_that_places_the_target_trains(wtau_pipe):
    """From a parquet row to a packed batch: the row is a sample, its target is the loss block
    where the row places it. Placed twice, only the first carries it (SIGMA adds one at each);
    an attribute token whose next image is the target is refused, as at inference."""
    images = [Image.new("RGB", size, colour) for size, colour in
              (((64, 48), "red"), ((48, 64), "blue"), ((64, 80), "green"))]  # fmt: skip
    skipped = SkipCounter()
    bounds = ImageBounds(96, 64)
    maker = ExampleMaker(wtau_pipe.tokenizer, wtau_pipe.vae, bounds=bounds, max_tokens=4096,
                         mask=True, layout="training", skipped=skipped)  # fmt: skip

    def example(instruction: str) -> TrainingExample | None:
        row = {"instruction_list": [[instruction]], "image_list": [png_bytes(im) for im in images]}
        sample = sample_from_row(row, "row", skipped)
        assert sample is not None and sample.target_slot == 3
        draft = maker(sample, random.Random(0), torch.Generator().manual_seed(0))
        return None if draft is None else maker.encode([draft])[0]

    ex = example(PLACES_TARGET)
    assert ex is not None and skipped.total == 0
    assert [s.kind for s in ex.plan.segments] == PLACED_KINDS
    batch = pack([ex], torch.tensor([0.5]), [torch.randn_like(ex.target)],
                 max_latent_size=wtau_pipe.model.max_latent_size, attributes=True)  # fmt: skip
    noise = ex.plan.noise
    latent_at = batch.sequence.latent_index[batch.sequence.loss_index]
    assert torch.equal(latent_at, torch.arange(noise.start + 1, noise.end - 1))
    assert batch.loss_tokens == ex.target.shape[0] == noise.length - 2
    twice = example(PLACES_TARGET + " and <image_3> again")
    assert twice is not None
    assert [s.kind for s in twice.plan.segments] == [*PLACED_KINDS, "text"]
    assert [s.text for s in twice.plan.segments[-2:]] == ["now and", "again"]
    assert torch.equal(twice.plan.position_ids, _sigma_packer(twice.plan)[0])
    assert example("<subject> the ball <image_1> in <style> the painted <image_3>") is None
    assert skipped.count(BAD_PROMPT) == 1 and skipped.total == 1
