"""The attribute vocabulary: order, descriptions, aliases, suggestions."""

from __future__ import annotations

import pytest

from sigma_core.errors import SigmaInputError
from sigma_core.inputs.attributes import (
    ATTRIBUTES,
    DESCRIPTIONS,
    UnknownAttributeError,
    find_attribute_tokens,
    normalize_attribute,
)


def test_vocabulary_is_sigmas_exact_order():
    # The order fixes token ids in a SIGMA checkpoint (data/data_utils_token.py).
    expected = (
        "<style> <subject> <id> <icon> <text> <pose> <layout> <perspective> <lighting> "
        "<background> <environment> <emotion> <clothing> <texture> <select>"
    )
    assert " ".join(ATTRIBUTES) == expected


def test_every_token_has_a_one_line_description():
    assert set(DESCRIPTIONS) == set(ATTRIBUTES)
    assert all(d and "\n" not in d for d in DESCRIPTIONS.values())


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("identity", "<id>"),
        ("Identity", "<id>"),
        ("<identity>", "<id>"),
        ("style", "<style>"),
        ("<STYLE>", "<style>"),
        (" < style > ", "<style>"),
        ("<select>", "<select>"),
        ("Background", "<background>"),
        ("id", "<id>"),
    ],
)
def test_aliases_with_or_without_brackets_any_case(name, token):
    assert normalize_attribute(name) == token


def test_every_token_normalises_to_itself():
    for tok in ATTRIBUTES:
        assert normalize_attribute(tok) == tok
        assert normalize_attribute(tok[1:-1].upper()) == tok


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("<idd>", "<id>"),
        ("stlye", "<style>"),
        ("backgound", "<background>"),
        ("<lightning>", "<lighting>"),
    ],
)
def test_unknown_name_suggests_the_closest(name, suggestion):
    with pytest.raises(UnknownAttributeError) as e:
        normalize_attribute(name)
    msg = str(e.value)
    assert f"did you mean '{suggestion}'?" in msg
    assert all(tok in msg for tok in ATTRIBUTES)  # lists the valid names
    assert isinstance(e.value, SigmaInputError)


def test_unknown_name_far_from_everything_lists_valid_names():
    with pytest.raises(UnknownAttributeError) as e:
        normalize_attribute("zzzzqqq")
    assert "did you mean" not in str(e.value) and "<select>" in str(e.value)


def test_non_string_is_refused():
    with pytest.raises(UnknownAttributeError):
        normalize_attribute(3)  # type: ignore[arg-type]


def test_find_attribute_tokens_is_exact():
    text = "Put <id> man and <ID> and <style> from <image_1>"
    assert [m.group(0) for m in find_attribute_tokens(text)] == ["<id>", "<style>"]
