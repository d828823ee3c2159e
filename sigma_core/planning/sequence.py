"""From a composition to the interleaved token plan the model reads.

SIGMA's input is H = [T_1; I_1; T_2; I_2; ...]: text segments and reference image blocks in the
order the prompt places them, then the generated (noise) image block. The plan records, for
every token, its type, group, BAGEL position id and expert, which is all the mask and the engine
need. Splitting and packing follow SIGMA's training code exactly (``change_format``), so token ids
match the official implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import torch

from sigma_core.errors import PromptError
from sigma_core.geometry import DEFAULT_OUTPUT_SIZE, latent_grid, vae_size
from sigma_core.inputs.attributes import find_attribute_tokens
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.prompt import Piece, is_raw, require_slot, split_prompt, to_raw_prompt
from sigma_core.inputs.settings import Settings
from sigma_core.planning.tokenizer import TokenIds


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


@dataclass(frozen=True)
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

    @property
    def noise(self) -> Segment:
        """The generated block, always last."""
        return self.segments[-1]


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
    raw, warnings = to_raw_prompt(composition)
    pieces = split_prompt(raw)
    if not pieces:
        raise PromptError("prompt: is empty; describe the image and place references with [1]")
    next_group = _next_groups(pieces)
    text_ids, group_attrs = _bind_attributes(pieces, next_group, tokenizer, ids)

    b = _Builder(ids)
    special = set(ids.attributes.values())
    last_size: tuple[int, int] | None = None
    for i, piece in enumerate(pieces):
        if piece.kind == "text":
            b.text(text_ids[i], piece.text, next_group[i], special)
            continue
        ref = require_slot(composition, piece.slot, f"<image_{piece.slot}>")
        if piece.slot not in image_sizes:
            raise PromptError(f"references[slot {piece.slot}]: no image size is known")
        last_size = vae_size(*image_sizes[piece.slot])
        given = tuple(group_attrs[b.num_groups])
        warnings += _attribute_warnings(
            piece.slot, ref.attributes, given, is_raw(composition.prompt)
        )
        b.image_block("image", last_size, slot=piece.slot, group=b.num_groups, attributes=given)

    out_size = _output_size(composition.settings, last_size, warnings)
    b.image_block("noise", out_size)
    used = {p.slot for p in pieces if p.kind == "image"}
    warnings += [
        f"slot {ref.slot} has an image but the prompt never uses it; add [{ref.slot}] "
        f"or <image_{ref.slot}> to the prompt"
        for ref in composition.references
        if ref.image is not None and ref.slot not in used
    ]
    return b.finish(
        output_size=out_size, mask=composition.settings.mask, raw_prompt=raw, warnings=warnings
    )


def _next_groups(pieces: list[Piece]) -> list[int]:
    """For each piece, the group of the next image piece (group g is the g-th image), or -1."""
    n_images = sum(p.kind == "image" for p in pieces)
    out = [-1] * len(pieces)
    upcoming, seen = -1, 0
    for i in reversed(range(len(pieces))):
        if pieces[i].kind == "image":
            seen += 1
            upcoming = n_images - seen
        out[i] = upcoming
    return out


def _bind_attributes(
    pieces: list[Piece], next_group: list[int], tokenizer: Any, ids: TokenIds
) -> tuple[dict[int, list[int]], dict[int, list[str]]]:
    """Tokenise the text pieces (packed as <|im_start|> ... <|im_end|>) and bind each attribute
    token to the group of the next image. Returns token ids by piece, attributes by group."""
    attr_of_id = {v: k for k, v in ids.attributes.items()}
    text_ids: dict[int, list[int]] = {}
    group_attrs: dict[int, list[str]] = {g: [] for g in set(next_group) if g >= 0}
    for i, piece in enumerate(pieces):
        if piece.kind != "text":
            continue
        body = tokenizer.encode(piece.text, add_special_tokens=False)
        found = [attr_of_id[t] for t in body if t in attr_of_id]
        if found != [m.group(0) for m in find_attribute_tokens(piece.text)]:
            raise PromptError(
                f"tokenizer: the attribute tokens in {piece.text!r} did not tokenise as single "
                "tokens; load the tokenizer with sigma_core.planning.load_tokenizer"
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
    return text_ids, group_attrs


def _attribute_warnings(
    slot: int, listed: tuple[str, ...], given: tuple[str, ...], raw: bool
) -> list[str]:
    """A placed image's attribute tokens against the slot's own list."""
    if not given and listed:
        return [
            f"<image_{slot}> has no attribute token before it, so slot {slot}'s "
            f"{' '.join(listed)} is not used; write e.g. '{listed[0]} <image_{slot}>'"
        ]
    if raw and listed and set(given) != set(listed):
        return [
            f"<image_{slot}> is bound to {' '.join(given)} by the prompt, but slot {slot} lists "
            f"{' '.join(listed)}; the prompt's tokens are used"
        ]
    return []


def _output_size(
    settings: Settings, last_size: tuple[int, int] | None, warnings: list[str]
) -> tuple[int, int]:
    """settings.size, else the last reference's VAE size (as BAGEL does), else the default."""
    if settings.size is not None:
        return tuple(settings.size)
    if last_size is not None:
        return last_size
    warnings.append(
        f"no reference image in the prompt: generating {DEFAULT_OUTPUT_SIZE[0]}x"
        f"{DEFAULT_OUTPUT_SIZE[1]} from text"
    )
    return DEFAULT_OUTPUT_SIZE


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
        grid = latent_grid(size)
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
