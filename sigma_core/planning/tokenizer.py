"""Tokenizer helpers: SIGMA's tokens on any Hugging Face tokenizer, and a tiny offline one.

The real model uses Qwen2.5's tokenizer (151,665 entries). SIGMA appends its 15 attribute tokens
with ``add_tokens`` in a fixed order, so they take the next 15 ids (151665..151679). The tiny
tokenizer has the same file layout, the same special tokens and the same way of adding SIGMA's
tokens, so that tests and the offline preview exercise the real code paths without a download.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigma_core.errors import CheckpointError, SigmaInputError
from sigma_core.inputs.attributes import ATTRIBUTES, DESCRIPTIONS
from sigma_core.user_cache import cached_folder

# Qwen2.5's added tokens, in id order (151643..151664 in the real tokenizer).
QWEN2_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
_QWEN2_NON_SPECIAL = {"<tool_call>", "</tool_call>"} | {
    t
    for t in QWEN2_SPECIAL_TOKENS
    if t.startswith("<|fim") or t in ("<|repo_name|>", "<|file_sep|>")
}
# Qwen2's pre-tokenizer split pattern (from its tokenizer.json).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN25_BASE_VOCAB = 151_643  # entries before the special tokens in Qwen2.5
# SIGMA appends its tokens right after Qwen2.5's specials: <style> is 151665, <select> 151679.
QWEN25_SIGMA_FIRST_ID = QWEN25_BASE_VOCAB + len(QWEN2_SPECIAL_TOKENS)
QWEN25_EMBEDDING_ROWS = 152_064  # BAGEL's embedding table, rounded up past the tokenizer
MARKER_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")


@dataclass(frozen=True)
class TokenIds:
    """The ids of the marker and attribute tokens in one tokenizer, checked once.

    This is the one place a tokenizer is checked against SIGMA: every marker and attribute token
    must exist, SIGMA's 15 tokens must have consecutive ids in SIGMA's order (a SIGMA checkpoint
    reads its rows that way) and, given the model's embedding rows, fall inside the table.
    """

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    attributes: dict[str, int]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, embedding_rows: int | None = None) -> TokenIds:
        vocab = tokenizer.get_vocab()
        missing = [t for t in (*MARKER_TOKENS, *ATTRIBUTES) if t not in vocab]
        if missing:
            hint = (
                "load it with sigma_core.planning.load_tokenizer, or call "
                "sigma_core.planning.add_sigma_tokens(tokenizer) first"
                if all(t in ATTRIBUTES for t in missing)
                else "use a Qwen2 tokenizer"
            )
            raise CheckpointError(f"tokenizer: missing tokens {', '.join(missing)}; {hint}")
        ids = [vocab[t] for t in ATTRIBUTES]
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise CheckpointError(
                f"tokenizer: SIGMA's tokens have ids {ids}, not consecutive in SIGMA's order; a "
                "SIGMA checkpoint expects <style> .. <select> as consecutive ids "
                f"({_qwen25_range()} on Qwen2.5)"
            )
        if embedding_rows is not None:
            _check_rows(ids, embedding_rows)
        return cls(*(vocab[t] for t in MARKER_TOKENS), dict(zip(ATTRIBUTES, ids, strict=True)))


def _qwen25_range() -> str:
    return f"{QWEN25_SIGMA_FIRST_ID}..{QWEN25_SIGMA_FIRST_ID + len(ATTRIBUTES) - 1}"


def _check_rows(ids: list[int], rows: int) -> None:
    """SIGMA's ids inside the embedding table, and at Qwen2.5's ids on Qwen2.5's table."""
    if ids[-1] >= rows:
        raise CheckpointError(
            f"tokenizer: <select> has id {ids[-1]}, outside the {rows}-row embedding table"
        )
    if rows == QWEN25_EMBEDDING_ROWS and ids[0] != QWEN25_SIGMA_FIRST_ID:
        raise CheckpointError(
            f"tokenizer: <style> has id {ids[0]}; with Qwen2.5's tokenizer SIGMA's tokens are "
            f"{_qwen25_range()}"
        )


def add_sigma_tokens(tokenizer: Any) -> list[int]:
    """Add SIGMA's attribute tokens that are missing, in SIGMA's order, and return all 15 ids.

    Exactly what SIGMA's ``add_special_tokens`` does (plain ``add_tokens``), so ids match a
    SIGMA checkpoint when the base tokenizer is the same.
    """
    vocab = tokenizer.get_vocab()
    for token in ATTRIBUTES:
        if token not in vocab:
            tokenizer.add_tokens([token])
            vocab = tokenizer.get_vocab()
    return [vocab[t] for t in ATTRIBUTES]


def load_tokenizer(path: str | os.PathLike) -> Any:
    """A Hugging Face tokenizer from a local folder, with SIGMA's tokens added if missing."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise SigmaInputError(f"tokenizer: {path} is not a folder with tokenizer files")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise SigmaInputError(f"tokenizer: cannot load a tokenizer from {path}: {e}") from None
    add_sigma_tokens(tok)
    return tok


def load_tiny_tokenizer() -> Any:
    """The tiny offline tokenizer, written once into the user cache."""
    return load_tokenizer(cached_folder("tiny-tokenizer", make_tiny_tokenizer))


def make_tiny_tokenizer(
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 512,
    pad_base_vocab_to: int | None = None,
    with_sigma_tokens: bool = True,
) -> Path:
    """Write a small byte-level BPE tokenizer as Qwen2 tokenizer files.

    ``pad_base_vocab_to`` fills the base vocabulary with unused entries up to that size (use
    :data:`QWEN25_BASE_VOCAB` to reproduce Qwen2.5's ids for the special and SIGMA tokens).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)

    model = json.loads(tok.to_str())
    vocab: dict[str, int] = model["model"]["vocab"]
    if pad_base_vocab_to is not None:
        if pad_base_vocab_to < len(vocab):
            raise ValueError(f"pad_base_vocab_to={pad_base_vocab_to} < base vocab {len(vocab)}")
        for i in range(len(vocab), pad_base_vocab_to):
            vocab[f"\u0100unused{i}"] = i
    tok = Tokenizer.from_str(json.dumps(model))
    for t in QWEN2_SPECIAL_TOKENS:
        tok.add_special_tokens(
            [AddedToken(t, special=t not in _QWEN2_NON_SPECIAL, normalized=False)]
        )
    if with_sigma_tokens:
        # as transformers' add_tokens does: not special, normalized
        tok.add_tokens([AddedToken(t, special=False, normalized=True) for t in ATTRIBUTES])
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, as Qwen2 ships them

    added = json.loads(tok.to_str())["added_tokens"]
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(a["id"]): {
                k: a[k]
                for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
            }
            for a in added
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


_CORPUS = [
    *DESCRIPTIONS.values(),
    "Position the kangaroo in the scene next to the woman with brown hair from the photo.",
    "Transform the man into a sketched illustration in the style of the painting.",
    "Isolate the first person from the left and place them on a sandy beach at sunset.",
    "A cat sitting on a red chair in a bright room, photographed from above.",
    "The astronaut holds a cup of coffee while a rocket launches in the background.",
    "Combine the face, the dog and the landscape into one picture with soft lighting.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>-_/",
]
