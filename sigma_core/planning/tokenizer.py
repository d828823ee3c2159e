"""Tokenizer helpers: SIGMA's tokens on any Hugging Face tokenizer, and a tiny offline one.

The real model uses Qwen2.5's tokenizer (151,665 entries). SIGMA appends its 15 attribute tokens
with ``add_tokens`` in a fixed order, so they take the next 15 ids (151665..151679). The tiny
tokenizer has the same file layout, the same special tokens and the same way of adding SIGMA's
tokens, so that tests and the offline preview exercise the real code paths without a download.

Two loaders: :func:`load_tokenizer` returns a ``transformers`` tokenizer (which imports torch,
about 1.5 s); :func:`load_fast_tokenizer` runs a Qwen2-layout folder, the tiny tokenizer
included, on the ``tokenizers`` library alone (:class:`SigmaTokenizer`, a few milliseconds) and
gives the same ids. Importing this module imports neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
    # The tokenizer's added and special tokens other than SIGMA's, by id: prompt text may not
    # contain them (an <|im_end|> or <|vision_start|> in the text would rewire the sequence).
    control: Mapping[int, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, embedding_rows: int | None = None) -> TokenIds:
        """The ids of ``tokenizer``, read once per tokenizer and size: ``get_vocab()`` costs
        ~0.1 s at Qwen2.5's 152K tokens and every plan asks (adding tokens changes the size,
        so a tokenizer that gains SIGMA's tokens is read again)."""
        try:
            size, ids = _IDS.get(tokenizer, (None, None))
        except TypeError:  # not weak-referenceable: read every time
            size, ids = None, None
        if ids is None or size != len(tokenizer):
            ids = cls._read(tokenizer)
            with contextlib.suppress(TypeError):
                _IDS[tokenizer] = (len(tokenizer), ids)
        if embedding_rows is not None:
            _check_rows(list(ids.attributes.values()), embedding_rows)
        return ids

    @classmethod
    def _read(cls, tokenizer: Any) -> TokenIds:
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
        im_start, im_end, vision_start, vision_end = (vocab[t] for t in MARKER_TOKENS)
        return cls(
            im_start,
            im_end,
            vision_start,
            vision_end,
            dict(zip(ATTRIBUTES, ids, strict=True)),
            control=control_tokens(tokenizer, vocab),
        )


# Each tokenizer's ids, with its size when read (see TokenIds.from_tokenizer).
_IDS: weakref.WeakKeyDictionary[Any, tuple[int, TokenIds]] = weakref.WeakKeyDictionary()


