"""SIGMA's attention mask: the literal formula, the segment form, flex_attention and the PNG."""

from __future__ import annotations

import errno
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from sigma_core import ATTRIBUTES, Composition, Reference, Settings
from sigma_core.errors import SigmaResourceError
from sigma_core.planning import Expert, Plan, Segment, TokenType, build_plan
from sigma_core.planning.mask import MaskTooLargeError, dense_mask, mask_mod, segment_masks
from sigma_core.report.mask_picture import BLOCKED_MASK, LEAK, TYPE_COLORS, _axis, mask_png

# Plain marker, Attribute (special), Text, Visual latent of a reference, Noise latent.
P, A, T, V, N = (
    TokenType.PLAIN,
    TokenType.SPECIAL,
    TokenType.TEXT,
    TokenType.IMAGE,
    TokenType.NOISE,
)


def hand_plan(mask: bool = True) -> Plan:
    """20 tokens: text [P A0 T P], image g0 [P V V P], text [P A1 P], image g1 [P V P],
    text [P A0 P] (an attribute token after its own image), noise [P N P]."""
    # (kind, length, group, attribute offsets)
    layout = [("text", 4, 0, (1,)), ("image", 4, 0, ()), ("text", 3, 1, (1,)),
              ("image", 3, 1, ()), ("text", 3, 0, (1,)), ("noise", 3, -1, ())]  # fmt: skip
    segments = []
    start = pos = 0
    for kind, n, group, at in layout:
        text = kind == "text"
        segments.append(
            Segment(kind, start, n, pos, group=group, token_ids=(7,) * (n if text else 2),
                    attribute_offsets=at)
        )  # fmt: skip
        start, pos = start + n, pos + (n if text else 1)
    return Plan(segments=segments, output_size=(16, 16), mask=mask)


def test_hand_plan_tensors_follow_from_its_segments() -> None:
    plan = hand_plan()
    assert plan.token_type.tolist() == [P, A, T, P, P, V, V, P, P, A, P, P, V, P, P, A, P, P, N, P]
    assert plan.group.tolist() == [-1, 0, -1, -1, -1, 0, 0, -1, -1, 1, -1, -1, 1, -1, -1, 0, -1,
                                   -1, -1, -1]  # fmt: skip
    assert plan.position_ids.tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 5, 6, 7, 8, 8, 8, 9, 10, 11,
                                          12, 12, 12]  # fmt: skip
    assert plan.token_ids.tolist() == [7 if t in (P, A, T) else -1 for t in plan.token_type]
    latent = (plan.token_type == V) | (plan.token_type == N)
    assert torch.equal(plan.expert == Expert.GEN, latent)
    assert (plan.token_ids.dtype, plan.token_type.dtype, plan.group.dtype) == (
        torch.int64, torch.int8, torch.int32)  # fmt: skip
    assert (plan.position_ids.dtype, plan.expert.dtype) == (torch.int64, torch.int8)


# Rows are queries, columns keys. Columns:  P A T P  P V V P  P A P  P V P  P A P  P N P
EXPECTED_MASK_ON = """
10000000000000000000
11000000000000000000
11100000000000000000
11110000000000000000
11111111000000000000
11111111000000000000
11111111000000000000
11111111000000000000
11111111100000000000
11111001110000000000
11111111111000000000
11111111111111000000
11111111111111000000
11111111111111000000
11111111111111100000
11111111111101110000
11111111111111111000
11111111111111111111
11111111111111111111
11111111111111111111
"""
# Without M the special rows 9 and 15 also see the other group's latents (5, 6 and 12).
EXPECTED_MASK_OFF = """
10000000000000000000
11000000000000000000
11100000000000000000
11110000000000000000
11111111000000000000
11111111000000000000
11111111000000000000
11111111000000000000
11111111100000000000
11111111110000000000
11111111111000000000
11111111111111000000
11111111111111000000
11111111111111000000
11111111111111100000
11111111111111110000
11111111111111111000
11111111111111111111
11111111111111111111
11111111111111111111
"""


def literal(rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows.split()], dtype=torch.bool)


def test_hand_example_mask_on() -> None:
    assert torch.equal(dense_mask(hand_plan()), literal(EXPECTED_MASK_ON))


def test_hand_example_mask_off() -> None:
    assert torch.equal(dense_mask(hand_plan(mask=False)), literal(EXPECTED_MASK_OFF))


@pytest.mark.parametrize("mask", [True, False])
def test_hand_example_segments(mask: bool) -> None:
    plan = hand_plan(mask)
    dense = dense_mask(plan)
    masks = segment_masks(plan)
    assert [m.segment for m in masks] == plan.segments
    assert [m.is_full for m in masks] == [s.kind != "text" for s in plan.segments]
    for m in masks:
        seg = m.segment
        assert m.dense().shape == (seg.length, seg.end)
        assert torch.equal(m.dense(), dense[seg.start : seg.end, : seg.end])


