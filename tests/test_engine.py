"""The engine on tiny random checkpoints: loading, sampling, contexts, mask, CFG, errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sigma_core import (
    Composition,
    Reference,
    Settings,
    SigmaPipeline,
    read_png_composition,
)
from sigma_core.errors import CheckpointError, GenerationCancelled, SigmaInputError
from sigma_core.frontend import PREVIEW_NOTICE
from sigma_core.model import KVCache, Routing, Span, patchify, unpatchify
from sigma_core.planning import TokenType, build_plan, dense_mask
from sigma_core.runtime import (
    Denoiser,
    Guidance,
    guide,
    make_tiny_checkpoint,
    prefill_contexts,
    timesteps,
)


def _image(seed: int, size=(512, 512)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def _comp(prompt: str = "Put [1] on a beach next to [2] at sunset", **settings) -> Composition:
    refs = [
        Reference(1, _image(1), ("<subject>",), "the ball"),
        Reference(2, _image(2, (640, 512)), ("<id>",), "the person"),
    ]
    settings.setdefault("size", (128, 128))
    return Composition(prompt, refs, Settings(**settings))


def _with_image(comp: Composition, slot: int, image) -> Composition:
    refs = tuple(replace(r, image=image) if r.slot == slot else r for r in comp.references)
    return replace(comp, references=refs)


# ----------------------------------------------------------------------------- loading


def test_loads_official_layout_and_skips_unused(pipe):
    report = pipe.load_report
    assert report.loaded > 0 and not report.attribute_embed
    assert any(k.startswith("vit_model.") for k in report.skipped)
    assert "language_model.lm_head.weight" in report.skipped
    assert any(k.startswith("connector.") for k in report.skipped)
    assert pipe.model.dtype == torch.float32  # cpu default, nothing silently bf16
    assert all(p.dtype == torch.float32 for p in pipe.model.parameters())
    assert all(p.dtype == torch.float32 for p in pipe.vae.parameters())
    assert pipe.preview


def test_tiny_checkpoint_is_official_layout(tiny_checkpoint: Path):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors"} <= names
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    sd = load_file(str(tiny_checkpoint / "ema.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    p = "language_model.model.layers.0."
    for k in ("self_attn.q_proj_moe_gen.weight", "mlp_moe_gen.gate_proj.weight",
              "input_layernorm_moe_gen.weight", "self_attn.k_norm.weight"):  # fmt: skip
        assert p + k in sd
    assert "language_model.model.norm_moe_gen.weight" in sd
    assert "time_embedder.mlp.2.weight" in sd and "latent_pos_embed.pos_embed" in sd
    assert sd["llm2vae.weight"].abs().sum() > 0
    assert not torch.equal(sd[p + "mlp.up_proj.weight"], sd[p + "mlp_moe_gen.up_proj.weight"])
    cfg = json.loads((tiny_checkpoint / "llm_config.json").read_text())
    assert cfg["layer_module"] == "Qwen2MoTDecoderLayer" and cfg["qk_norm"] is True


def test_generate_128_from_two_interleaved_references(pipe, tmp_path: Path):
    out = pipe(_comp(), num_inference_steps=4)
    assert out.images[0].size == (128, 128) and out.images[0].mode == "RGB"
    assert out.latents.shape == (1, 16, 16, 16)
    assert out.seed == 42 and out.composition.settings.seed == 42
    assert out.notice == PREVIEW_NOTICE and out.preview
    kinds = [s.kind for s in out.plan.segments]
    assert kinds == ["text", "image", "text", "image", "text", "noise"]
    path = out.save(tmp_path / "out.png")
    back = read_png_composition(path)
    assert back.prompt == out.composition.prompt and back.settings.seed == 42
    assert Image.open(path).text["sigma-studio-notice"] == PREVIEW_NOTICE


def test_same_seed_same_latents_different_seed_different(pipe):
    a = pipe(_comp(seed=7), num_inference_steps=3, output_type="latent")
    b = pipe(_comp(seed=7), num_inference_steps=3, output_type="latent")
    c = pipe(_comp(seed=8), num_inference_steps=3, output_type="latent")
    assert torch.equal(a.latents, b.latents)
    assert not torch.allclose(a.latents, c.latents)
    g = pipe(_comp(seed=None), generator=torch.Generator().manual_seed(7),
             num_inference_steps=3, output_type="latent")  # fmt: skip
    assert torch.equal(g.latents, a.latents) and g.seed == 7
    r = pipe(_comp(seed=None), num_inference_steps=2, output_type="latent")
    assert isinstance(r.seed, int) and r.composition.settings.seed == r.seed


def test_latents_in_and_out_keep_their_layout(pipe):
    noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    a = pipe(_comp(seed=1), latents=noise, num_inference_steps=3, output_type="latent")
    b = pipe(_comp(seed=2), latents=noise, num_inference_steps=3, output_type="latent")
    assert torch.equal(a.latents, b.latents)  # the given noise, not the seed, was used
    assert a.latents.shape == noise.shape
    # patchify / unpatchify are exact inverses (BAGEL's token packing)
    assert torch.equal(unpatchify(patchify(noise), (8, 8), 16), noise)
    with pytest.raises(SigmaInputError, match=r"latents: shape \[1, 16, 8, 8\] does not match"):
        pipe(_comp(), latents=torch.zeros(1, 16, 8, 8), num_inference_steps=2)
    arr = pipe(_comp(), latents=noise, num_inference_steps=2, output_type="np").images
    assert arr.shape == (1, 128, 128, 3) and arr.min() >= 0 and arr.max() <= 1


# ----------------------------------------------------------------------------- contexts and mask


def _refs(pipe, comp):
    images = {r.slot: comp.load_image(r) for r in comp.references}
    plan = build_plan(comp, pipe.tokenizer, {s: im.size for s, im in images.items()})
    return plan, pipe.encode_references(plan, images)


def test_mask_hides_other_groups_image_from_attribute_token(tmp_path: Path):
    """One layer, so the attribute token's hidden state depends on reference 1 only through
    direct attention, which SIGMA's mask removes. (In deeper models information still flows
    through tokens that may see reference 1, as the paper's formula allows.)"""
    one = SigmaPipeline.from_pretrained(make_tiny_checkpoint(tmp_path / "one", layers=1))
    prompt = "A <subject> ball <image_1> beside <id> a person <image_2>"
    results = {}
    for mask in (True, False):
        for variant in (1, 99):
            comp = _with_image(_comp(prompt, mask=mask), 1, _image(variant))
            plan, refs = _refs(one, comp)
            with torch.no_grad():
                ctx = prefill_contexts(one.model, plan, refs, return_hidden=True)
            special = (plan.token_type == TokenType.SPECIAL).nonzero().flatten()
            assert plan.group[special].tolist() == [0, 1]
            results[mask, variant] = ctx.hidden[0, special[1]]
    assert torch.equal(results[True, 1], results[True, 99])
    assert not torch.allclose(results[False, 1], results[False, 99])


