"""Finding and loading BAGEL / SIGMA checkpoints in the official layout.

A checkpoint folder holds llm_config.json, vit_config.json, ema.safetensors, ae.safetensors and
Qwen2 tokenizer files. Every tensor's name and shape is checked from the file headers first;
then the model is built on the meta device and each tensor is read from safetensors straight
into its target dtype and device, so memory never holds a second copy. Only the generation path
is loaded; the ViT, its connector and lm_head are skipped. Loaded weights are frozen (no
gradients) and the modules are in eval mode.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sigma_core.errors import CheckpointError
from sigma_core.model.bagel import ATTRIBUTE_EMBED_KEY, BagelGenerator
from sigma_core.model.config import LLMConfig
from sigma_core.model.mot import RotaryEmbedding
from sigma_core.model.weights import check_tensors, header_shapes
from sigma_core.planning.tokenizer import TokenIds

BAGEL_REPO = "ByteDance-Seed/BAGEL-7B-MoT"
BAGEL_SIZE = "about 29.3 GB (ema.safetensors 29.2 GB, ae.safetensors 0.3 GB, configs, tokenizer)"
WEIGHTS_FILE, AE_FILE, LLM_CONFIG_FILE = "ema.safetensors", "ae.safetensors", "llm_config.json"
PREVIEW_MARKER = "sigma_preview.json"  # written by make-tiny: the folder holds random weights
BASE_PATTERNS = ["*.json", "*.txt", WEIGHTS_FILE, AE_FILE]
SIGMA_PATTERNS = ["*.json", WEIGHTS_FILE]
# Checkpoint tensors that generation does not use.
SKIPPED_PREFIXES = ("vit_model.", "connector.", "vit_pos_embed.", "language_model.lm_head.")


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
    text = str(path_or_repo_id)
    try:
        if path.is_dir():
            return path
        exists = path.exists()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte ...
        reason = getattr(e, "strerror", None) or e
        raise CheckpointError(f"{text[:80]!r}: not a usable path ({reason})") from None
    if exists or text.startswith((".", "/", "~")) or text.count("/") != 1:
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
    tokenizer: Any,
    *,
    sigma_folder: Path | None = None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[BagelGenerator, LoadReport]:
    """Check, then stream ema.safetensors (and the SIGMA override) into ``dtype`` on ``device``.

    ``tokenizer`` must agree with the embedding table (SIGMA's token ids); its vision marker
    ids frame every latent block. Fails with names on any missing, unexpected or misshapen
    tensor, before reading one.
    """
    cfg = LLMConfig.from_file(folder / LLM_CONFIG_FILE)
    ids = TokenIds.from_tokenizer(tokenizer, embedding_rows=cfg.vocab_size)
    files = [folder / WEIGHTS_FILE] + ([sigma_folder / WEIGHTS_FILE] if sigma_folder else [])
    shapes: dict[str, tuple[int, ...]] = {}
    sources: dict[str, Path] = {}
    report = LoadReport()
    for path in files:  # later files override earlier ones
        for key, shape in header_shapes(path).items():
            report.overridden += key in sources
            shapes[key], sources[key] = shape, path
    report.skipped = [k for k in shapes if k.startswith(SKIPPED_PREFIXES)]
    report.attribute_embed = ATTRIBUTE_EMBED_KEY in shapes
    with torch.device("meta"):
        model = BagelGenerator(
            cfg,
            attribute_embed=report.attribute_embed,
            vision_token_ids=(ids.vision_start, ids.vision_end),
        )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    used = {k: s for k, s in shapes.items() if not k.startswith(SKIPPED_PREFIXES)}
    where = str(folder) + (f" + {sigma_folder}" if sigma_folder else "")
    check_tensors(used, expected, source=where, hint=f"(the model's sizes: {LLM_CONFIG_FILE})")

    state: dict[str, torch.Tensor] = {}
    for path in files:
        keys = [k for k in used if sources[k] == path]
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            state |= {k: fh.get_tensor(k).to(dtype=dtype) for k in keys}
    model.load_state_dict(state, assign=True, strict=True)
    report.loaded = len(state)
    # Non-persistent buffers are not in the checkpoint: rebuild them on the target device.
    model.llm.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta).to(device)
    return model.requires_grad_(False).eval(), report