@pytest.mark.parametrize("mask", [True, False])
def test_mask_mod_matches_dense(mask: bool, tokenizer) -> None:
    from torch.nn.attention.flex_attention import create_mask

    small = Composition(
        prompt="Put [1] beside [2:style+id], then [1:pose] again",
        references=[
            Reference(slot=1, image=b"x", attributes=("<subject>",), entity="a dog"),
            Reference(slot=2, image=b"x", attributes=("<id>",), entity="the man"),
        ],
        settings=Settings(size=(64, 64), mask=mask),
    )
    real = build_plan(small, tokenizer, image_sizes={1: (16, 2048), 2: (2048, 16)})
    for plan in (hand_plan(mask), real):
        n = plan.length
        got = create_mask(mask_mod(plan), None, None, n, n, device="cpu")
        assert torch.equal(got[0, 0], dense_mask(plan))


def test_dense_mask_refuses_long_plans(tokenizer) -> None:
    plan = build_plan(eight_references(), tokenizer, image_sizes=EIGHT_SIZES)
    with pytest.raises(MaskTooLargeError) as e:
        dense_mask(plan)
    msg = str(e.value)
    assert str(plan.length) in msg and "16384" in msg and "segment_masks" in msg
    with pytest.raises(ValueError, match="above the limit of 10"):
        dense_mask(hand_plan(), max_tokens=10)


# ----------------------------------------------------------------------------- properties

WORDS = st.text(alphabet="abcdefgh ,.", min_size=0, max_size=20)
ATTRS = st.lists(st.sampled_from(ATTRIBUTES), min_size=1, max_size=3, unique=True)
# vae_size makes extreme aspect ratios 64-token blocks; 512 x 512 gives 1024.
SIZES = st.sampled_from([(16, 2048), (2048, 16), (40, 4000), (512, 512)])


@st.composite
def compositions(draw: st.DrawFn) -> tuple[Composition, dict[int, tuple[int, int]]]:
    n_refs = draw(st.integers(0, 8))
    refs = [
        Reference(slot=k, image=b"x", attributes=tuple(draw(ATTRS)), entity=draw(WORDS))
        for k in range(1, n_refs + 1)
    ]
    placements = draw(st.lists(st.integers(1, n_refs), max_size=8)) if n_refs else []
    raw = draw(st.booleans())
    parts = [draw(WORDS)]
    for slot in placements:
        attrs = draw(st.none() | ATTRS)  # None: the slot's own; else a per-use override
        if raw:
            chosen = attrs or list(refs[slot - 1].attributes)
            parts.append(f"{' '.join(chosen)} {draw(WORDS)} <image_{slot}>")
        else:
            override = ":" + "+".join(a.strip("<>") for a in attrs) if attrs else ""
            parts.append(f"[{slot}{override}]")
        parts.append(draw(WORDS))
    prompt = " ".join(parts)
    if not prompt.strip():
        prompt = "a picture"
    size = draw(st.sampled_from([None, (64, 64), (128, 64)]))
    # every layout: in "training" the phantom ViT tokens are IMAGE tokens of their group
    layout = draw(st.sampled_from(["inference", "training", "training-no-vit"]))
    comp = Composition(prompt=prompt, references=refs, settings=Settings(size=size, layout=layout))
    return comp, {r.slot: draw(SIZES) for r in refs}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=compositions())
def test_segment_masks_match_dense(case, tokenizer) -> None:
    comp, sizes = case
    plan_on = build_plan(comp, tokenizer, image_sizes=sizes)
    for plan in (plan_on, replace(plan_on, mask=False)):
        dense = dense_mask(plan)
        for m in segment_masks(plan):
            seg = m.segment
            rows = dense[seg.start : seg.end]
            assert torch.equal(m.dense(), rows[:, : seg.end])
            assert not rows[:, seg.end :].any()  # nothing sees a later segment
            if m.is_full:
                assert rows[:, : seg.end].all()
        check_properties(plan, dense)


