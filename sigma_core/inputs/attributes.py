"""SIGMA's attribute vocabulary: the tokens that say what a reference image contributes.

The order of :data:`ATTRIBUTES` is the order in which SIGMA's ``add_special_tokens`` adds them to
the tokenizer, so it fixes their token ids in a SIGMA checkpoint (151665..151679 for Qwen2.5).
Never reorder it.
"""

from __future__ import annotations

import difflib
import re

from sigma_core.errors import SigmaInputError

ATTRIBUTES: tuple[str, ...] = (
    "<style>",
    "<subject>",
    "<id>",
    "<icon>",
    "<text>",
    "<pose>",
    "<layout>",
    "<perspective>",
    "<lighting>",
    "<background>",
    "<environment>",
    "<emotion>",
    "<clothing>",
    "<texture>",
    "<select>",
)

DESCRIPTIONS: dict[str, str] = {
    "<style>": "Artistic style: brushwork, palette and medium, not the content.",
    "<subject>": "An object or animal to place in the scene, keeping its look.",
    "<id>": "A person's identity: the face, kept recognisable.",
    "<icon>": "A logo, icon or symbol to reproduce.",
    "<text>": "Lettering or typography to reproduce.",
    "<pose>": "Body pose or gesture to copy.",
    "<layout>": "Spatial arrangement: where things go in the frame.",
    "<perspective>": "Camera viewpoint and angle.",
    "<lighting>": "Light direction, colour and mood.",
    "<background>": "The backdrop behind the subjects.",
    "<environment>": "The surrounding place or setting.",
    "<emotion>": "Facial expression or emotional tone.",
    "<clothing>": "Garments and outfit.",
    "<texture>": "Surface material and texture.",
    "<select>": "Isolate and extract the named object from this image.",
}

# Extra names accepted on input; every bare token name (``style``, ``id`` ...) works too.
ALIASES: dict[str, str] = {
    "identity": "<id>",
    "face": "<id>",
    "person": "<id>",
    "object": "<subject>",
    "logo": "<icon>",
    "typography": "<text>",
    "light": "<lighting>",
    "bg": "<background>",
    "scene": "<environment>",
    "expression": "<emotion>",
    "outfit": "<clothing>",
    "clothes": "<clothing>",
    "material": "<texture>",
    "extract": "<select>",
    "isolate": "<select>",
    "composition": "<layout>",
    "viewpoint": "<perspective>",
}

_LOOKUP: dict[str, str] = {tok[1:-1]: tok for tok in ATTRIBUTES} | ALIASES
_TOKEN_RE = re.compile("|".join(re.escape(t) for t in ATTRIBUTES))


class UnknownAttributeError(SigmaInputError):
    """An attribute name that is neither a SIGMA token nor an alias."""


def normalize_attribute(name: str) -> str:
    """Return the canonical token (``"<id>"``) for a token, bare name or alias, in any case."""
    if not isinstance(name, str):
        raise UnknownAttributeError(
            f"{name!r} is not an attribute: expected a string such as '<id>'"
        )
    key = name.strip().lower()
    if key.startswith("<") and key.endswith(">"):
        key = key[1:-1].strip()
    if key in _LOOKUP:
        return _LOOKUP[key]
    raise UnknownAttributeError(f"{name!r} is not an attribute; {suggest_attribute(name)}")


def closest_attribute(name: str, cutoff: float = 0.5) -> str | None:
    """The canonical token whose name or alias is closest to ``name``, if any is close enough."""
    key = str(name).strip().lower().strip("<>")
    close = difflib.get_close_matches(key, list(_LOOKUP), n=1, cutoff=cutoff)
    return _LOOKUP[close[0]] if close else None


def suggest_attribute(name: str) -> str:
    """A 'did you mean' hint plus the list of valid tokens, for error messages."""
    valid = "valid attributes: " + " ".join(ATTRIBUTES)
    close = closest_attribute(name)
    return f"did you mean '{close}'? ({valid})" if close else valid


def find_attribute_tokens(text: str) -> list[re.Match[str]]:
    """Every exact SIGMA token in ``text``, in order (the tokenizer matches them the same way)."""
    return list(_TOKEN_RE.finditer(text))


def strip_tokens(raw: str) -> str:
    """A raw SIGMA prompt without its attribute tokens (the paper's "no attribute tokens" arm):
    the placeholders and the words stay where they were, a token glued to a word leaves a space,
    and runs of spaces are closed up."""
    return " ".join(_TOKEN_RE.sub(" ", raw).split())