def control_tokens(tokenizer: Any, vocab: Mapping[str, int] | None = None) -> dict[int, str]:
    """Every added or special token of ``tokenizer`` except SIGMA's attribute tokens, by id.

    Read from what the tokenizer declares (``added_tokens_decoder``, ``all_special_tokens``,
    or a ``tokenizers.Tokenizer``'s ``get_added_tokens_decoder()``) plus Qwen2's special tokens
    and the four markers wherever the vocabulary has them, so that no tokenizer object can hide
    one.
    """
    vocab = tokenizer.get_vocab() if vocab is None else vocab
    out: dict[int, str] = {}
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    if decoder is None and hasattr(tokenizer, "get_added_tokens_decoder"):
        decoder = tokenizer.get_added_tokens_decoder()
    for i, token in dict(decoder or {}).items():
        out[int(i)] = str(getattr(token, "content", token))
    names = getattr(tokenizer, "all_special_tokens", None) or []
    out.update({vocab[t]: t for t in names if isinstance(t, str) and t in vocab})
    out.update({vocab[t]: t for t in (*QWEN2_SPECIAL_TOKENS, *MARKER_TOKENS) if t in vocab})
    for token in ATTRIBUTES:
        if vocab.get(token) is not None and out.get(vocab[token]) == token:
            del out[vocab[token]]
    return out


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
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        raise SigmaInputError(
            f"tokenizer: {path} has no tokenizer files (tokenizer.json, or vocab.json and "
            "merges.txt); pass the BAGEL checkpoint folder"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise SigmaInputError(f"tokenizer: cannot load a tokenizer from {path}: {e}") from None
    add_sigma_tokens(tok)
    return tok


def load_tiny_tokenizer() -> SigmaTokenizer:
    """The tiny offline tokenizer, written once into the user cache, run by ``tokenizers``
    alone (no transformers, no torch)."""
    tok = load_fast_tokenizer(cached_folder("tiny-tokenizer", make_tiny_tokenizer))
    if not isinstance(tok, SigmaTokenizer):  # the folder is ours: it is always a Qwen2 layout
        raise CheckpointError("tokenizer: the tiny tokenizer is not in Qwen2's layout")
    return tok


class SigmaTokenizer:
    """A Qwen2-layout tokenizer run by the ``tokenizers`` library alone.

    It has the part of the ``transformers`` tokenizer API that planning uses (``encode``,
    ``get_vocab``, ``add_tokens``, ``convert_tokens_to_ids``, ``decode``, ``len()``,
    ``added_tokens_decoder``, ``all_special_tokens``) and, for the folders that
    :func:`load_fast_tokenizer` accepts, gives the same ids as ``AutoTokenizer`` +
    :func:`add_sigma_tokens` for any text. Encoding is thread-safe.
    """

    def __init__(self, backend: Any, *, name_or_path: str = "", special: Iterable[str] = ()):
        self.backend_tokenizer = backend
        self.name_or_path = name_or_path
        self._special = tuple(special)
        self._vocab: dict[str, int] | None = None  # get_vocab() of Qwen2.5's takes 0.2 s

    def __repr__(self) -> str:
        return f"SigmaTokenizer({self.name_or_path!r}, {len(self)} entries)"

    def __len__(self) -> int:
        return len(self.get_vocab())

    def get_vocab(self) -> dict[str, int]:
        """Every token and its id, added tokens included (a fresh copy each call)."""
        if self._vocab is None:
            self._vocab = self.backend_tokenizer.get_vocab(with_added_tokens=True)
        return dict(self._vocab)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; Qwen2 adds nothing around a sequence either way."""
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def add_tokens(self, tokens: str | Iterable[str]) -> int:
        """Add plain (not special, normalized) tokens, as ``transformers``' ``add_tokens``."""
        batch = [tokens] if isinstance(tokens, str) else list(tokens)
        added = self.backend_tokenizer.add_tokens(batch)
        if self._vocab is not None:  # keep the cached vocabulary current, cheaply
            self._vocab.update({t: self.backend_tokenizer.token_to_id(t) for t in batch})
        return added

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int | None] | None:
        if isinstance(tokens, str):
            return self.backend_tokenizer.token_to_id(tokens)
        return [self.backend_tokenizer.token_to_id(t) for t in tokens]

    @property
    def added_tokens_decoder(self) -> dict[int, Any]:
        return self.backend_tokenizer.get_added_tokens_decoder()

    @property
    def all_special_tokens(self) -> list[str]:
        """The special tokens the folder's tokenizer_config.json names (eos, pad, ...)."""
        return list(self._special)


def load_fast_tokenizer(path: str | os.PathLike) -> Any:
    """A tokenizer from a local folder with SIGMA's tokens added if missing, without
    ``transformers`` (and so without torch) when it can.

    A folder in Qwen2's layout (Qwen2.5's own files, BAGEL's, the tiny tokenizer) gives a
    :class:`SigmaTokenizer` whose ids equal :func:`load_tokenizer`'s for any text: its
    ``tokenizer.json`` must describe exactly the pipeline ``transformers`` builds for a
    ``Qwen2Tokenizer`` (NFC, Qwen2's split pattern, byte-level BPE) with the added tokens its
    ``tokenizer_config.json`` declares. Any other folder goes through :func:`load_tokenizer`.
    """
    from tokenizers import Tokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise SigmaInputError(f"tokenizer: {folder} is not a folder with tokenizer files")
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:  # unreadable, not JSON, or refused by the Rust side (a plain Exception)
        return load_tokenizer(folder)
    if not (isinstance(config, dict) and _is_qwen2_layout(_summary(backend), config)):
        return load_tokenizer(folder)
    tok = SigmaTokenizer(backend, name_or_path=str(folder), special=_named_special(config))
    add_sigma_tokens(tok)
    return tok


