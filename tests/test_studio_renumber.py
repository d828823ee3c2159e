"""renumber_slots (sigma_core.frontend): moving a slot renumbers the prompt's references and
nothing else, so the prompt keeps its meaning (the studio's up/down buttons rely on it)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sigma_core import PromptError, frontend
from sigma_core.frontend import renumber_slots

SLOTS = st.integers(min_value=1, max_value=12)
WORDS = st.text(alphabet="abc xyz,.:<>[]_-", max_size=8)


@st.composite
def prompts(draw: st.DrawFn) -> str:
    """Template or raw prompts with references in every written form, and text around them."""
    raw = draw(st.booleans())
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        slot = draw(SLOTS)
        if raw:
            ref = draw(st.sampled_from([f"<image_{slot}>", f"<image {slot}>", f"<image__{slot}>"]))
        else:
            ref = draw(st.sampled_from([f"[{slot}]", f"[{slot}:style]", f"[{slot}:id+clothing]"]))
        parts += [draw(WORDS), ref]
    return "".join([*parts, draw(WORDS)])


@st.composite
def permutations(draw: st.DrawFn) -> dict[int, int]:
    """A bijection of slots 1..n, as the studio's moves make."""
    n = draw(st.integers(1, 12))
    order = draw(st.permutations(list(range(1, n + 1))))
    return dict(zip(range(1, n + 1), order, strict=True))


@given(prompts())
def test_the_identity_changes_nothing(prompt):
    assert renumber_slots(prompt, {}) == prompt
    assert renumber_slots(prompt, {k: k for k in range(1, 13)}) == prompt


@given(prompts(), permutations())
def test_placed_slots_follow_the_mapping(prompt, mapping):
    expected = [mapping.get(s, s) for s in frontend.placed_slots(prompt)]
    assert frontend.placed_slots(renumber_slots(prompt, mapping)) == expected


@given(prompts(), permutations())
def test_the_inverse_mapping_restores_the_prompt(prompt, mapping):
    inverse = {new: old for old, new in mapping.items()}
    assert renumber_slots(renumber_slots(prompt, mapping), inverse) == prompt


@given(prompts(), permutations())
def test_only_the_numbers_change(prompt, mapping):
    def strip_digits(text: str) -> str:
        return "".join(c for c in text if not c.isdigit())

    out = renumber_slots(prompt, mapping)
    assert strip_digits(out) == strip_digits(prompt)


def test_a_swap_keeps_what_each_reference_says():
    prompt = "A photo of [1] holding [2:subject], in the style of [3]"
    assert renumber_slots(prompt, {1: 2, 2: 1}) == (
        "A photo of [2] holding [1:subject], in the style of [3]"
    )
    raw = "<id> woman <image_1> with <subject> cat <image 2>"
    assert renumber_slots(raw, {1: 2, 2: 1}) == "<id> woman <image_2> with <subject> cat <image 1>"


def test_merging_two_slots_is_refused():
    with pytest.raises(PromptError, match="would both become slot 2"):
        renumber_slots("[1] and [2]", {1: 2})


@pytest.mark.parametrize("bad", [{0: 1}, {1: -1}, {"1": 2}])
def test_slot_numbers_must_be_positive_integers(bad):
    with pytest.raises(PromptError, match="integers >= 1"):
        renumber_slots("[1]", bad)
