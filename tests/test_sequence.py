"""Prompt syntaxes, the interleaved plan and inspect's report. The tokenizer: test_tokenizer.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from sigma_core import ATTRIBUTES, Composition, Reference, Settings
from sigma_core.errors import PromptError
from sigma_core.geometry import vae_size
from sigma_core.inputs.prompt import Piece, split_prompt
from sigma_core.planning.sequence import Expert, TokenType, build_plan
from sigma_core.planning.tokenizer import TokenIds
from tests.sequence_helpers import SMALL, make_comp

T, S, IMG, P, N = (
    TokenType.TEXT,
    TokenType.SPECIAL,
    TokenType.IMAGE,
    TokenType.PLAIN,
    TokenType.NOISE,
)


# ----------------------------------------------------------------------------- syntax


def test_template_expands_to_sigmas_triple():
    raw, warnings = make_comp("Show [1] walking [2] on [3].").raw_prompt()
    assert raw == (
        "Show <id> the woman <image_1> walking <subject> the dog <image_2> on "
        "<background> <image_3>."
    )
    assert warnings == []


def test_template_attribute_override_allows_attribute_dense_samples():
    raw, _ = make_comp("Paint [1:style] of [1:id+clothing]").raw_prompt()
    assert raw == "Paint <style> the woman <image_1> of <id> <clothing> the woman <image_1>"


def test_split_follows_change_format():
    pieces = split_prompt("  Put <id> man from <image_1>  next to<image 2><image__3> end  ")
    assert pieces == [
        Piece("text", text="Put <id> man from"),
        Piece("image", slot=1),
        Piece("text", text="next to"),
        Piece("image", slot=2),
        Piece("image", slot=3),
        Piece("text", text="end"),
    ]


def test_two_syntaxes_one_result(tokenizer):
    a = build_plan(make_comp("Walk [2] past [1] on [3]"), tokenizer, SMALL)
    b = build_plan(
        make_comp("Walk <subject> the dog <image_2> past <id> the woman <image_1> on <background> "
              "<image_3>"),
        tokenizer,
        SMALL,
    )  # fmt: skip
    for name in ("token_ids", "token_type", "group", "position_ids", "expert"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.segments == b.segments


def test_raw_aliases_are_canonicalised_and_unknown_words_warned():
    raw, warnings = make_comp(
        "Use <identity> her <image_1> and <Style> <image_2> <foo>"
    ).raw_prompt()
    assert raw == "Use <id> her <image_1> and <style> <image_2> <foo>"
    assert any("'<foo>' is not an attribute token" in w for w in warnings)


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("Use [1] and <image_2>", "mixes [k] slot references with <image_k> placeholders"),
        ("Use <Image_1> now", "is not a placeholder; write <image_1>"),
        ("Use <image> now", "is not a placeholder"),
        ("Use <idd> her <image_1>", "'<idd>' is not an attribute; did you mean '<id>'?"),
        ("Paint [1:stlye]", "in [1:stlye]: 'stlye' is not an attribute; did you mean '<style>'?"),
        ("Paint [7]", "[7] refers to slot 7, which does not exist (slots: 1, 2, 3)"),
    ],
)
def test_prompt_errors(prompt, needle):
    with pytest.raises(PromptError) as e:
        make_comp(prompt).raw_prompt()
    assert needle in str(e.value)


def test_attribute_without_following_image(tokenizer):
    with pytest.raises(PromptError, match=r"<style> in 'in the manner of <style>' is not followed"):
        build_plan(make_comp("<id> her <image_1> in the manner of <style>"), tokenizer, SMALL)


def test_template_text_cannot_bind_attributes(tokenizer):
    for prompt in ("[1] in the manner of <style>", "<id> a portrait", "[1] <Identity> [2]"):
        with pytest.raises(PromptError, match="in a template prompt; there attributes come from"):
            build_plan(make_comp(prompt), tokenizer, SMALL)


def test_placeholder_for_missing_or_empty_slot(tokenizer):
    with pytest.raises(PromptError, match="<image_5> refers to slot 5, which does not exist"):
        build_plan(make_comp("A <id> face <image_5>"), tokenizer, SMALL)
    refs = [Reference(1, None, ("<id>",)), Reference(2, "b.png", ("<style>",))]
    with pytest.raises(PromptError, match=r"\[1\] refers to slot 1, which has no image"):
        build_plan(make_comp("[1] in [2]", refs=refs), tokenizer, SMALL)
    with pytest.raises(PromptError, match="slot 1, which has no image"):
        build_plan(make_comp("<id> x <image_1>", refs=refs), tokenizer, SMALL)


def test_unused_slot_is_a_warning_in_the_plan(tokenizer):
    plan = build_plan(make_comp("Show [1] on [3]"), tokenizer, SMALL)
    assert plan.warnings == [
        "slot 2 has an image but the prompt never uses it; add [2] or <image_2> to the prompt"
    ]


# ----------------------------------------------------------------------------- the plan


def test_plan_types_groups_positions_experts(tokenizer):
    ids = TokenIds.from_tokenizer(tokenizer)
    plan = build_plan(make_comp("Walk [2] on [3]"), tokenizer, SMALL)
    kinds = [s.kind for s in plan.segments]
    assert kinds == ["text", "image", "text", "image", "noise"]
    t0, im2, t1, im3, noise = plan.segments

    # text: <|im_start|> + encode(text) + <|im_end|>, exactly as BAGEL packs it
    body = tokenizer.encode("Walk <subject> the dog", add_special_tokens=False)
    assert plan.token_ids[t0.start : t0.end].tolist() == [ids.im_start, *body, ids.im_end]
    types = plan.token_type[t0.start : t0.end].tolist()
    assert types[0] == P and types[-1] == P
    k = body.index(ids.attributes["<subject>"]) + 1
    assert types[k] == S and types.count(S) == 1 and plan.group[k] == 0
    assert set(types[1:-1]) == {T, S}
    assert plan.position_ids[t0.start : t0.end].tolist() == list(range(t0.length))

    # image block: markers + (H/16)(W/16) latents, one shared position, generation expert
    w, h = vae_size(*SMALL[2])
    assert im2.size == (w, h) and im2.grid == (h // 16, w // 16)
    assert im2.length == (h // 16) * (w // 16) + 2
    assert (im2.slot, im2.group, im2.attributes) == (2, 0, ("<subject>",))
    blk = slice(im2.start, im2.end)
    assert plan.token_ids[blk][[0, -1]].tolist() == [ids.vision_start, ids.vision_end]
    assert (plan.token_ids[blk][1:-1] == -1).all()
    assert plan.token_type[blk][[0, -1]].tolist() == [P, P]
    assert (plan.token_type[blk][1:-1] == IMG).all() and (plan.group[blk][1:-1] == 0).all()
    assert plan.group[blk][[0, -1]].tolist() == [-1, -1]
    assert (plan.position_ids[blk] == t0.length).all()
    assert plan.expert[blk][[0, -1]].tolist() == [Expert.UND, Expert.UND]
    assert (plan.expert[blk][1:-1] == Expert.GEN).all()

    # the next text starts one position after the block
    assert t1.position == t0.length + 1 and im3.position == t1.position + t1.length
    assert (plan.token_type[im3.start + 1 : im3.end - 1] == IMG).all() and im3.group == 1

    # noise block last, sized like the last reference, at the next position
    assert noise.size == im3.size and plan.output_size == im3.size
    assert noise.position == im3.position + 1 and noise.end == plan.length
    assert (plan.token_type[noise.start + 1 : noise.end - 1] == N).all()
    assert (plan.group[noise.start : noise.end] == -1).all()
    assert (plan.expert[noise.start + 1 : noise.end - 1] == Expert.GEN).all()


def test_expert_is_gen_exactly_for_latent_tokens(tokenizer):
    plan = build_plan(make_comp("[1] with [2] and [3]"), tokenizer, SMALL)
    latent = (plan.token_type == IMG) | (plan.token_type == N)
    assert torch.equal(plan.expert == Expert.GEN, latent)


def test_same_slot_twice_is_two_groups(tokenizer):
    plan = build_plan(make_comp("Paint [1:style] as [1:id] with [2]"), tokenizer, SMALL)
    blocks = [s for s in plan.segments if s.kind == "image"]
    assert [(b.slot, b.group, b.attributes) for b in blocks] == [
        (1, 0, ("<style>",)),
        (1, 1, ("<id>",)),
        (2, 2, ("<subject>",)),
    ]
    specials = plan.token_type == S
    assert plan.group[specials].tolist() == [0, 1, 2]


def test_special_joins_next_placeholder_group_in_raw_syntax(tokenizer):
    plan = build_plan(
        make_comp("<style> <id> a woman, drawn from <image_2> then <subject> <image_1>"),
        tokenizer,
        SMALL,
    )
    specials = (plan.token_type == S).nonzero().flatten()
    assert plan.group[specials].tolist() == [0, 0, 1]
    blocks = [s for s in plan.segments if s.kind == "image"]
    assert blocks[0].attributes == ("<style>", "<id>") and blocks[1].attributes == ("<subject>",)


def test_output_size_rules(tokenizer):
    plan = build_plan(make_comp("[3] then [1]"), tokenizer, SMALL)
    assert plan.output_size == vae_size(*SMALL[1])  # the last reference in prompt order
    plan = build_plan(make_comp("[3] then [1]", Settings(size=(768, 512))), tokenizer, SMALL)
    assert plan.output_size == (768, 512) and plan.segments[-1].grid == (32, 48)
    text_only = build_plan(make_comp("a fox in the snow", refs=[]), tokenizer, {})
    assert text_only.output_size == (1024, 1024)
    assert [s.kind for s in text_only.segments] == ["text", "noise"]
    assert any("no reference image" in w for w in text_only.warnings)


def test_mask_flag_is_carried(tokenizer):
    assert build_plan(make_comp("[1]"), tokenizer, SMALL).mask is True
    assert build_plan(make_comp("[1]", Settings(mask=False)), tokenizer, SMALL).mask is False


def test_reference_sizes_come_from_images_after_crop(tmp_path, tokenizer):
    from PIL import Image

    Image.new("RGB", (1200, 800)).save(tmp_path / "a.png")
    refs = [Reference(1, "a.png", ("<id>",), crop=(0, 0, 600, 800))]
    comp = Composition("[1]", refs, base_dir=tmp_path, asset_dirs=())
    plan = build_plan(comp, tokenizer)
    assert plan.segments[1].size == vae_size(600, 800)


# ----------------------------------------------------------------------------- hypothesis

_words = st.sampled_from(["a", "cat", "on", "the", "red", "chair", "with", "soft", "light", ","])


@st.composite
def compositions(draw):
    n = draw(st.integers(0, 5))
    refs = [
        Reference(
            s,
            f"{s}.png",
            tuple(draw(st.lists(st.sampled_from(ATTRIBUTES), min_size=1, max_size=2, unique=True))),
            " ".join(draw(st.lists(_words, max_size=3))),
        )
        for s in range(1, n + 1)
    ]
    parts = []
    for _ in range(draw(st.integers(0 if n else 1, 6))):
        parts.append(" ".join(draw(st.lists(_words, max_size=4))))
        if n:
            slot = draw(st.integers(1, n))
            if draw(st.booleans()):
                parts.append(f"[{slot}:{draw(st.sampled_from(ATTRIBUTES))[1:-1]}]")
            else:
                parts.append(f"[{slot}]")
    prompt = " ".join(parts).strip() or "a cat"
    return Composition(prompt, refs, Settings(mask=draw(st.booleans())))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    comp=compositions(),
    sizes=st.lists(st.tuples(st.integers(16, 3000), st.integers(16, 3000)), min_size=6, max_size=6),
)
def test_plan_invariants(tokenizer, comp, sizes):
    image_sizes = {s + 1: sizes[s] for s in range(6)}
    plan = build_plan(comp, tokenizer, image_sizes)
    ids = TokenIds.from_tokenizer(tokenizer)
    L = plan.length
    assert all(
        t.shape == (L,) for t in (plan.token_type, plan.group, plan.position_ids, plan.expert)
    )
    # segments tile the sequence; the noise block is last
    assert plan.segments[0].start == 0 and plan.segments[-1].end == L
    assert all(a.end == b.start for a, b in zip(plan.segments, plan.segments[1:], strict=False))
    assert plan.segments[-1].kind == "noise"
    pos = 0
    for seg in plan.segments:
        assert seg.position == pos
        sl = slice(seg.start, seg.end)
        if seg.kind == "text":
            assert plan.position_ids[sl].tolist() == list(range(pos, pos + seg.length))
            assert plan.token_ids[sl][[0, -1]].tolist() == [ids.im_start, ids.im_end]
            pos += seg.length
        else:
            w, h = seg.size
            assert w % 16 == 0 and h % 16 == 0 and max(w, h) <= 1024
            assert seg.length == (w // 16) * (h // 16) + 2
            assert (plan.position_ids[sl] == pos).all()
            if seg.kind == "image":
                assert seg.size == vae_size(*image_sizes[seg.slot])
            pos += 1
    # every special token belongs to the group of the next image block
    blocks = [s for s in plan.segments if s.kind == "image"]
    for k in (plan.token_type == S).nonzero().flatten().tolist():
        nxt = next(b for b in blocks if b.start > k)
        assert plan.group[k] == nxt.group
    assert plan.mask == comp.settings.mask
    # the plan's raw prompt re-parses to the same plan (template -> raw is stable)
    raw = Composition(plan.raw_prompt, comp.references, comp.settings)
    again = build_plan(raw, tokenizer, image_sizes)
    assert torch.equal(again.token_ids, plan.token_ids) and torch.equal(again.group, plan.group)


def test_raw_image_without_attribute_token_warns(tokenizer):
    plan = build_plan(
        make_comp("<id> the woman <image_1> on the beach of <image_3>"), tokenizer, SMALL
    )
    assert any(
        "<image_3> has no attribute token before it, so slot 3's <background> is not used" in w
        for w in plan.warnings
    )
    blocks = [s for s in plan.segments if s.kind == "image"]
    assert blocks[1].attributes == ()


# ----------------------------------------------------------------------------- inspect report


def _report(tokenizer, prompt="Walk [2] on [3] past [1]"):
    from sigma_core.report import plan_report

    comp = make_comp(prompt)
    plan = build_plan(comp, tokenizer, SMALL)
    return plan, {"source": "x.json", "tokenizer": "tiny", **plan_report(plan, comp)}


def test_report_ranges_are_half_open_in_text_and_json(tokenizer):
    from sigma_core.report import render_report

    plan, report = _report(tokenizer)
    text = render_report(report)
    assert "ranges are half-open [start, end)" in text
    lines = text.splitlines()
    for seg, s in zip(report["segments"], plan.segments, strict=True):
        assert (seg["start"], seg["end"], seg["count"]) == (s.start, s.end, s.length)
        assert seg["end"] - seg["start"] == seg["count"]
        assert seg["positions"] == [s.position, s.last_position + 1]
        row = next(ln for ln in lines if ln.split()[:2] == [str(seg["index"]), s.kind])
        assert f"[{s.start}, {s.end})" in row
        if s.kind == "text":
            assert f"[{s.position}, {s.position + s.length})" in row
    for g, s in zip(report["groups"], [s for s in plan.segments if s.kind == "image"], strict=True):
        assert g["image_tokens"] == {"start": s.start + 1, "end": s.end - 1}
        assert f"image tokens [{s.start + 1}, {s.end - 1})" in text
        for at in g["attribute_tokens"]:
            assert plan.token_type[at] == S and plan.group[at] == s.group


def test_report_counts_come_from_segments_and_equal_the_tensors(tokenizer):
    plan, report = _report(tokenizer, "Paint [1:style] as [1:id+clothing] with [2] and [3]")
    for t in TokenType:
        assert report["token_counts"][t.name.lower()] == int((plan.token_type == t).sum())
    for e in Expert:
        assert report["experts"][e.name.lower()] == int((plan.expert == e).sum())
    specials = (plan.token_type == S).nonzero().flatten().tolist()
    assert sorted(a for g in report["groups"] for a in g["attribute_tokens"]) == specials
    assert report["references"] == 3 and len(report["groups"]) == 4


def test_report_explains_special_and_plain(tokenizer):
    from sigma_core.report import render_report

    text = render_report(_report(tokenizer)[1])
    (line,) = [ln for ln in text.splitlines() if "special: an attribute token" in ln]
    assert "<id>" in line
    assert "plain: the markers <|im_start|> <|im_end|> <|vision_start|> <|vision_end|>" in line


_HIDDEN = [chr(c) for c in (*range(0x20), 0x7F, 0x85, 0xAD, 0x200B, 0x200D, 0x2028, 0x2029)]
_HIDDEN += [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)]
_HIDDEN += ["\ufeff", "\U000e0041"]


@pytest.mark.parametrize("ch", _HIDDEN, ids=[f"U+{ord(c):04X}" for c in _HIDDEN])
def test_escape_text_escapes_invisible_and_reordering_characters(ch):
    from sigma_core.report import escape_text

    out = escape_text(f"a{ch}b")
    assert ch not in out and out.startswith("a\\") and out.endswith("b")
    assert f"{ord(ch):02x}" in out


def test_escape_text_keeps_printable_text():
    from sigma_core.report import escape_text

    for text in ("A cat, naïve café — 漢字 🙂 <id> [1] \"q\" 'a' \\", "two  spaces"):
        assert escape_text(text) == text
    assert escape_text("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert escape_text("\x1b[31mred") == "\\x1b[31mred"


def test_render_report_escapes_user_text(tokenizer):
    import unicodedata

    from sigma_core.report import render_report

    _, report = _report(tokenizer)
    evil = "x\u202eevil\u2066\x1b[2J\u200b\r"
    report["name"] = report["source"] = evil
    report["raw_prompt"] += evil
    report["segments"][0]["text"] += evil
    report["segments"][0]["attributes"] = ["<id>" + evil]
    report["groups"][0]["attributes"] = ["<id>" + evil]
    report["warnings"] = [evil]
    text = render_report(report)
    bad = {c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")}
    assert not bad
    assert text.count("\\u202e") >= 6 and "\\x1b[2J" in text
