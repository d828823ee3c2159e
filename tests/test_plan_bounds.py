"""Bounds on the plan (tokens, rope positions), checked before any per-token data is built;
and the plan's reference count."""

from __future__ import annotations

import re

import pytest

from sigma_core import Composition, Reference, Settings
from sigma_core.errors import PromptError
from sigma_core.limits import MAX_PLACEMENTS, MAX_PLAN_TOKENS, MAX_POSITIONS
from sigma_core.planning import sequence
from sigma_core.planning.sequence import Segment, build_plan, check_bounds

BIG = (1024, 1024)  # a 64x64 latent grid: 4,098 tokens per block with its markers


def _many(n: int) -> tuple[Composition, dict[int, tuple[int, int]]]:
    refs = [Reference(k, f"{k}.png", ("<subject>",), f"thing {k}") for k in range(1, n + 1)]
    prompt = "Put " + ", ".join(f"[{k}]" for k in range(1, n + 1)) + " on a table"
    return Composition(prompt, refs, Settings()), dict.fromkeys(range(1, n + 1), BIG)


def _blocks(lengths: list[int], positions: list[int]) -> list[Segment]:
    out, start = [], 0
    for n, pos in zip(lengths, positions, strict=True):
        out.append(Segment("image", start, n, pos, token_ids=(1, 2)))
        start += n
    return out


def test_too_many_tokens_is_refused_with_limit_and_value(tokenizer) -> None:
    comp, sizes = _many(MAX_PLACEMENTS)  # 16 blocks of 1024^2 plus the noise block
    with pytest.raises(PromptError) as e:
        build_plan(comp, tokenizer, sizes)
    msg = str(e.value)
    m = re.search(r"the sequence needs ([\d,]+) tokens, over the limit of ([\d,]+);", msg)
    assert m, msg
    assert int(m.group(1).replace(",", "")) > MAX_PLAN_TOKENS
    assert m.group(2) == f"{MAX_PLAN_TOKENS:,}"
    assert msg.startswith("prompt: ") and "fewer or smaller references" in msg


def test_token_bound_is_checked_before_per_token_data_is_built(tokenizer, monkeypatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("per-token arrays were built for a plan over the limit")

    monkeypatch.setattr(sequence, "_per_token_arrays", must_not_run)
    comp, sizes = _many(MAX_PLACEMENTS)
    with pytest.raises(PromptError, match="over the limit"):
        build_plan(comp, tokenizer, sizes)
    comp, sizes = _many(2)
    plan = build_plan(comp, tokenizer, sizes)  # a valid plan builds none until asked
    assert plan.length > 0 and not {"arrays", "_tensors"} & set(plan.__dict__)


def test_token_bound_is_exact() -> None:
    check_bounds(_blocks([MAX_PLAN_TOKENS - 10, 10], [0, 1]))
    with pytest.raises(PromptError, match=f"needs {MAX_PLAN_TOKENS + 1:,} tokens"):
        check_bounds(_blocks([MAX_PLAN_TOKENS - 9, 10], [0, 1]))


def test_positions_bound_is_exact() -> None:
    segs = _blocks([4, 4], [0, 99])  # positions 0 and 99: 100 positions
    check_bounds(segs, max_positions=100)
    with pytest.raises(PromptError) as e:
        check_bounds(segs, max_positions=99)
    assert "needs 100 rope positions, over the model's limit of 99" in str(e.value)
    assert "max_position_embeddings" in str(e.value)


def test_build_plan_refuses_positions_past_max_positions(tokenizer) -> None:
    comp, sizes = _many(3)
    plan = build_plan(comp, tokenizer, sizes)
    assert plan.max_position == plan.noise.position  # the noise block holds the last position
    assert build_plan(comp, tokenizer, sizes, max_positions=plan.max_position + 1).length == (
        plan.length
    )
    with pytest.raises(PromptError, match=rf"over the model's limit of {plan.max_position:,} "):
        build_plan(comp, tokenizer, sizes, max_positions=plan.max_position)


def test_default_position_bound_is_qwen25s(tokenizer) -> None:
    import inspect

    default = inspect.signature(build_plan).parameters["max_positions"].default
    assert default == MAX_POSITIONS == 32_768


def test_long_text_hits_the_position_bound_not_the_token_bound(tokenizer) -> None:
    refs = [Reference(1, "1.png", ("<id>",), "her")]
    comp = Composition("word " * 700 + "[1]", refs, Settings())
    plan = build_plan(comp, tokenizer, {1: (512, 512)})
    assert plan.length < MAX_PLAN_TOKENS
    with pytest.raises(PromptError, match="rope positions"):
        build_plan(comp, tokenizer, {1: (512, 512)}, max_positions=plan.max_position - 50)


def test_num_references_counts_slots_not_placements(tokenizer) -> None:
    refs = [
        Reference(1, "a.png", ("<style>",), "the painting"),
        Reference(2, "b.png", ("<subject>",), "the dog"),
    ]
    comp = Composition("Paint [1:style] as [1:id] with [2]", refs, Settings())
    plan = build_plan(comp, tokenizer, {1: (512, 512), 2: (512, 512)})
    assert plan.num_groups == 3  # placements
    assert plan.num_references == 2  # distinct slots
    text_only = build_plan(Composition("a fox in the snow", [], Settings()), tokenizer, {})
    assert (text_only.num_groups, text_only.num_references) == (0, 0)
