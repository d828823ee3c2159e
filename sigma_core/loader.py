"""Finding and loading BAGEL / SIGMA checkpoints in the official layout.

A checkpoint folder holds llm_config.json, vit_config.json, ema.safetensors, ae.safetensors and
Qwen2 tokenizer files. The model is built on the meta device and every tensor is read from
safetensors straight into its target dtype and device, so memory never holds a second copy.
Only the generation path is loaded; the ViT, its connector and lm_head are skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sigma_core.attributes import ATTRIBUTES
from sigma_core.errors import SigmaInputError
from sigma_core.model.bagel import ATTRIBUTE_EMBED_KEY, BagelGenerator
from sigma_core.model.config import LLMConfig
from sigma_core.model.mot import RotaryEmbedding

BAGEL_REPO = "ByteDance-Seed/BAGEL-7B-MoT"
BAGEL_SIZE = "about 29.3 GB (ema.safetensors 29.2 GB, ae.safetensors 0.3 GB, configs, tokenizer)"
WEIGHTS_FILE, AE_FILE, LLM_CONFIG_FILE = "ema.safetensors", "ae.safetensors", "llm_config.json"
PREVIEW_MARKER = "sigma_preview.json"  # written by make-tiny: the folder holds random weights
BASE_PATTERNS = ["*.json", "*.txt", WEIGHTS_FILE, AE_FILE]
SIGMA_PATTERNS = ["*.json", WEIGHTS_FILE]
# Checkpoint tensors that generation does not use.
SKIPPED_PREFIXES = ("vit_model.", "connector.", "vit_pos_embed.", "language_model.lm_head.")


class CheckpointError(SigmaInputError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


@dataclass
class LoadReport:
    """What a load read and skipped, for logs and tests."""

    loaded: int = 0
    skipped: list[str] = field(default_factory=list)
    overridden: int = 0  # base tensors replaced by the SIGMA weights
    attribute_embed: bool = False


def resolve_checkpoint(path_or_repo_id: str | os.PathLike, *, patterns: list[str]) -> Path:
    """A local folder as is, or a hub repo id through the standard cache (HF_HOME and
    HF_HUB_OFFLINE are honoured by huggingface_hub)."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(
            f"{text}: not a checkpoint folder (expected a folder with {LLM_CONFIG_FILE}, "
            f"{WEIGHTS_FILE} and {AE_FILE}, or a hub repo id such as {BAGEL_REPO})"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise CheckpointError(_download_hint(text)) from None
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"{text}: download failed ({e}). {_download_hint(text)}") from None


def _download_hint(repo: str) -> str:
    size = BAGEL_SIZE if repo == BAGEL_REPO else "see the repo page for its size"
    return (
        f"{repo} is not in the local Hugging Face cache and cannot be downloaded now (offline?). "
        f"Download it once with: hf download {repo} --include '*.json' '*.txt' "
        f"'*.safetensors' ({size}), or pass the path of a local folder."
    )


def read_llm_config(folder: Path) -> LLMConfig:
    return LLMConfig.from_file(folder / LLM_CONFIG_FILE)


def is_preview_checkpoint(folder: Path) -> bool:
    """Random-weight checkpoints say so in a marker file; nothing is guessed from names."""
    marker = folder / PREVIEW_MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("preview"))
    except (OSError, json.JSONDecodeError):
        return False


def load_generator(
    folder: Path,
    *,
    sigma_folder: Path | None = None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[BagelGenerator, LoadReport]:
    """Build on meta, then stream tensors from ema.safetensors (and the SIGMA override) into
    ``dtype`` on ``device``. Fails with names on any missing, unexpected or misshapen tensor."""
    from safetensors import safe_open

    cfg = read_llm_config(folder)
    sources = {k: folder / WEIGHTS_FILE for k in _keys(folder / WEIGHTS_FILE)}
    report = LoadReport()
    if sigma_folder is not None:
        for k in _keys(sigma_folder / WEIGHTS_FILE):
            report.overridden += k in sources
            sources[k] = sigma_folder / WEIGHTS_FILE
    report.attribute_embed = ATTRIBUTE_EMBED_KEY in sources
    with torch.device("meta"):
        model = BagelGenerator(cfg, attribute_embed=report.attribute_embed)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    unexpected = sorted(
        k for k in sources if k not in expected and not k.startswith(SKIPPED_PREFIXES)
    )
    missing = sorted(k for k in expected if k not in sources)
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_names(unexpected)}")
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for k, f in sources.items():
        if k in expected:
            by_file.setdefault(f, []).append(k)
        else:
            report.skipped.append(k)
    if not problems:
        for f, keys in by_file.items():
            with safe_open(str(f), framework="pt", device=str(device)) as fh:
                for k in keys:
                    shape = tuple(fh.get_slice(k).get_shape())
                    if shape != expected[k]:
                        problems.append(
                            f"{k}: checkpoint shape {list(shape)} but the model "
                            f"({LLM_CONFIG_FILE}) expects {list(expected[k])}"
                        )
                        continue
                    state[k] = fh.get_tensor(k).to(dtype=dtype)
    if problems:
        where = str(folder) + (f" + {sigma_folder}" if sigma_folder else "")
        raise CheckpointError(f"{where}: the weights do not fit the model:\n" + "\n".join(problems))
    model.load_state_dict(state, assign=True, strict=True)
    report.loaded = len(state)
    # Non-persistent buffers are not in the checkpoint: rebuild them on the target device.
    model.llm.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta).to(device)
    model.latent_pos_embed.pos_embed.requires_grad_(False)
    return model.eval(), report


def _keys(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _names(keys: Iterable[str], limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def check_sigma_token_ids(tokenizer: Any, vocab_rows: int) -> list[int]:
    """SIGMA's 15 tokens must have consecutive ids in SIGMA's order (151665..151679 on Qwen2.5),
    inside the embedding table. A mismatch would silently read the wrong rows, so it is fatal."""
    vocab = tokenizer.get_vocab()
    ids = [vocab.get(t) for t in ATTRIBUTES]
    if None in ids:
        raise CheckpointError(
            "tokenizer: SIGMA's attribute tokens are missing; load it with "
            "sigma_core.tokenizer.load_tokenizer"
        )
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise CheckpointError(
            f"tokenizer: SIGMA's tokens have ids {ids}, not consecutive in SIGMA's order; a SIGMA "
            "checkpoint expects <style> .. <select> as consecutive ids (151665..151679 on Qwen2.5)"
        )
    if ids[-1] >= vocab_rows:
        raise CheckpointError(
            f"tokenizer: <select> has id {ids[-1]}, outside the {vocab_rows}-row embedding table"
        )
    if vocab_rows == 152064 and ids[0] != 151665:
        raise CheckpointError(
            f"tokenizer: <style> has id {ids[0]}; with Qwen2.5's tokenizer SIGMA's tokens are "
            "151665..151679"
        )
    return ids
