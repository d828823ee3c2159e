"""From a composition to the interleaved token plan the model reads.

SIGMA's input is H = [T_1; I_1; T_2; I_2; ...]: text segments and reference image blocks in the
order the prompt places them, then the generated (noise) image block. A training row whose prompt
places the target itself has the noise block there instead (``target_slot``). The plan records, for
every token, its type, group, BAGEL position id and expert, which is all the mask and the engine
need. Splitting and packing follow SIGMA's training code exactly (``change_format``), so token ids
match the official implementation.

Where each reference's blocks sit in rope, and whether SIGMA's phantom ViT block follows its VAE
block, is the plan's layout (:mod:`sigma_core.planning.layout`).

The plan is compact: its segments carry their token ids (text) and sizes (blocks), and the
per-token tensors are built from them on first use. Planning, and this module, do not import
torch; the tensors do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import numpy as np

from sigma_core.errors import PromptError
from sigma_core.geometry import DEFAULT_OUTPUT_SIZE, latent_grid, vae_size
from sigma_core.inputs.attributes import find_attribute_tokens
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.prompt import Piece, is_raw, split_prompt
from sigma_core.inputs.settings import Layout, Settings, resolve_layout
from sigma_core.limits import MAX_PLAN_TOKENS, MAX_POSITIONS
from sigma_core.planning.layout import phantom_bias, vit_grid, vit_size
from sigma_core.planning.tokenizer import TokenIds

if TYPE_CHECKING:
    import torch


LATENT_ID = -1  # token id of a VAE latent token (its input comes from the latent)
ZERO_INPUT_ID = -2  # token id of a phantom ViT token (its input is exactly zero)


class TokenType(IntEnum):
    """The paper's token types, plus NOISE for the generated block."""

    TEXT = 0
    SPECIAL = 1  # an attribute token
    IMAGE = 2  # a latent token of a reference image, or its phantom ViT token
    PLAIN = 3  # <|im_start|> <|im_end|> <|vision_start|> <|vision_end|>
    NOISE = 4  # a latent token of the image being generated


class Expert(IntEnum):
    """Which MoT expert a token runs through."""

    UND = 0  # understanding: text and markers
    GEN = 1  # generation: VAE latent tokens, clean or noised


_T = TypeVar("_T")


@dataclass(frozen=True)
class Segment:
    """A contiguous run of tokens: a packed text piece, a reference image block, a phantom ViT
    block or the noise block. Blocks include their two vision markers.

    A segment holds all that its per-token data follows from: a text segment its token ids
    (``<|im_start|> ... <|im_end|>``), the offsets of its attribute tokens and the group they
    bind to; a block its two marker ids, grid and group. A phantom block's ``size`` and
    ``grid`` are the ViT's (patches of 14 px): it stands for rows * cols zero-input tokens,
    held by its ``length - 2`` inside tokens (one, compact; all, literal).
    """

    kind: Literal["text", "image", "phantom", "noise"]
    start: int
    length: int
    position: int  # rope position of the first token (shared by a whole image block)
    text: str = ""
    slot: int | None = None
    group: int = -1  # image blocks: the reference occurrence; text: its attribute tokens' group
    attributes: tuple[str, ...] = ()  # attribute tokens bound to this image block
    size: tuple[int, int] | None = None  # (width, height) after BAGEL's VAE resize
    grid: tuple[int, int] | None = None  # (rows, cols) of latent tokens
    # text: every token id, markers included; blocks: the ids of the two vision markers
    token_ids: tuple[int, ...] = field(default=(), repr=False)
    attribute_offsets: tuple[int, ...] = ()  # text: where its attribute tokens are, from start

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def phantom_tokens(self) -> int:
        """N, the zero-input tokens a phantom block stands for (0 for other segments)."""
        return self.grid[0] * self.grid[1] if self.kind == "phantom" and self.grid else 0

    @property
    def last_position(self) -> int:
        """The rope position of the segment's last token."""
        return self.position + (self.length - 1 if self.kind == "text" else 0)

    # A block always has a size and a grid, a reference block its slot; text has none. These
    # give them typed, and name the segment where one is asked for on the wrong kind.

    @property
    def block_size(self) -> tuple[int, int]:
        """(width, height) of a block."""
        return _given(self.size, self, "size")

    @property
    def block_grid(self) -> tuple[int, int]:
        """(rows, cols) of a block's tokens."""
        return _given(self.grid, self, "grid")

    @property
    def block_slot(self) -> int:
        """The slot a reference block (image or phantom) shows."""
        return _given(self.slot, self, "slot")


