"""From a composition to the interleaved token plan the model reads.

SIGMA's input is H = [T_1; I_1; T_2; I_2; ...]: text segments and reference image blocks in the
order the prompt places them, then the generated (noise) image block. The plan records, for
every token, its type, group, BAGEL position id and expert, which is all the mask and the engine
need. Splitting and packing follow SIGMA's training code exactly (``change_format``), so token ids
match the official implementation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import torch

from sigma_core.attributes import (
    ATTRIBUTES,
    UnknownAttributeError,
    closest_attribute,
    find_attribute_tokens,
    normalize_attribute,
    suggest_attribute,
)
from sigma_core.composition import IMAGE_PLACEHOLDER, SLOT_REFERENCE, Composition
from sigma_core.errors import PromptError
from sigma_core.images import vae_size

_LOOSE_PLACEHOLDER = re.compile(r"<\s*image[^>]{0,8}>", re.IGNORECASE)
_ANGLE_WORD = re.compile(r"<([A-Za-z][A-Za-z_ ]{0,30})>")

LATENT_DOWNSAMPLE = 16  # VAE downsample 8 x latent patch 2
DEFAULT_OUTPUT_SIZE = (1024, 1024)
MARKER_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")


class TokenType(IntEnum):
    """The paper's token types, plus NOISE for the generated block."""

    TEXT = 0
    SPECIAL = 1  # an attribute token
    IMAGE = 2  # a latent token of a reference image
    PLAIN = 3  # <|im_start|> <|im_end|> <|vision_start|> <|vision_end|>
    NOISE = 4  # a latent token of the image being generated


class Expert(IntEnum):
    """Which MoT expert a token runs through."""

    UND = 0  # understanding: text and markers
    GEN = 1  # generation: VAE latent tokens, clean or noised


@dataclass(frozen=True)
class TokenIds:
    """The ids of the marker and attribute tokens in one tokenizer."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    attributes: dict[str, int]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenIds:
        vocab = tokenizer.get_vocab()
        missing = [t for t in (*MARKER_TOKENS, *ATTRIBUTES) if t not in vocab]
        if missing:
            hint = (
                "call sigma_core.tokenizer.add_sigma_tokens(tokenizer) first"
                if all(t in ATTRIBUTES for t in missing)
                else "use a Qwen2 tokenizer"
            )
            raise PromptError(f"tokenizer: missing tokens {', '.join(missing)}; {hint}")
        return cls(*(vocab[t] for t in MARKER_TOKENS), {t: vocab[t] for t in ATTRIBUTES})


@dataclass(frozen=True)
class Piece:
    """One element of a split prompt: a text piece or an image placeholder."""

    kind: Literal["text", "image"]
    text: str = ""
    slot: int = 0  # 1-based, for images


@dataclass(frozen=True)
class Segment:
    """A contiguous run of tokens: a packed text piece, a reference image block or the noise
    block. Image and noise blocks include their two vision markers."""

    kind: Literal["text", "image", "noise"]
    start: int
    length: int
    position: int  # rope position of the first token (shared by a whole image block)
    text: str = ""
    slot: int | None = None
    group: int = -1  # reference occurrence, for image blocks
    attributes: tuple[str, ...] = ()  # attribute tokens bound to this image block
    size: tuple[int, int] | None = None  # (width, height) after BAGEL's VAE resize
    grid: tuple[int, int] | None = None  # (rows, cols) of latent tokens

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class Plan:
    """The interleaved sequence: segments plus per-token tensors of length L."""

    segments: list[Segment]
    token_ids: torch.Tensor  # int64 [L]; -1 for latent tokens
    token_type: torch.Tensor  # int8 [L]; TokenType
    group: torch.Tensor  # int32 [L]; -1 for tokens outside any group
    position_ids: torch.Tensor  # int64 [L]
    expert: torch.Tensor  # int8 [L]; Expert
    output_size: tuple[int, int]  # (width, height) of the generated image
    mask: bool = True  # whether SIGMA's intra-group mask applies
    raw_prompt: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_groups(self) -> int:
        return sum(1 for s in self.segments if s.kind == "image")


# ----------------------------------------------------------------------------- prompt syntax


def to_raw_prompt(composition: Composition) -> tuple[str, list[str]]:
    """The prompt in raw SIGMA syntax, and warnings. Template prompts ([k]) are expanded to
    SIGMA's triple ``<attr...> phrase <image_k>``; raw prompts are checked and aliases
    (``<identity>``) canonicalised."""
    prompt = composition.prompt
    has_raw = IMAGE_PLACEHOLDER.search(prompt) is not None
    has_template = SLOT_REFERENCE.search(prompt) is not None
    if has_raw and has_template:
        raise PromptError(
            "prompt: mixes [k] slot references with <image_k> placeholders; use one syntax"
        )
    warnings: list[str] = []
    if not has_raw:
        prompt = _expand_template(prompt, composition)
    return _canonicalize_tokens(prompt, warnings), warnings


def _expand_template(prompt: str, composition: Composition) -> str:
    def expand(m: re.Match[str]) -> str:
        slot = int(m.group(1))
        ref = _require_slot(composition, slot, m.group(0))
        attrs = ref.attributes
        if m.group(2) is not None:
            try:
                attrs = tuple(
                    normalize_attribute(a) for a in re.split(r"[+,\s]+", m.group(2).strip()) if a
                )
            except UnknownAttributeError as e:
                raise PromptError(f"prompt: in {m.group(0)}: {e}") from None
            if not attrs:
                raise PromptError(f"prompt: {m.group(0)} names no attribute after ':'")
        return " ".join([*attrs, *([ref.entity.strip()] if ref.entity.strip() else [])]) + (
            f" <image_{slot}>"
        )

    return SLOT_REFERENCE.sub(expand, prompt)


def _canonicalize_tokens(prompt: str, warnings: list[str]) -> str:
    for m in _LOOSE_PLACEHOLDER.finditer(prompt):
        if not IMAGE_PLACEHOLDER.fullmatch(m.group(0)):
            raise PromptError(
                f"prompt: {m.group(0)!r} is not a placeholder; write <image_1>, <image_2> ... "
                "(lower case, 1-based), or use [1], [2] ..."
            )

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        if word in ATTRIBUTES:
            return word
        try:
            return normalize_attribute(word)
        except UnknownAttributeError:
            # A near miss of a token is a typo; anything else in angle brackets is plain text.
            if closest_attribute(word, cutoff=0.75):
                raise PromptError(
                    f"prompt: {word!r} is not an attribute; {suggest_attribute(word)}"
                ) from None
            warnings.append(f"prompt: {word!r} is not an attribute token; it is read as plain text")
            return word

    return _ANGLE_WORD.sub(fix, prompt)


def split_prompt(raw: str) -> list[Piece]:
    """SIGMA's ``change_format``: text between placeholders, stripped, empty pieces dropped."""
    pieces: list[Piece] = []
    last = 0
    for m in IMAGE_PLACEHOLDER.finditer(raw):
        text = raw[last : m.start()].strip()
        if text:
            pieces.append(Piece("text", text=text))
        pieces.append(Piece("image", slot=int(m.group(1))))
        last = m.end()
    tail = raw[last:].strip()
    if tail:
        pieces.append(Piece("text", text=tail))
    return pieces