def test_segmentwise_prefill_equals_single_dense_pass(pipe):
    for mask in (True, False):
        comp = _comp("A <subject> ball <image_1> beside <id> a person <image_2> at dusk", mask=mask)
        plan, refs = _refs(pipe, comp)
        model = pipe.model
        with torch.no_grad():
            ctx = prefill_contexts(
                model, plan, refs, return_hidden=True, need_text=False, need_img=False
            )
        # One pass over the whole context with the dense mask B = (C and M) or S.
        n_ctx = plan.segments[-1].start
        xs = []
        for seg in plan.segments[:-1]:
            if seg.kind == "text":
                xs.append(model.llm.embed_tokens(plan.token_ids[seg.start : seg.end])[None])
            else:
                xs.append(
                    model.embed_latent_block(
                        refs[seg.slot],
                        torch.zeros(1),
                        model.latent_pos_embed(model.latent_position_ids(seg.grid)),
                        model.vision_markers(),
                        model.attribute_hot(seg.attributes),
                    )
                )
        cache = KVCache.empty(
            model.config, batch=1, capacity=n_ctx, dtype=torch.float32, device="cpu"
        )
        dense = dense_mask(plan)[:n_ctx, :n_ctx]
        rope = model.llm.rotary_emb(plan.position_ids[:n_ctx], torch.float32)
        routing = Routing.from_experts(plan.expert[:n_ctx].tolist())
        with torch.no_grad():
            h = model.llm(torch.cat(xs, 1), rope, routing, cache, Span(0, n_ctx, dense))
        torch.testing.assert_close(h, ctx.hidden, rtol=1e-5, atol=1e-5)
        for a, b in zip(cache.keys, ctx.cache.keys, strict=True):
            torch.testing.assert_close(a[:, :, :n_ctx], b[:1, :, :n_ctx], rtol=1e-5, atol=1e-5)