def _given(value: _T | None, seg: Segment, name: str) -> _T:
    if value is None:
        raise ValueError(f"a {seg.kind} segment at {seg.start} has no {name}")
    return value


@dataclass(frozen=True)
class Plan:
    """The interleaved sequence: segments, and per-token tensors of length L built from them
    on first use (``token_ids``, ``token_type``, ``group``, ``position_ids``, ``expert``)."""

    segments: list[Segment]
    output_size: tuple[int, int]  # (width, height) of the generated image
    mask: bool = True  # whether SIGMA's intra-group mask applies
    layout: str = "inference"  # a name in sigma_core.inputs.settings.LAYOUTS
    raw_prompt: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.segments[-1].end if self.segments else 0

    @property
    def num_groups(self) -> int:
        """Image placements (groups); a slot placed twice counts twice."""
        return sum(1 for s in self.segments if s.kind == "image")

    @property
    def num_references(self) -> int:
        """Distinct reference slots placed; a slot placed twice counts once."""
        return len({s.slot for s in self.segments if s.kind == "image"})

    @property
    def max_position(self) -> int:
        """The largest rope position in the plan (-1 when empty)."""
        return max((s.last_position for s in self.segments), default=-1)

    @property
    def noise(self) -> Segment:
        """The generated block: last, except in a training plan that places the target."""
        return next(s for s in reversed(self.segments) if s.kind == "noise")

    @property
    def token_ids(self) -> torch.Tensor:
        """int64 [L]; LATENT_ID (-1) for latent tokens, ZERO_INPUT_ID (-2) for phantom ones."""
        return self._tensors[0]

    @property
    def token_type(self) -> torch.Tensor:
        """int8 [L]; TokenType."""
        return self._tensors[1]

    @property
    def group(self) -> torch.Tensor:
        """int32 [L]; -1 for tokens outside any group."""
        return self._tensors[2]

    @property
    def position_ids(self) -> torch.Tensor:
        """int64 [L]."""
        return self._tensors[3]

    @property
    def expert(self) -> torch.Tensor:
        """int8 [L]; Expert."""
        return self._tensors[4]

    @property
    def key_bias(self) -> torch.Tensor:
        """float32 [L]; added to every attention logit on that key: ln N at a compact phantom
        token, 0 elsewhere (see :mod:`sigma_core.planning.layout`)."""
        return self._tensors[5]

    @property
    def has_key_bias(self) -> bool:
        """Whether any key carries a bias (a compact phantom block), known from the segments."""
        return any(s.kind == "phantom" and s.length - 2 < s.phantom_tokens for s in self.segments)

    @cached_property
    def arrays(self) -> PerToken:
        """The per-token data as numpy arrays, built from the segments on first use (no torch);
        the tensor properties share their memory."""
        return _per_token_arrays(self.segments)

    @cached_property
    def _tensors(self) -> tuple[torch.Tensor, ...]:
        import torch

        return tuple(torch.from_numpy(a) for a in self.arrays)


class PerToken(NamedTuple):
    """A plan's per-token data, each an array of length L."""

    token_ids: np.ndarray  # int64; LATENT_ID for latent tokens, ZERO_INPUT_ID for phantom ones
    token_type: np.ndarray  # int8; TokenType
    group: np.ndarray  # int32; -1 outside any group
    position_ids: np.ndarray  # int64
    expert: np.ndarray  # int8; Expert
    key_bias: np.ndarray  # float32; the attention logit bias of each key (phantom tokens)