def _summary(backend: Any) -> dict[str, Any]:
    """What the layout check reads of a ``tokenizers.Tokenizer``, in tokenizer.json's terms,
    taken from the parsed object (parsing a 7 MB file again in Python would cost 0.4 s)."""
    model = backend.model
    options: tuple[str, ...] = ("dropout", "unk_token", "byte_fallback", "ignore_merges")
    options += ("fuse_unk", "continuing_subword_prefix", "end_of_word_suffix")
    added = backend.get_added_tokens_decoder()
    return {
        "model": {"type": type(model).__name__, **{k: getattr(model, k, None) for k in options}},
        "vocab_size": backend.get_vocab_size(with_added_tokens=False),
        "normalizer": _state(backend.normalizer),
        "pre_tokenizer": _state(backend.pre_tokenizer),
        "added_tokens": [
            {"id": i, "content": t.content, **{f: getattr(t, f) for f in _TOKEN_FLAGS}}
            for i, t in added.items()
        ],
    }


def _state(component: Any) -> Any:
    """A normalizer's or pre-tokenizer's JSON, as tokenizer.json writes it."""
    return None if component is None else json.loads(component.__getstate__())


_QWEN2_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
_TOKEN_FLAGS = ("lstrip", "rstrip", "single_word", "normalized")


def _named_special(config: Mapping[str, Any]) -> list[str]:
    """The special tokens a tokenizer_config.json names: bos, eos, unk, pad and the extra ones."""
    names: list[Any] = [config.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = config.get(key)
        names += list(extra.values() if isinstance(extra, dict) else extra or [])
    out = [n.get("content") if isinstance(n, dict) else n for n in names]
    return list(dict.fromkeys(n for n in out if isinstance(n, str)))


def _is_qwen2_layout(spec: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether ``tokenizers`` alone runs this folder exactly as ``transformers`` would.

    transformers (5.x) rebuilds a ``Qwen2Tokenizer`` from the file's vocabulary and merges with
    a fixed normalizer and pre-tokenizer, and adds the tokens of ``added_tokens_decoder`` and
    the named special tokens; 4.x loads tokenizer.json as it is. Both equal the file when it
    has that pipeline and those added tokens, ids in order right after the vocabulary.
    """
    if config.get("tokenizer_class") not in _QWEN2_CLASSES or config.get("split_special_tokens"):
        return False
    return (
        _is_qwen2_bpe(spec.get("model") or {})
        and spec.get("normalizer") == {"type": "NFC"}
        and _qwen2_pre_tokenizer(spec.get("pre_tokenizer"), bool(config.get("add_prefix_space")))
        and _added_tokens_agree(spec, config)
    )


def _is_qwen2_bpe(model: Mapping[str, Any]) -> bool:
    """Byte-level BPE with none of the options transformers' Qwen2Tokenizer leaves off."""
    if model.get("type") != "BPE":
        return False
    off = ("dropout", "unk_token", "byte_fallback", "ignore_merges", "fuse_unk")
    empty = ("continuing_subword_prefix", "end_of_word_suffix")
    return not any(model.get(k) for k in (*off, *empty)) and model.get("dropout") is None


def _added_tokens_agree(spec: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """tokenizer.json's added tokens are the config's, with the same flags, numbered right after
    the vocabulary; the named special tokens are among them, neither stripped nor normalized."""
    added = {a.get("id"): a for a in spec.get("added_tokens") or []}
    declared = config.get("added_tokens_decoder") or {}
    base = spec["vocab_size"]
    if sorted(added) != list(range(base, base + len(added))) or len(declared) != len(added):
        return False
    for key, entry in declared.items():
        mine = added.get(int(key)) if str(key).isdigit() else None
        if mine is None or not isinstance(entry, dict) or entry.get("content") != mine["content"]:
            return False
        if any(bool(entry.get(f, False)) != bool(mine.get(f, False)) for f in _TOKEN_FLAGS):
            return False
    by_content = {a["content"]: a for a in added.values()}
    return all(
        name in by_content and not any(by_content[name].get(f) for f in _TOKEN_FLAGS)
        for name in _named_special(config)  # re-added by transformers: special, not normalized
    )


def _qwen2_pre_tokenizer(pre: Any, add_prefix_space: bool) -> bool:
    if not isinstance(pre, dict) or pre.get("type") != "Sequence":
        return False
    steps = pre.get("pretokenizers") or []
    if len(steps) != 2:
        return False
    split, byte_level = steps
    return (
        split.get("type") == "Split"
        and split.get("pattern") == {"Regex": _QWEN2_SPLIT}
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and byte_level.get("type") == "ByteLevel"
        and bool(byte_level.get("add_prefix_space")) == add_prefix_space
        and not byte_level.get("use_regex", True)
    )


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