def _require_slot(composition: Composition, slot: int, written: str) -> Any:
    ref = composition.reference(slot)
    if ref is None:
        have = ", ".join(str(r.slot) for r in composition.references) or "none"
        raise PromptError(
            f"prompt: {written} refers to slot {slot}, which does not exist (slots: {have})"
        )
    if ref.image is None:
        raise PromptError(
            f"prompt: {written} refers to slot {slot}, which has no image; "
            "add one or remove the reference"
        )
    return ref


# ----------------------------------------------------------------------------- the plan


def build_plan(
    composition: Composition,
    tokenizer: Any,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
) -> Plan:
    """Build the interleaved plan.

    ``image_sizes`` maps slot -> (width, height) of the source image (after crop); when omitted
    the images are read. Block sizes follow BAGEL's VAE resize of those sizes.
    """
    if image_sizes is None:
        image_sizes = {slot: im.size for slot, im in composition.load_images().items()}
    ids = TokenIds.from_tokenizer(tokenizer)
    attr_of_id = {v: k for k, v in ids.attributes.items()}
    raw, warnings = to_raw_prompt(composition)
    pieces = split_prompt(raw)
    if not pieces:
        raise PromptError("prompt: is empty; describe the image and place references with [1]")

    # Group g is the g-th image piece; a text piece's attribute tokens join the next image's.
    n_images = sum(p.kind == "image" for p in pieces)
    next_group = [-1] * len(pieces)
    upcoming, seen = -1, 0
    for i in reversed(range(len(pieces))):
        if pieces[i].kind == "image":
            seen += 1
            upcoming = n_images - seen
        next_group[i] = upcoming

    # Tokenise text pieces and bind each attribute token to the group of the next image.
    text_ids: dict[int, list[int]] = {}
    group_attrs: dict[int, list[str]] = {g: [] for g in range(n_images)}
    for i, piece in enumerate(pieces):
        if piece.kind != "text":
            continue
        body = tokenizer.encode(piece.text, add_special_tokens=False)
        found = [attr_of_id[t] for t in body if t in attr_of_id]
        if found != [m.group(0) for m in find_attribute_tokens(piece.text)]:
            raise PromptError(
                f"tokenizer: the attribute tokens in {piece.text!r} did not tokenise as single "
                "tokens; load the tokenizer with sigma_core.tokenizer.load_tokenizer"
            )
        if found and next_group[i] < 0:
            raise PromptError(
                f"prompt: {', '.join(found)} in {piece.text!r} is not followed by an image; put "
                "the attribute right before its image: '<style> the painting <image_2>' or [2]"
            )
        for a in found:
            if a not in group_attrs[next_group[i]]:
                group_attrs[next_group[i]].append(a)
        text_ids[i] = [ids.im_start, *body, ids.im_end]

    b = _Builder(ids)
    used_slots: set[int] = set()
    last_size: tuple[int, int] | None = None
    for i, piece in enumerate(pieces):
        if piece.kind == "text":
            b.text(text_ids[i], piece.text, next_group[i], set(attr_of_id))
            continue
        _require_slot(composition, piece.slot, f"<image_{piece.slot}>")
        used_slots.add(piece.slot)
        if piece.slot not in image_sizes:
            raise PromptError(f"references[slot {piece.slot}]: no image size is known")
        last_size = vae_size(*image_sizes[piece.slot])
        group = b.num_groups
        listed = composition.reference(piece.slot).attributes
        if not group_attrs[group] and listed:
            warnings.append(
                f"<image_{piece.slot}> has no attribute token before it, so slot "
                f"{piece.slot}'s {' '.join(listed)} is not used; write e.g. "
                f"'{listed[0]} <image_{piece.slot}>'"
            )
        b.image_block(
            "image", last_size, slot=piece.slot, group=group, attributes=tuple(group_attrs[group])
        )

    s = composition.settings
    out_size = s.size if s.size is not None else last_size
    if out_size is None:
        out_size = DEFAULT_OUTPUT_SIZE
        warnings.append(
            f"no reference image in the prompt: generating {out_size[0]}x{out_size[1]} from text"
        )
    b.image_block("noise", out_size)
    for ref in composition.references:
        if ref.image is not None and ref.slot not in used_slots:
            warnings.append(
                f"slot {ref.slot} has an image but the prompt never uses it; add [{ref.slot}] "
                f"or <image_{ref.slot}> to the prompt"
            )
    return b.finish(output_size=tuple(out_size), mask=s.mask, raw_prompt=raw, warnings=warnings)