def _per_token_arrays(segments: list[Segment]) -> PerToken:
    """token_ids, token_type, group, position_ids and expert of the whole sequence."""
    n = sum(s.length for s in segments)
    out = PerToken(
        np.full(n, LATENT_ID, dtype=np.int64),
        np.empty(n, dtype=np.int8),
        np.full(n, -1, dtype=np.int32),
        np.empty(n, dtype=np.int64),
        np.empty(n, dtype=np.int8),
        np.zeros(n, dtype=np.float32),
    )
    for seg in segments:
        blk = slice(seg.start, seg.end)
        if seg.kind == "text":
            # <|im_start|> text <|im_end|>: causal, understanding expert, +1 position per token
            out.token_ids[blk] = seg.token_ids
            out.token_type[blk] = TokenType.TEXT
            special = seg.start + np.asarray(seg.attribute_offsets, dtype=np.int64)
            out.token_type[special] = TokenType.SPECIAL
            out.group[special] = seg.group
            out.position_ids[blk] = np.arange(seg.position, seg.position + seg.length)
            out.expert[blk] = Expert.UND
        elif seg.kind == "phantom":
            # <|vision_start|> zero-input tokens <|vision_end|>: one rope position, und expert
            inside = slice(seg.start + 1, seg.end - 1)
            out.token_ids[inside] = ZERO_INPUT_ID
            out.token_ids[[seg.start, seg.end - 1]] = seg.token_ids
            out.token_type[inside] = TokenType.IMAGE
            out.group[inside] = seg.group
            out.position_ids[blk] = seg.position
            out.expert[blk] = Expert.UND
            out.key_bias[inside] = phantom_bias(seg.phantom_tokens, seg.length - 2)
        else:
            # <|vision_start|> + h*w latent tokens + <|vision_end|>, all at one rope position
            out.token_ids[[seg.start, seg.end - 1]] = seg.token_ids
            out.token_type[blk] = TokenType.IMAGE if seg.kind == "image" else TokenType.NOISE
            out.group[seg.start + 1 : seg.end - 1] = seg.group
            out.position_ids[blk] = seg.position
            out.expert[blk] = Expert.GEN
            out.expert[[seg.start, seg.end - 1]] = Expert.UND
        out.token_type[[seg.start, seg.end - 1]] = TokenType.PLAIN
    return out