def test_denoising_never_writes_the_context(pipe):
    comp = _comp()
    plan, refs = _refs(pipe, comp)
    g = Guidance.from_settings(Settings())
    for batched in (True, False):
        with torch.no_grad():
            ctx = prefill_contexts(pipe.model, plan, refs)
            lengths = list(ctx.cache.lengths)
            before = [
                [k[row, :, :n].clone() for row, n in enumerate(lengths)]
                for k in (*ctx.cache.keys, *ctx.cache.values)
            ]
            denoise = Denoiser(pipe.model, ctx, plan.noise.grid, g, batched=batched)
            denoise(torch.randn(64, 64), torch.tensor(0.5), True, True)
        assert ctx.cache.lengths == lengths
        for rows, k in zip(before, (*ctx.cache.keys, *ctx.cache.values), strict=True):
            assert all(
                torch.equal(a, k[row, :, :n])
                for row, (a, n) in enumerate(zip(rows, lengths, strict=True))
            )


def test_cfg_text_context_is_gen_before_the_last_text(pipe):
    plan, refs = _refs(pipe, _comp())  # ends with text: cfg_text is a shorter prefix
    with torch.no_grad():
        ctx = prefill_contexts(pipe.model, plan, refs)
    cache, text, img = ctx.cache, ctx.text_row, ctx.img_row
    last_text = plan.segments[-2]
    assert last_text.kind == "text"
    assert cache.lengths[text] == last_text.start and cache.positions[text] == last_text.position
    assert torch.equal(
        cache.keys[0][text, :, : last_text.start], cache.keys[0][0, :, : last_text.start]
    )
    text_tokens = sum(s.length for s in plan.segments if s.kind == "text")
    assert cache.lengths[img] == text_tokens and cache.positions[img] == text_tokens
    plan2, refs2 = _refs(pipe, _comp("Paint [1] in the style of [2]"))  # ends with an image
    with torch.no_grad():
        assert prefill_contexts(pipe.model, plan2, refs2).text_row is None  # equals gen: reused


# ----------------------------------------------------------------------------- CFG


@pytest.mark.parametrize(
    ("prompt", "text", "img", "interval", "per_step"),
    [
        ("Put [1] near [2] at sunset", 1.0, 1.0, (0.0, 1.0), 1),
        ("Put [1] near [2] at sunset", 4.0, 2.0, (0.0, 1.0), 3),
        ("Put [1] near [2] at sunset", 4.0, 1.0, (0.0, 1.0), 2),
        ("Put [1] near [2] at sunset", 1.0, 2.0, (0.0, 1.0), 1),  # img CFG needs text CFG
        ("Paint [1] in the style of [2]", 4.0, 2.0, (0.0, 1.0), 2),  # cfg_text == gen
    ],
)
def test_passes_per_step(pipe, prompt, text, img, interval, per_step):
    s = dict(cfg_text_scale=text, cfg_img_scale=img, cfg_interval=interval)
    out = pipe(_comp(prompt, **s), num_inference_steps=5, output_type="latent")
    assert out.num_passes == 4 * per_step


def test_cfg_interval_limits_passes(pipe):
    ts = timesteps(6, 3.0)
    inside = sum(1 for t in ts[:-1] if 0.9 < float(t) <= 1.0)
    out = pipe(_comp(cfg_interval=(0.9, 1.0)), num_inference_steps=6, output_type="latent")
    assert out.num_passes == 5 + 2 * inside and 0 < inside < 5


def test_timesteps_and_shift():
    t = timesteps(5, 3.0)
    raw = torch.linspace(1, 0, 5)
    torch.testing.assert_close(t, 3 * raw / (1 + 2 * raw))
    assert t[0] == 1 and t[-1] == 0


