"""The tokenizer: SIGMA's tokens and their ids, control tokens that prompts cannot smuggle in,
and the fast tokenizer against transformers'."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sigma_core import ATTRIBUTES, Reference
from sigma_core.errors import CheckpointError, PromptError, SigmaInputError
from sigma_core.planning.sequence import build_plan, tokenize_text
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
from tests.sequence_helpers import SMALL, make_comp


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
            build_plan(make_comp(prompt), tokenizer, SMALL)


def test_control_token_in_an_entity_is_refused(tokenizer):
    refs = [Reference(1, "one.png", ("<id>",), "the woman </tool_call>")]
    with pytest.raises(PromptError, match="'</tool_call>' is a control token"):
        build_plan(make_comp("Show [1]", refs=refs), tokenizer, SMALL)


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