def build_plan(
    composition: Composition,
    tokenizer: Any,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
    *,
    max_positions: int = MAX_POSITIONS,
    resize: Callable[[int, int], tuple[int, int]] = vae_size,
    weights_layout: str | None = None,
    target_slot: int | None = None,
) -> Plan:
    """Build the interleaved plan.

    ``image_sizes`` maps slot -> (width, height) of the source image (after crop); when omitted
    the images are read. Block sizes follow ``resize`` of those sizes: BAGEL's VAE resize, or
    the trainer's own bounds; phantom ViT blocks follow SIGMA's ViT resize of the same sizes.
    The layout is the settings' (``weights_layout`` is what "auto" resolves to: the layout the
    weights were trained in, when known).

    ``target_slot`` (training) is the slot number of the target image (SIGMA: the last of a
    row's images). Where the prompt first places it, the noise block goes, as SIGMA's packer
    does; it takes no rope position (see :func:`_placed_target`). Later placements of it are
    dropped (SIGMA adds a noise block at each one).

    A plan longer than ``MAX_PLAN_TOKENS`` tokens, or whose rope positions reach
    ``max_positions`` (the model's ``max_position_embeddings``), is refused with a
    :class:`PromptError` before any per-token data is built. So is prompt text that tokenizes
    to one of the tokenizer's control tokens (``<|im_end|>``, ``<tool_call>`` ...).
    """
    if image_sizes is None:
        image_sizes = {slot: im.size for slot, im in composition.load_images().items()}
    ids = TokenIds.from_tokenizer(tokenizer)
    raw, warnings = composition.raw_prompt()
    pieces = split_prompt(raw)
    if not pieces:
        raise PromptError("prompt: is empty; describe the image and place references with [1]")
    next_group = _next_groups(pieces, target_slot)
    text_ids, group_attrs = _bind_attributes(pieces, next_group, tokenizer, ids)

    layout = resolve_layout(composition.settings.layout, weights_layout)
    b = _Builder(ids, layout)
    last_size: tuple[int, int] | None = None
    target_at: tuple[int, int] | None = None  # (segment index, rope position) of the target
    for i, piece in enumerate(pieces):
        if piece.kind == "text":
            b.text(text_ids[i], piece.text, next_group[i])
            continue
        if piece.slot == target_slot:
            target_at = target_at or (len(b.segments), b.pos)
            continue
        ref = composition.placed_reference(piece.slot, f"<image_{piece.slot}>")
        if piece.slot not in image_sizes:
            raise PromptError(f"references[slot {piece.slot}]: no image size is known")
        last_size = resize(*image_sizes[piece.slot])
        given = tuple(group_attrs[b.num_groups])
        warnings += _attribute_warnings(
            piece.slot, ref.attributes, given, is_raw(composition.prompt)
        )
        b.reference(last_size, image_sizes[piece.slot], slot=piece.slot, attributes=given)

    out_size = _output_size(composition.settings, last_size, warnings)
    b.image_block("noise", out_size)
    segments = b.segments if target_at is None else _placed_target(b.segments, *target_at)
    check_bounds(segments, max_positions=max_positions)
    used = {p.slot for p in pieces if p.kind == "image"}
    warnings += [
        f"slot {ref.slot} has an image but the prompt never uses it; add [{ref.slot}] "
        f"or <image_{ref.slot}> to the prompt"
        for ref in composition.references
        if ref.image is not None and ref.slot not in used
    ]
    return Plan(
        segments,
        output_size=out_size,
        mask=composition.settings.mask,
        layout=layout.name,
        raw_prompt=raw,
        warnings=warnings,
    )


def check_bounds(segments: list[Segment], *, max_positions: int = MAX_POSITIONS) -> None:
    """Refuse a sequence over ``MAX_PLAN_TOKENS`` tokens or with a rope position at or past
    ``max_positions``; the message names the limit and the value."""
    tokens = sum(s.length for s in segments)
    if tokens > MAX_PLAN_TOKENS:
        raise PromptError(
            f"prompt: the sequence needs {tokens:,} tokens, over the limit of "
            f"{MAX_PLAN_TOKENS:,}; use fewer or smaller references or a shorter prompt"
        )
    positions = max((s.last_position for s in segments), default=-1) + 1
    if positions > max_positions:
        raise PromptError(
            f"prompt: the sequence needs {positions:,} rope positions, over the model's limit "
            f"of {max_positions:,} (max_position_embeddings); use a shorter prompt or fewer "
            "references"
        )


def _placed_target(segments: list[Segment], at: int, position: int) -> list[Segment]:
    """The segments with the noise block (built last) moved to index ``at``, at rope
    ``position``. SIGMA's packer (PackedDataset.pack_sequence) gives a loss-carrying block the
    current rope position without advancing it, and BAGEL's mask lets only the block itself
    see it; so what follows keeps its rope position and only moves along by the block."""
    *rest, noise = segments
    start = rest[at - 1].end if at else 0
    moved = dataclasses.replace(noise, start=start, position=position)
    after = [dataclasses.replace(s, start=s.start + noise.length) for s in rest[at:]]
    return [*rest[:at], moved, *after]


def _next_groups(pieces: list[Piece], target_slot: int | None) -> list[int]:
    """For each piece, the group of the next image piece (group g is the g-th reference
    placement), or -1: none follows, or the next is the target, which is no reference."""
    n_images = sum(p.kind == "image" and p.slot != target_slot for p in pieces)
    out = [-1] * len(pieces)
    upcoming, seen = -1, 0
    for i in reversed(range(len(pieces))):
        if pieces[i].kind == "image" and pieces[i].slot == target_slot:
            upcoming = -1
        elif pieces[i].kind == "image":
            seen += 1
            upcoming = n_images - seen
        out[i] = upcoming
    return out