def test_renorm_variants():
    gen = torch.Generator().manual_seed(0)
    v, vt, vi = (torch.randn(6, 64, generator=gen) for _ in range(3))
    g = Guidance(4.0, 2.0, (0, 1), "global", 0.0)
    raw = vi + 2.0 * ((vt + 4.0 * (v - vt)) - vi)
    expected = raw * (v.norm() / (raw.norm() + 1e-8)).clamp(0, 1)
    torch.testing.assert_close(guide(v, vt, vi, g), expected)
    g = Guidance(4.0, 2.0, (0, 1), "channel", 0.0)
    scale = (v.norm(dim=-1, keepdim=True) / (raw.norm(dim=-1, keepdim=True) + 1e-8)).clamp(0, 1)
    torch.testing.assert_close(guide(v, vt, vi, g), raw * scale)
    g = Guidance(4.0, 2.0, (0, 1), "text_channel", 0.0)
    text = vt + 4.0 * (v - vt)
    text = text * (v.norm(dim=-1, keepdim=True) / (text.norm(dim=-1, keepdim=True) + 1e-8)).clamp(
        0, 1
    )
    torch.testing.assert_close(guide(v, vt, vi, g), vi + 2.0 * (text - vi))
    # renorm_min is a floor on the scale
    g = Guidance(4.0, 2.0, (0, 1), "global", 0.9)
    assert torch.allclose(guide(v, vt, vi, g), raw * max(0.9, float(v.norm() / raw.norm())))
    # no text branch: the conditional velocity as is
    assert torch.equal(guide(v, None, None, g), v)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_timesteps": 1}, "num_timesteps"),
        ({"cfg_text_scale": -1.0}, "cfg_text_scale"),
        ({"cfg_img_scale": -2.0}, "cfg_img_scale"),
        ({"cfg_interval": (-0.1, 1.0)}, "cfg_interval"),
        ({"cfg_interval": (0.0, 1.5)}, "cfg_interval"),
        ({"size": (120, 128)}, "multiple of 16"),
    ],
)
def test_invalid_settings(pipe, kwargs, needle):
    with pytest.raises(SigmaInputError, match=needle):
        Settings(**kwargs)
    settings = _comp().settings
    with pytest.raises(dataclasses.FrozenInstanceError):  # never changed after validation
        settings.cfg_text_scale = 9.0
    with pytest.raises(SigmaInputError, match=needle):  # a changed copy is validated again
        settings.replace(**kwargs)