class _Builder:
    """Appends segments and their per-token tensors, tracking offset and rope position."""

    def __init__(self, ids: TokenIds) -> None:
        self.ids = ids
        self.segments: list[Segment] = []
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.start = self.pos = self.num_groups = 0

    def _add(self, seg: Segment, *tensors: torch.Tensor, advance: int) -> None:
        self.segments.append(seg)
        self.parts.append(tensors)
        self.start += seg.length
        self.pos += advance

    def text(self, tok_ids: list[int], text: str, group: int, special_ids: set[int]) -> None:
        """<|im_start|> text <|im_end|>: causal, understanding expert, +1 position per token."""
        n = len(tok_ids)
        special = torch.tensor([t in special_ids for t in tok_ids], dtype=torch.bool)
        ttype = torch.full((n,), TokenType.TEXT, dtype=torch.int8)
        ttype[special] = TokenType.SPECIAL
        ttype[0] = ttype[-1] = TokenType.PLAIN
        grp = torch.full((n,), -1, dtype=torch.int32)
        grp[special] = group
        seg = Segment("text", self.start, n, self.pos, text=text)
        self._add(
            seg,
            torch.tensor(tok_ids, dtype=torch.long),
            ttype,
            grp,
            torch.arange(self.pos, self.pos + n),
            torch.full((n,), Expert.UND, dtype=torch.int8),
            advance=n,
        )

    def image_block(
        self,
        kind: Literal["image", "noise"],
        size: tuple[int, int],
        *,
        slot: int | None = None,
        group: int = -1,
        attributes: tuple[str, ...] = (),
    ) -> None:
        """<|vision_start|> + h*w latent tokens + <|vision_end|>, all at one rope position;
        the block then advances the position by one."""
        w, h = size
        grid = (h // LATENT_DOWNSAMPLE, w // LATENT_DOWNSAMPLE)
        n = grid[0] * grid[1] + 2
        tok = torch.full((n,), -1, dtype=torch.long)
        tok[0], tok[-1] = self.ids.vision_start, self.ids.vision_end
        latent = TokenType.IMAGE if kind == "image" else TokenType.NOISE
        ttype = torch.full((n,), latent, dtype=torch.int8)
        ttype[0] = ttype[-1] = TokenType.PLAIN
        grp = torch.full((n,), group, dtype=torch.int32)
        grp[0] = grp[-1] = -1
        expert = torch.full((n,), Expert.GEN, dtype=torch.int8)
        expert[0] = expert[-1] = Expert.UND
        seg = Segment(
            kind,
            self.start,
            n,
            self.pos,
            slot=slot,
            group=group,
            attributes=attributes,
            size=(w, h),
            grid=grid,
        )
        self._add(
            seg, tok, ttype, grp, torch.full((n,), self.pos, dtype=torch.long), expert, advance=1
        )
        if kind == "image":
            self.num_groups += 1

    def finish(self, **kwargs: Any) -> Plan:
        ids, ttype, grp, pos, expert = (torch.cat(t) for t in zip(*self.parts, strict=True))
        return Plan(self.segments, ids, ttype, grp, pos, expert, **kwargs)