def tokenize_text(text: str, tokenizer: Any, ids: TokenIds) -> list[int]:
    """The token ids of one text piece (without its markers), refusing control tokens.

    Only SIGMA's attribute tokens may come out of prompt text as added tokens: any other added
    or special token of the tokenizer (``<|im_end|>``, ``<|vision_start|>``, ``<|endoftext|>``,
    ``<tool_call>`` ...) would rewire the sequence, so it is refused by name.
    """
    body = list(tokenizer.encode(text, add_special_tokens=False))
    bad = next((t for t in body if t in ids.control), None)
    if bad is not None:
        raise PromptError(
            f"prompt: {ids.control[bad]!r} is a control token of the tokenizer; prompts cannot "
            "contain it (it would be read as a sequence marker, not as text)"
        )
    return body


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
        body = tokenize_text(piece.text, tokenizer, ids)
        found = [attr_of_id[t] for t in body if t in attr_of_id]
        if found != [m.group(0) for m in find_attribute_tokens(piece.text)]:
            raise PromptError(
                f"tokenizer: the attribute tokens in {piece.text!r} did not tokenise as single "
                "tokens; load the tokenizer with sigma_core.planning.load_tokenizer"
            )
        if found and next_group[i] < 0:
            raise PromptError(
                f"prompt: {', '.join(found)} in {piece.text!r} is not followed by a reference "
                "image; put the attribute right before its image: '<style> the painting "
                "<image_2>' or [2]"
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
        return settings.size
    if last_size is not None:
        return last_size
    warnings.append(
        f"no reference image in the prompt: generating {DEFAULT_OUTPUT_SIZE[0]}x"
        f"{DEFAULT_OUTPUT_SIZE[1]} from text"
    )
    return DEFAULT_OUTPUT_SIZE


class _Builder:
    """Appends segments, tracking offset and rope position."""

    def __init__(self, ids: TokenIds, layout: Layout) -> None:
        self.ids, self.layout = ids, layout
        self.special = set(ids.attributes.values())
        self.segments: list[Segment] = []
        self.start = self.pos = self.num_groups = 0

    def _add(self, seg: Segment, *, advance: int) -> None:
        self.segments.append(seg)
        self.start += seg.length
        self.pos += advance

    def text(self, tok_ids: list[int], text: str, group: int) -> None:
        """<|im_start|> text <|im_end|>: causal, understanding expert, +1 position per token."""
        n = len(tok_ids)
        at = tuple(k for k in range(1, n - 1) if tok_ids[k] in self.special)
        seg = Segment(
            "text",
            self.start,
            n,
            self.pos,
            text=text,
            group=group if at else -1,
            token_ids=tuple(tok_ids),
            attribute_offsets=at,
        )
        self._add(seg, advance=n)

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
        seg = Segment(
            kind,
            self.start,
            grid[0] * grid[1] + 2,
            self.pos,
            slot=slot,
            group=group,
            attributes=attributes,
            size=(w, h),
            grid=grid,
            token_ids=(self.ids.vision_start, self.ids.vision_end),
        )
        self._add(seg, advance=1)
        if kind == "image":
            self.num_groups += 1

    def reference(
        self,
        size: tuple[int, int],
        source_size: tuple[int, int],
        *,
        slot: int,
        attributes: tuple[str, ...],
    ) -> None:
        """A reference as the layout lays it out: its VAE block of ``size`` at rope p, then in
        the training layouts the phantom ViT block (of ``source_size`` resized for the ViT) or
        a rope hole at p + 1."""
        group = self.num_groups
        self.image_block("image", size, slot=slot, group=group, attributes=attributes)
        if self.layout.phantom:
            w, h = vit_size(*source_size)
            seg = Segment(
                "phantom",
                self.start,
                3,
                self.pos,
                slot=slot,
                group=group,
                size=(w, h),
                grid=vit_grid(*source_size),
                token_ids=(self.ids.vision_start, self.ids.vision_end),
            )
            self._add(seg, advance=1)
        elif self.layout.rope_per_reference > 1:
            self.pos += self.layout.rope_per_reference - 1
