"""Prompt syntaxes, the interleaved plan, and the tokenizer helpers."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sigma_core import ATTRIBUTES, Composition, Reference, Settings
from sigma_core.errors import CheckpointError, PromptError, SigmaInputError
from sigma_core.geometry import vae_size
from sigma_core.inputs.prompt import Piece, split_prompt
from sigma_core.planning.sequence import Expert, TokenType, build_plan, tokenize_text
from sigma_core.planning.tokenizer import (
    QWEN2_SPECIAL_TOKENS,
    QWEN25_BASE_VOCAB,
    SigmaTokenizer,
    TokenIds,
    add_sigma_tokens,
    load_fast_tokenizer,
    load_tiny_tokenizer,
    load_tokenizer,
    make_tiny_tokenizer,
)

T, S, IMG, P, N = (
    TokenType.TEXT,
    TokenType.SPECIAL,
    TokenType.IMAGE,
    TokenType.PLAIN,
    TokenType.NOISE,
)
SMALL = {1: (512, 512), 2: (640, 480), 3: (300, 900), 4: (1024, 1024)}


def _refs(**attrs) -> list[Reference]:
    out = []
    for slot, (a, entity) in attrs.items():
        out.append(Reference(int(slot[1:]), f"s{slot}.png", a, entity))
    return out


def _comp(prompt: str, settings: Settings | None = None, refs=None) -> Composition:
    refs = refs if refs is not None else [
        Reference(1, "one.png", ("<id>",), "the woman"),
        Reference(2, "two.png", ("<subject>",), "the dog"),
        Reference(3, "three.png", ("<background>",), ""),
    ]  # fmt: skip
    return Composition(prompt, refs, settings or Settings())


# ----------------------------------------------------------------------------- syntax


def test_template_expands_to_sigmas_triple():
    raw, warnings = _comp("Show [1] walking [2] on [3].").raw_prompt()
    assert raw == (
        "Show <id> the woman <image_1> walking <subject> the dog <image_2> on "
        "<background> <image_3>."
    )
    assert warnings == []


def test_template_attribute_override_allows_attribute_dense_samples():
    raw, _ = _comp("Paint [1:style] of [1:id+clothing]").raw_prompt()
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
    a = build_plan(_comp("Walk [2] past [1] on [3]"), tokenizer, SMALL)
    b = build_plan(
        _comp("Walk <subject> the dog <image_2> past <id> the woman <image_1> on <background> "
              "<image_3>"),
        tokenizer,
        SMALL,
    )  # fmt: skip
    for name in ("token_ids", "token_type", "group", "position_ids", "expert"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.segments == b.segments


def test_raw_aliases_are_canonicalised_and_unknown_words_warned():
    raw, warnings = _comp("Use <identity> her <image_1> and <Style> <image_2> <foo>").raw_prompt()
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
        _comp(prompt).raw_prompt()
    assert needle in str(e.value)


def test_attribute_without_following_image(tokenizer):
    with pytest.raises(PromptError, match=r"<style> in 'in the manner of <style>' is not followed"):
        build_plan(_comp("<id> her <image_1> in the manner of <style>"), tokenizer, SMALL)


def test_template_text_cannot_bind_attributes(tokenizer):
    for prompt in ("[1] in the manner of <style>", "<id> a portrait", "[1] <Identity> [2]"):
        with pytest.raises(PromptError, match="in a template prompt; there attributes come from"):
            build_plan(_comp(prompt), tokenizer, SMALL)


def test_placeholder_for_missing_or_empty_slot(tokenizer):
    with pytest.raises(PromptError, match="<image_5> refers to slot 5, which does not exist"):
        build_plan(_comp("A <id> face <image_5>"), tokenizer, SMALL)
    refs = [Reference(1, None, ("<id>",)), Reference(2, "b.png", ("<style>",))]
    with pytest.raises(PromptError, match=r"\[1\] refers to slot 1, which has no image"):
        build_plan(_comp("[1] in [2]", refs=refs), tokenizer, SMALL)
    with pytest.raises(PromptError, match="slot 1, which has no image"):
        build_plan(_comp("<id> x <image_1>", refs=refs), tokenizer, SMALL)


def test_unused_slot_is_a_warning_in_the_plan(tokenizer):
    plan = build_plan(_comp("Show [1] on [3]"), tokenizer, SMALL)
    assert plan.warnings == [
        "slot 2 has an image but the prompt never uses it; add [2] or <image_2> to the prompt"
    ]


# ----------------------------------------------------------------------------- the plan


def test_plan_types_groups_positions_experts(tokenizer):
    ids = TokenIds.from_tokenizer(tokenizer)
    plan = build_plan(_comp("Walk [2] on [3]"), tokenizer, SMALL)
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
    plan = build_plan(_comp("[1] with [2] and [3]"), tokenizer, SMALL)
    latent = (plan.token_type == IMG) | (plan.token_type == N)
    assert torch.equal(plan.expert == Expert.GEN, latent)


def test_same_slot_twice_is_two_groups(tokenizer):
    plan = build_plan(_comp("Paint [1:style] as [1:id] with [2]"), tokenizer, SMALL)
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
        _comp("<style> <id> a woman, drawn from <image_2> then <subject> <image_1>"),
        tokenizer,
        SMALL,
    )
    specials = (plan.token_type == S).nonzero().flatten()
    assert plan.group[specials].tolist() == [0, 0, 1]
    blocks = [s for s in plan.segments if s.kind == "image"]
    assert blocks[0].attributes == ("<style>", "<id>") and blocks[1].attributes == ("<subject>",)


def test_output_size_rules(tokenizer):
    plan = build_plan(_comp("[3] then [1]"), tokenizer, SMALL)
    assert plan.output_size == vae_size(*SMALL[1])  # the last reference in prompt order
    plan = build_plan(_comp("[3] then [1]", Settings(size=(768, 512))), tokenizer, SMALL)
    assert plan.output_size == (768, 512) and plan.segments[-1].grid == (32, 48)
    text_only = build_plan(_comp("a fox in the snow", refs=[]), tokenizer, {})
    assert text_only.output_size == (1024, 1024)
    assert [s.kind for s in text_only.segments] == ["text", "noise"]
    assert any("no reference image" in w for w in text_only.warnings)


def test_mask_flag_is_carried(tokenizer):
    assert build_plan(_comp("[1]"), tokenizer, SMALL).mask is True
    assert build_plan(_comp("[1]", Settings(mask=False)), tokenizer, SMALL).mask is False


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


# ----------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_layout(tiny_tokenizer_dir):
    names = {p.name for p in tiny_tokenizer_dir.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= names
    cfg = json.loads((tiny_tokenizer_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "Qwen2Tokenizer"


def test_sigma_tokens_are_single_consecutive_ids(tokenizer):
    ids = TokenIds.from_tokenizer(tokenizer)
    values = [ids.attributes[t] for t in ATTRIBUTES]
    assert values == list(range(values[0], values[0] + 15))
    assert ids.vision_start == ids.im_start + 8  # Qwen2's special-token order
    for tok in ATTRIBUTES:
        assert (
            tokenizer.encode(f"x {tok} y", add_special_tokens=False).count(ids.attributes[tok]) == 1
        )


def test_add_sigma_tokens_on_qwen25_sized_vocab(tmp_path):
    d = make_tiny_tokenizer(tmp_path, pad_base_vocab_to=QWEN25_BASE_VOCAB, with_sigma_tokens=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    assert len(tok) == 151_665
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|vision_start|>"]) == [151644, 151652]
    assert add_sigma_tokens(tok) == list(range(151665, 151680))
    assert add_sigma_tokens(tok) == list(range(151665, 151680))  # idempotent
    assert tok.convert_tokens_to_ids("<style>") == 151665
    assert tok.convert_tokens_to_ids("<select>") == 151679


def test_tokenizer_without_sigma_tokens_is_refused(tmp_path):
    from transformers import AutoTokenizer

    d = make_tiny_tokenizer(tmp_path, with_sigma_tokens=False)
    bare = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    with pytest.raises(CheckpointError, match="add_sigma_tokens"):
        TokenIds.from_tokenizer(bare)
    assert TokenIds.from_tokenizer(load_tokenizer(d)).attributes["<style>"] == len(bare)


def test_raw_image_without_attribute_token_warns(tokenizer):
    plan = build_plan(_comp("<id> the woman <image_1> on the beach of <image_3>"), tokenizer, SMALL)
    assert any(
        "<image_3> has no attribute token before it, so slot 3's <background> is not used" in w
        for w in plan.warnings
    )
    blocks = [s for s in plan.segments if s.kind == "image"]
    assert blocks[1].attributes == ()


# ----------------------------------------------------------------------------- control tokens


@pytest.fixture(scope="module")
def qwen_sized_dir(tmp_path_factory):
    """The tiny tokenizer padded to Qwen2.5's vocabulary: Qwen2.5's ids for every added token."""
    return make_tiny_tokenizer(
        tmp_path_factory.mktemp("qwen_sized"), pad_base_vocab_to=QWEN25_BASE_VOCAB
    )


@pytest.fixture(scope="module")
def qwen_sized(qwen_sized_dir):
    return load_tokenizer(qwen_sized_dir)


def test_control_tokens_are_every_added_token_but_sigmas(qwen_sized, tokenizer):
    ids = TokenIds.from_tokenizer(qwen_sized)
    assert dict(ids.control) == {151_643 + i: t for i, t in enumerate(QWEN2_SPECIAL_TOKENS)}
    assert not set(ids.control) & set(ids.attributes.values())
    tiny = TokenIds.from_tokenizer(tokenizer)
    assert sorted(tiny.control.values()) == sorted(QWEN2_SPECIAL_TOKENS)


@pytest.mark.parametrize("token", QWEN2_SPECIAL_TOKENS)
@pytest.mark.parametrize("which", ["tiny", "qwen_sized", "fast"])
def test_prompt_text_cannot_smuggle_a_control_token(token, which, request, tiny_tokenizer_dir):
    tok = (
        load_fast_tokenizer(tiny_tokenizer_dir)
        if which == "fast"
        else request.getfixturevalue("tokenizer" if which == "tiny" else which)
    )
    ids = TokenIds.from_tokenizer(tok)
    with pytest.raises(PromptError) as e:
        tokenize_text(f"a cat{token}<id> on a mat", tok, ids)
    assert str(e.value).startswith(
        f"prompt: {token!r} is a control token of the tokenizer; prompts cannot contain it"
    )


def test_control_token_in_a_raw_prompt_is_refused_at_the_tokenizer(tokenizer):
    # '</tool_call>' and '<tool_call>' do not look like <|...|>, so only the tokenizer sees them
    for prompt in (
        "A cat </tool_call> with <id> the woman <image_1>",
        "<tool_call> <id> the woman <image_1>",
    ):
        with pytest.raises(PromptError, match="is a control token of the tokenizer"):
            build_plan(_comp(prompt), tokenizer, SMALL)


def test_control_token_in_an_entity_is_refused(tokenizer):
    refs = [Reference(1, "one.png", ("<id>",), "the woman </tool_call>")]
    with pytest.raises(PromptError, match="'</tool_call>' is a control token"):
        build_plan(_comp("Show [1]", refs=refs), tokenizer, SMALL)


def test_text_near_control_tokens_is_plain_text(tokenizer):
    ids = TokenIds.from_tokenizer(tokenizer)
    for text in ("<|im_end", "im_end|>", "< tool_call >", "vision_start", "<| im_start |>", "<"):
        assert tokenize_text(text, tokenizer, ids) == tokenizer.encode(
            text, add_special_tokens=False
        )


# ----------------------------------------------------------------------------- fast tokenizer

_pieces = st.one_of(
    st.sampled_from(
        [*ATTRIBUTES, *QWEN2_SPECIAL_TOKENS, "<image_1>", "<ID>", "<style", "style>", "<<id>>"]
    ),
    st.sampled_from([" ", "  ", "\n", "\r\n", "\t", "\u00a0", "\u3000", "\u200b", "\u202e"]),
    st.sampled_from(["cat", "Cat's", "naïve", "e\u0301", "漢字", "🙂", "1234", "!?", "'ll"]),
    st.text(max_size=8),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.lists(_pieces, max_size=12).map("".join))
def test_fast_tokenizer_ids_equal_transformers(text, tokenizer, tiny_tokenizer_dir, qwen_sized):
    fast = _fast(tiny_tokenizer_dir)
    assert fast.encode(text, add_special_tokens=False) == tokenizer.encode(
        text, add_special_tokens=False
    )
    fast_qwen = _fast(qwen_sized.name_or_path)
    assert fast_qwen.encode(text, add_special_tokens=False) == qwen_sized.encode(
        text, add_special_tokens=False
    )


_FAST: dict[str, SigmaTokenizer] = {}


def _fast(path) -> SigmaTokenizer:
    if str(path) not in _FAST:
        _FAST[str(path)] = load_fast_tokenizer(path)
    return _FAST[str(path)]


def test_fast_tokenizer_matches_transformers_on_vocab_and_ids(tiny_tokenizer_dir, qwen_sized):
    for path, slow in ((tiny_tokenizer_dir, load_tokenizer(tiny_tokenizer_dir)),
                       (qwen_sized.name_or_path, qwen_sized)):  # fmt: skip
        fast = load_fast_tokenizer(path)
        assert isinstance(fast, SigmaTokenizer)
        assert fast.get_vocab() == slow.get_vocab() and len(fast) == len(slow)
        assert TokenIds.from_tokenizer(fast) == TokenIds.from_tokenizer(slow)
        assert dict(TokenIds.from_tokenizer(fast).control) == dict(
            TokenIds.from_tokenizer(slow).control
        )
    fast = load_fast_tokenizer(qwen_sized.name_or_path)
    assert fast.convert_tokens_to_ids(["<style>", "<select>"]) == [151_665, 151_679]


def test_fast_tokenizer_adds_sigma_tokens_as_transformers_does(tmp_path):
    bare = make_tiny_tokenizer(tmp_path / "bare", with_sigma_tokens=False)
    fast, slow = load_fast_tokenizer(bare), load_tokenizer(bare)
    assert isinstance(fast, SigmaTokenizer)
    text = "Put <id> her <style>x<select>y <ID> <|im_start|>"
    assert fast.encode(text, add_special_tokens=False) == slow.encode(
        text, add_special_tokens=False
    )
    assert TokenIds.from_tokenizer(fast).attributes == TokenIds.from_tokenizer(slow).attributes


def _edit(folder, tmp_path, name, *, config=None, spec=None):
    import shutil

    out = tmp_path / name
    shutil.copytree(folder, out)
    for fname, change in (("tokenizer_config.json", config), ("tokenizer.json", spec)):
        if change:
            data = json.loads((out / fname).read_text())
            change(data)
            (out / fname).write_text(json.dumps(data))
    return out


def test_fast_loader_falls_back_to_transformers_outside_qwen2s_layout(tiny_tokenizer_dir, tmp_path):
    def other_class(c):
        c["tokenizer_class"] = "GPT2Tokenizer"

    def extra_added(c):
        c["added_tokens_decoder"]["9999"] = {"content": "<x>", "special": True}

    def no_nfc(s):
        s["normalizer"] = None

    def ignore_merges(s):
        s["model"]["ignore_merges"] = True

    for name, config, spec in (
        ("class", other_class, None),
        ("added", extra_added, None),
        ("nfc", None, no_nfc),
        ("merges", None, ignore_merges),
    ):
        folder = _edit(tiny_tokenizer_dir, tmp_path, name, config=config, spec=spec)
        tok = load_fast_tokenizer(folder)
        assert not isinstance(tok, SigmaTokenizer), name
    with pytest.raises(SigmaInputError, match="is not a folder"):
        load_fast_tokenizer(tmp_path / "missing")


def test_tiny_tokenizer_loads_without_transformers(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tok = load_tiny_tokenizer()
    assert isinstance(tok, SigmaTokenizer)
    assert TokenIds.from_tokenizer(tok).attributes["<style>"] == 534


# ----------------------------------------------------------------------------- inspect report


def _report(tokenizer, prompt="Walk [2] on [3] past [1]"):
    from sigma_core.report import plan_report

    comp = _comp(prompt)
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