def check_properties(plan: Plan, dense: torch.Tensor) -> None:
    """The guarantees the engine and the paper rely on, on one dense mask."""
    noise = plan.segments[-1]
    assert noise.kind == "noise" and noise.end == plan.length
    assert dense[noise.start :].all()  # the noise block sees everything, itself both ways
    assert not dense[: noise.start, noise.start :].any()  # nothing earlier sees it
    tt, grp = plan.token_type, plan.group
    special = (tt == TokenType.SPECIAL).nonzero().squeeze(1)
    image = tt == TokenType.IMAGE
    idx = torch.arange(plan.length)
    for q in special.tolist():
        others = dense[q, image & (grp != grp[q]) & (idx < q)]  # other groups' latents
        assert not others.any() if plan.mask else others.all()
        plain_before = (tt == TokenType.PLAIN) & (idx <= q)
        assert dense[q, plain_before].all()  # markers of every group stay visible


def test_properties_on_the_hand_example() -> None:
    for mask in (True, False):
        plan = hand_plan(mask)
        check_properties(plan, dense_mask(plan))
    on, off = dense_mask(hand_plan()), dense_mask(hand_plan(mask=False))
    assert not on[9, 5:7].any() and off[9, 5:7].all()  # A1 vs group 0's latents
    assert on[15, 5:7].all() and not on[15, 12]  # A0 sees its own group, not group 1


# ----------------------------------------------------------------------------- picture

EIGHT_SIZES = {k: (1024, 1024) for k in range(1, 9)}


def eight_references(mask: bool = True) -> Composition:
    refs = [
        Reference(slot=k, image=b"x", attributes=(a,), entity=f"thing {k}")
        for k, a in enumerate(ATTRIBUTES[:8], start=1)
    ]
    return Composition(
        prompt="Place [1] next to [2] with [4], [5], [6], [7] and [8] around, in the style of [3]",
        references=refs,
        settings=Settings(mask=mask),
    )


def colours(path) -> set[tuple[int, int, int]]:
    arr = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in c) for c in np.unique(arr, axis=0)}


def test_mask_png_long_plan(tokenizer, tmp_path) -> None:
    plan = build_plan(eight_references(), tokenizer, image_sizes=EIGHT_SIZES)
    path = mask_png(plan, tmp_path / "long.png", max_px=1024)  # speed: bench_sequence.py
    img = Image.open(path)
    assert img.format == "PNG" and max(img.size) <= 1024
    found = colours(path)
    assert set(TYPE_COLORS.values()) <= found
    assert BLOCKED_MASK in found  # the guard's blocked cells survive downsampling


def test_mask_png_axis_keeps_attribute_tokens_and_text(tokenizer) -> None:
    plan = build_plan(eight_references(), tokenizer, image_sizes=EIGHT_SIZES)
    rep, scale = _axis(plan, 700)
    assert scale == 1 and len(rep) <= 700
    shown = set(rep.tolist())
    assert set((plan.token_type == TokenType.SPECIAL).nonzero().squeeze(1).tolist()) <= shown
    for seg in plan.segments:
        assert shown & set(range(seg.start, seg.end))


@pytest.mark.parametrize("mask", [True, False])
def test_mask_png_short_plan(mask: bool, tmp_path) -> None:
    path = mask_png(hand_plan(mask), tmp_path / "short.png", max_px=600)
    img = Image.open(path)
    assert max(img.size) <= 600
    found = colours(path)
    assert set(TYPE_COLORS.values()) <= found
    assert (BLOCKED_MASK in found) == mask  # the legend lists M only when it applies
    assert (LEAK in found) != mask


def test_mask_png_refuses_tiny_canvas(tmp_path) -> None:
    with pytest.raises(ValueError, match="max_px"):
        mask_png(hand_plan(), tmp_path / "x.png", max_px=100)


@pytest.mark.parametrize(
    "stop", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")]
)
def test_mask_png_interrupted_leaves_no_half_picture(monkeypatch, tmp_path, stop) -> None:
    """The studio draws a picture only when its file is missing, so a save stopped halfway (a
    Ctrl-C, a full disk) must leave nothing there, nor a temporary file."""

    def half(img, f, *args, **kwargs):
        f.write(b"\x89PNG half")
        raise stop

    monkeypatch.setattr(Image.Image, "save", half)
    with pytest.raises((KeyboardInterrupt, SigmaResourceError)):
        mask_png(hand_plan(), tmp_path / "m.png", max_px=600)
    assert list(tmp_path.iterdir()) == []


def test_mask_png_keeps_an_existing_file_unless_overwrite(tmp_path) -> None:
    (tmp_path / "m.png").write_bytes(b"keep me")
    written = mask_png(hand_plan(), tmp_path / "m.png", max_px=600, overwrite=False)
    assert written == tmp_path / "m-2.png" and (tmp_path / "m.png").read_bytes() == b"keep me"
    assert mask_png(hand_plan(), tmp_path / "m.png", max_px=600) == tmp_path / "m.png"
    with Image.open(tmp_path / "m.png") as img:
        assert img.format == "PNG"
