"""Finding and loading BAGEL / SIGMA checkpoints in the official layout.

A checkpoint folder holds llm_config.json, vit_config.json, ema.safetensors, ae.safetensors and
Qwen2 tokenizer files. Every tensor's name and shape is checked from the file headers first;
then the model is built on the meta device and each tensor is read from safetensors straight
into its target dtype and device, so memory never holds a second copy. Only the generation path
is loaded; the ViT, its connector and lm_head are skipped. Quantized modes
(sigma_core.model.precision) quantize each weight as it is read; a device map
(sigma_core.runtime.placement) sends each module's tensors to its own device. Loaded weights are
frozen (no gradients) and the modules are in eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sigma_core.errors import CheckpointError, SigmaInputError
from sigma_core.inputs.records import Anything, Bool, Int, Map, Maybe, Obj, Seq, Str, read_record
from sigma_core.inputs.settings import LAYOUTS, check_layout_name
from sigma_core.model.bagel import ATTRIBUTE_EMBED_KEY, BagelGenerator
from sigma_core.model.config import LLMConfig
from sigma_core.model.modes import TRAINABLE, VAE_DTYPES
from sigma_core.model.mot import RotaryEmbedding
from sigma_core.model.precision import (
    DTYPES,
    Precision,
    by_layer,
    finish_layer,
    layer_of,
    place_tensor,
    precision_name,
    resolve_precision,
    swap_linears,
)
from sigma_core.model.vae import FluxVAE
from sigma_core.model.weights import check_tensors, header_shapes
from sigma_core.planning.tokenizer import TokenIds, load_tokenizer
from sigma_core.runtime.device import resolve_device
from sigma_core.runtime.output import out_of_memory
from sigma_core.runtime.placement import (
    auto_device_map,
    check_offload,
    module_device,
    spread_layers,
)
from sigma_core.runtime.references import LATENT_CACHE_BYTES, check_cache_bytes

BAGEL_REPO = "ByteDance-Seed/BAGEL-7B-MoT"
BAGEL_SIZE = "about 29.3 GB (ema.safetensors 29.2 GB, ae.safetensors 0.3 GB, configs, tokenizer)"
WEIGHTS_FILE, AE_FILE, LLM_CONFIG_FILE = "ema.safetensors", "ae.safetensors", "llm_config.json"
PREVIEW_MARKER = "sigma_preview.json"  # written by make-tiny: the folder holds random weights
TRAINING_META_FILE = "sigma_training.json"  # written by export with weights trained here
TRAINING_FORMAT = "sigma-studio-training"
BASE_PATTERNS = ["*.json", "*.txt", WEIGHTS_FILE, AE_FILE]
SIGMA_PATTERNS = ["*.json", WEIGHTS_FILE]
# Checkpoint tensors that generation does not use.
SKIPPED_PREFIXES = ("vit_model.", "connector.", "vit_pos_embed.", "language_model.lm_head.")
LAYER_PREFIX = "language_model.model.layers."

# The schemas of the files SIGMA Studio writes beside weights (sigma_core.inputs.records).
PREVIEW_RECORD = Obj({"preview": Bool(), "seed": Int(), "note": Str()}, optional=("seed", "note"))
# Rows a training run skipped, by reason: how many, and the first.
SKIPPED_ROWS = Map(Obj({"count": Int(1), "first": Str()}))
TRAINING_RECORD = Obj(
    {
        "format": Str((TRAINING_FORMAT,)),
        "base": Str(),
        "sigma_weights": Maybe(Str()),
        "data": Seq(Str()),
        "steps": Int(),
        "train": Str(TRAINABLE),
        "mask": Bool(),
        "attribute_projection": Bool(),
        "layout": Str(tuple(LAYOUTS)),
        "weights": Str(("ema", "raw")),
        "skipped_rows": SKIPPED_ROWS,
        "skipped_total": Int(),
        "config": Map(Anything()),  # the run's config, for people: nothing here reads it
    }
)


@dataclass
class LoadReport:
    """What a load read and skipped, for logs and tests."""

    loaded: int = 0
    skipped: list[str] = field(default_factory=list)
    overridden: int = 0  # base tensors replaced by the SIGMA weights
    attribute_embed: bool = False


@dataclass(frozen=True)
class LoadOptions:
    """How a checkpoint loads, every choice checked against this machine before a byte is
    read (the arguments of :meth:`~sigma_core.runtime.pipeline.SigmaPipeline.from_pretrained`).
    """

    device: torch.device
    precision: Precision
    vae_dtype: str = "fp32"
    offload: str = "none"
    device_map: str | dict[str, str] | None = None  # "auto" or {module prefix: device}
    compile: bool = False
    layout: str | None = None  # what "auto" runs in; None: the weights' trained layout
    latent_cache_bytes: int = LATENT_CACHE_BYTES  # the bound of the references' latent cache

    @classmethod
    def check(
        cls,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
        dtype: torch.dtype | None = None,
        vae_dtype: str = "fp32",
        offload: str = "none",
        device_map: str | dict[str, str] | None = None,
        compile: bool = False,
        layout: str | None = None,
        latent_cache_bytes: int = LATENT_CACHE_BYTES,
    ) -> LoadOptions:
        """The options, or a SigmaInputError naming the first one this machine cannot run."""
        where = resolve_device(device)
        mode = resolve_precision(precision_name(precision, dtype, where), where)
        offload = check_offload(offload, mode, where)
        if vae_dtype not in VAE_DTYPES:
            raise SigmaInputError(
                f"vae_dtype: {str(vae_dtype)[:40]!r} is not one of {', '.join(VAE_DTYPES)}"
            )
        if device_map is not None and offload != "none":
            raise SigmaInputError("device_map and offload exclude each other; choose one")
        if isinstance(device_map, dict):
            device_map = {k: str(resolve_device(v)) for k, v in device_map.items()}
        elif device_map not in (None, "auto"):
            raise SigmaInputError(
                f"device_map: {str(device_map)[:40]!r} must be 'auto' or {{module: device}}"
            )
        if compile is not True and compile is not False:
            raise SigmaInputError(f"compile: {compile!r} must be True or False")
        if layout is not None:
            check_layout_name(layout)
        cache_bytes = check_cache_bytes(latent_cache_bytes)
        return cls(where, mode, vae_dtype, offload, device_map, compile, layout, cache_bytes)


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
    return marker.is_file() and read_record(marker, PREVIEW_RECORD)["preview"]


def load_generator(
    folder: Path,
    tokenizer: Any,
    *,
    sigma_folder: Path | None = None,
    precision: Precision,
    device: torch.device,
    device_map: str | dict[str, str] | None = None,
) -> tuple[BagelGenerator, LoadReport]:
    """Check, then stream ema.safetensors (and the SIGMA override) into the model, tensor by
    tensor, in ``precision`` on ``device``, or on the device ``device_map`` gives each module
    ("auto": balanced over the GPUs; see runtime.placement).

    ``tokenizer`` must agree with the embedding table (SIGMA's token ids); its vision marker
    ids frame every latent block. Fails with names on any missing, unexpected or misshapen
    tensor, before reading one. The model is built on the meta device (with quantized layers
    swapped in first), so at most one tensor at a time exists in full precision.
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
    model = meta_generator(cfg, attribute_embed=report.attribute_embed, ids=ids)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    used = {k: s for k, s in shapes.items() if not k.startswith(SKIPPED_PREFIXES)}
    where = str(folder) + (f" + {sigma_folder}" if sigma_folder else "")
    check_tensors(used, expected, source=where, hint=f"(the model's sizes: {LLM_CONFIG_FILE})")
    swap_linears(model.llm.layers, precision)
    if isinstance(device_map, dict):
        device_map = spread_layers(model, device_map)
    elif device_map is not None:  # "auto", the one string LoadOptions lets through
        device_map = auto_device_map(model, precision)
    handles = {path: safe_open(str(path), framework="pt", device="cpu") for path in files}
    try:
        fill(model, ((k, _reader(handles, sources[k], k)) for k in used),
             precision=precision, device=device, device_map=device_map)  # fmt: skip
    finally:
        handles.clear()
    report.loaded = len(used)
    return model, report


def _reader(handles: dict[Path, safe_open], path: Path, key: str) -> Callable[[], torch.Tensor]:
    """Reads ``key`` from the file at ``path`` when called; through ``handles``, which the
    loader clears after the load to close the files."""
    return lambda: handles[path].get_tensor(key)


def meta_generator(cfg: LLMConfig, *, attribute_embed: bool, ids: TokenIds) -> BagelGenerator:
    """The generator on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return BagelGenerator(
            cfg,
            attribute_embed=attribute_embed,
            vision_token_ids=(ids.vision_start, ids.vision_end),
        )


def fill(
    model: BagelGenerator,
    tensors: Iterable[tuple[str, Callable[[], torch.Tensor]]],
    *,
    precision: Precision,
    device: torch.device,
    device_map: dict[str, str] | None = None,
) -> BagelGenerator:
    """Load every (key, read) pair into the meta ``model``, reading each tensor only when its
    turn comes: everything outside the decoder layers first, then layer by layer, each layer
    finished (fp8 quantizes it) before the next is read. Rebuilds the non-persistent rope
    buffer, freezes the weights and sets eval mode."""
    reads = dict(tensors)
    keys = by_layer(reads, LAYER_PREFIX)
    finished = -1
    for key in keys:
        layer = layer_of(key, LAYER_PREFIX)
        if layer is not None and layer != finished:
            if finished >= 0:
                finish_layer(model.llm.layers[finished], precision)
            finished = layer
        place_tensor(model, key, reads[key](), module_device(key, device, device_map), precision)
    if finished >= 0:
        finish_layer(model.llm.layers[finished], precision)
    rope_device = module_device("language_model.model.rotary_emb", device, device_map)
    model.llm.rotary_emb = RotaryEmbedding(model.config.head_dim, model.config.rope_theta).to(
        rope_device
    )
    return model.requires_grad_(False).eval()


def trained_layout(folder: Path | None) -> str | None:
    """The sequence layout weights were trained in, as their model card (``sigma_training.json``,
    written by ``export``) records it; None when the folder has no record (SIGMA's weights)."""
    path = None if folder is None else folder / TRAINING_META_FILE
    if path is None or not path.is_file():
        return None
    return read_record(path, TRAINING_RECORD)["layout"]


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: what a pipeline is made of, and what it knows of the weights."""

    model: BagelGenerator
    vae: FluxVAE
    tokenizer: Any
    report: LoadReport
    preview: bool  # random weights (a make-tiny folder): every result says so
    trained_layout: str | None  # the layout the weights were trained in (their model card)


def load_checkpoint(
    path_or_repo_id: str | os.PathLike, sigma_weights: str | os.PathLike | None, opts: LoadOptions
) -> Checkpoint:
    """Resolve and load a BAGEL folder or hub repo, with ``sigma_weights`` (folder or repo)
    over its ema.safetensors, as ``opts`` says (sequential offload loads into CPU RAM)."""
    base = resolve_checkpoint(path_or_repo_id, patterns=BASE_PATTERNS)
    sigma = resolve_checkpoint(sigma_weights, patterns=SIGMA_PATTERNS) if sigma_weights else None
    # the records are checked before any weight is read
    preview, layout = is_preview_checkpoint(base), trained_layout(sigma)
    tokenizer = load_tokenizer(base)
    load_on = torch.device("cpu") if opts.offload == "sequential" else opts.device
    with out_of_memory("loading the weights", opts.device):
        model, report = load_generator(
            base, tokenizer, sigma_folder=sigma, precision=opts.precision, device=load_on,
            device_map=opts.device_map,
        )  # fmt: skip
        vae_dtype = DTYPES[opts.vae_dtype]
        vae = FluxVAE.from_file(base / AE_FILE, dtype=vae_dtype, device=model.device)
    return Checkpoint(model, vae, tokenizer, report, preview, layout)