def test_invalid_call_arguments(pipe):
    with pytest.raises(SigmaInputError, match="num_inference_steps: 1 must be >= 2"):
        pipe(_comp(), num_inference_steps=1)
    with pytest.raises(SigmaInputError, match="output_type: 'jpg' is not one of"):
        pipe(_comp(), output_type="jpg")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_weights(folder: Path, edit) -> None:
    sd = load_file(str(folder / "ema.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "ema.safetensors"))


def test_missing_and_unexpected_keys_are_named(tiny_checkpoint: Path, tmp_path: Path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    _edit_weights(bad, lambda sd: (sd.pop("llm2vae.bias"), sd.update(extra=torch.zeros(2))))
    with pytest.raises(CheckpointError) as e:
        SigmaPipeline.from_pretrained(bad)
    assert "missing tensors: llm2vae.bias" in str(e.value)
    assert "unexpected tensors: extra" in str(e.value)


def test_wrong_shape_names_key_and_shapes(tiny_checkpoint: Path, tmp_path: Path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    key = "language_model.model.layers.1.mlp_moe_gen.up_proj.weight"
    _edit_weights(bad, lambda sd: sd.update({key: torch.zeros(7, 64, dtype=torch.bfloat16)}))
    with pytest.raises(CheckpointError, match=rf"{key}: checkpoint shape \[7, 64\] but the model"):
        SigmaPipeline.from_pretrained(bad)


def test_wrong_token_ids_are_refused(tiny_checkpoint: Path, tmp_path: Path):
    from sigma_core.planning import make_tiny_tokenizer

    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    make_tiny_tokenizer(bad, with_sigma_tokens=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bad), local_files_only=True)
    tok.add_tokens(["<select>", "<style>"])  # wrong order: ids no longer follow SIGMA's
    tok.save_pretrained(str(bad))
    with pytest.raises(CheckpointError, match="not consecutive in SIGMA's order"):
        SigmaPipeline.from_pretrained(bad)


def test_offline_without_local_copy_says_how_to_download(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointError) as e:
        SigmaPipeline.from_pretrained("ByteDance-Seed/BAGEL-7B-MoT")
    msg = str(e.value)
    assert "hf download ByteDance-Seed/BAGEL-7B-MoT" in msg and "29" in msg
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        SigmaPipeline.from_pretrained(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- cancel, overrides


def test_cancel_is_prompt_and_leaves_pipeline_usable(pipe):
    seen = []
    stop = threading.Event()

    def stop_at_two(p, step, t, kwargs):
        seen.append(step)
        assert kwargs["latents"].shape == (1, 16, 16, 16)
        if step == 1:
            stop.set()

    with pytest.raises(GenerationCancelled, match="cancelled after step 2 of 9") as e:
        pipe(_comp(), num_inference_steps=10, callback_on_step_end=stop_at_two, cancel=stop)
    assert e.value.step == 2 and seen == [0, 1]
    assert pipe(_comp(), num_inference_steps=2).images[0].size == (128, 128)


def test_callback_can_replace_latents(pipe):
    def zero(p, step, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = pipe(_comp(), num_inference_steps=3, output_type="latent", callback_on_step_end=zero)
    assert torch.equal(out.latents, torch.zeros(1, 16, 16, 16))


def test_sigma_weights_override_the_base(tiny_checkpoint: Path, tmp_path: Path, pipe):
    sigma = tmp_path / "sigma"
    sigma.mkdir()
    sd = load_file(str(tiny_checkpoint / "ema.safetensors"))
    save_file({"llm2vae.weight": sd["llm2vae.weight"] * 2}, str(sigma / "ema.safetensors"))
    tuned = SigmaPipeline.from_pretrained(tiny_checkpoint, sigma_weights=sigma)
    assert tuned.load_report.overridden == 1
    torch.testing.assert_close(tuned.model.llm2vae.weight, pipe.model.llm2vae.weight * 2)


def test_attribute_projection_loaded_when_present(tmp_path: Path):
    folder = make_tiny_checkpoint(tmp_path / "wtau", attribute_embed=True)
    p = SigmaPipeline.from_pretrained(folder)
    assert p.load_report.attribute_embed and p.model.attribute_embed is not None
    on = p(_comp(seed=3), num_inference_steps=3, output_type="latent").latents
    off = p(_comp(seed=3, attribute_projection=False), num_inference_steps=3,
            output_type="latent").latents  # fmt: skip
    assert not torch.allclose(on, off)


def test_attribute_projection_absent_is_exactly_zero(pipe):
    assert pipe.model.attribute_embed is None
    on = pipe(_comp(seed=3), num_inference_steps=3, output_type="latent").latents
    off = pipe(_comp(seed=3, attribute_projection=False), num_inference_steps=3,
               output_type="latent").latents  # fmt: skip
    assert torch.equal(on, off)


def test_reference_latents_are_cached_by_content(pipe, monkeypatch):
    fresh = SigmaPipeline(pipe.model, pipe.vae, pipe.tokenizer)  # its own, empty latent cache
    calls = []
    real = pipe.vae.encode

    def counting(x):
        calls.append(x.shape)
        return real(x)

    monkeypatch.setattr(pipe.vae, "encode", counting)
    fresh(_comp(), num_inference_steps=2, output_type="latent")  # slot 2's image now cached
    calls.clear()
    comp = _with_image(_comp(), 1, _image(1234))
    fresh(comp, num_inference_steps=2, output_type="latent")
    assert len(calls) == 1  # only slot 1's new image
    fresh(comp, num_inference_steps=2, output_type="latent")
    assert len(calls) == 1
    comp = _with_image(comp, 1, _image(4321))
    fresh(comp, num_inference_steps=2, output_type="latent")
    assert len(calls) == 2


def test_position_table_is_bagels_sincos():
    import math

    from sigma_core.model.bagel import sincos_2d_table

    d, grid = 16, 5
    table = sincos_2d_table(d, grid)
    for i in range(grid):
        for j in range(grid):
            row = table[i * grid + j]
            for k in range(d // 4):
                w = 1 / 10000 ** (k / (d / 4))
                expected = (math.sin(j * w), math.cos(j * w), math.sin(i * w), math.cos(i * w))
                got = (row[k], row[d // 4 + k], row[d // 2 + k], row[3 * d // 4 + k])
                assert all(abs(float(a) - b) < 1e-6 for a, b in zip(got, expected, strict=True))


def test_text_only_prompt_reuses_gen_for_the_image_branch(pipe):
    comp = Composition("a red fox in the snow", [], Settings(size=(128, 128)))
    out = pipe(comp, num_inference_steps=3, output_type="latent")
    assert out.num_passes == 2 * 2  # gen + cfg_text (empty context); cfg_img == gen
    plan = out.plan
    with torch.no_grad():
        ctx = prefill_contexts(pipe.model, plan, {})
    assert ctx.img_row is None and ctx.cache.lengths[ctx.text_row] == 0
