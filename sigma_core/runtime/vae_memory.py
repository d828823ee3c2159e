"""The VAE's side of a memory estimate: its weights counted on the meta device, its activation
peaks read from a table that a benchmark measured.

The VAE is diffusers' AutoencoderKL, so nothing here re-derives its layers: the parameters come
from the model itself, built on the meta device from its config (no memory), and the largest
transient of encoding one image or decoding one output comes from ``memory_table.json``, which
``python -m benchmarks.bench_memory --write`` measures with
:class:`~sigma_core.runtime.memory.MemoryMeter` on the CPU and writes with the machine it came
from (CPU, torch and diffusers versions, date). A convolutional VAE's maps scale with the pixels,
so each config (by :func:`vae_fingerprint`) and dtype keeps a straight line per phase:
bytes = per_pixel * pixels + constant, fitted over a few sizes. fp16 reads bf16's line
(:data:`TABLE_DTYPES`): the same graph in the same element size, measured equal per element on
both VAEs, while fp16 convolutions on a CPU take minutes per FLUX image. When diffusers changes
its layers, tests/test_vae_memory.py measures again and tells whether the table must be rewritten.

A config the table does not know (a VAE of another shape) gets a documented, conservative
fallback, not an error: the widest bytes per pixel per channel the table holds for that dtype and
phase, times the config's :func:`vae_width` and :data:`FALLBACK_MARGIN`. A table that is missing
or does not validate is an installation fault: :class:`~sigma_core.errors.SigmaError`, naming
the file and what is wrong, never a silent number.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sigma_core.errors import SigmaError, SigmaInputError

TABLE_PATH = Path(__file__).with_name("memory_table.json")
TABLE_FORMAT = 1
MAX_TABLE_BYTES = 1 << 20  # the benchmark writes a few kB
PHASES = ("encode", "decode")
MEASURED_DTYPES = ("fp32", "bf16")
TABLE_DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "bf16"}  # VAE dtype -> measured line
FALLBACK_MARGIN = 1.25
# AutoencoderKL arguments that do not shape a layer: left out of the fingerprint.
NOT_SHAPING = frozenset(
    {"sample_size", "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast"}
)
REWRITE = "rewrite it with python -m benchmarks.bench_memory --write, or reinstall sigma-studio"


@dataclass(frozen=True)
class VAEShape:
    """What a VAE config means for memory: ``parameters`` (elements, buffers included), its
    largest leaf module's (all that sequential offload holds at once), its fingerprint and
    width (the table's keys)."""

    parameters: int
    largest_module: int
    fingerprint: str
    width: float


@dataclass(frozen=True)
class Fit:
    """Bytes of one phase's peak for ``pixels`` output (decode) or input (encode) pixels."""

    per_pixel: float
    constant: float

    def at(self, pixels: int) -> int:
        return math.ceil(self.per_pixel * pixels + max(self.constant, 0.0))


@dataclass(frozen=True)
class TableEntry:
    """One measured VAE config: ``fits[dtype][phase]``."""

    name: str
    width: float
    fits: Mapping[str, Mapping[str, Fit]]


@dataclass(frozen=True)
class MemoryTable:
    """The measured peaks by VAE fingerprint, and the machine (``machine``) they came from."""

    machine: Mapping[str, str]
    vae: Mapping[str, TableEntry]

    def fit(self, vae: VAEShape, dtype: str, phase: str) -> Fit:
        """The measured line of ``vae`` in ``dtype``; for a config the table lacks, the
        widest measured bytes per pixel per channel scaled to its width, with a margin."""
        measured = TABLE_DTYPES[dtype]
        entry = self.vae.get(vae.fingerprint)
        if entry is not None:
            return entry.fits[measured][phase]
        fits = [(e.fits[measured][phase], e.width) for e in self.vae.values()]
        per_channel = max(f.per_pixel / width for f, width in fits)
        constant = max(f.constant for f, _ in fits)
        return Fit(FALLBACK_MARGIN * per_channel * vae.width, FALLBACK_MARGIN * constant)

    def activations(
        self, vae: VAEShape, dtype: str, output: tuple[int, int], inputs: list[tuple[int, int]]
    ) -> int:
        """The VAE phase's largest transient: decoding the (width, height) ``output`` or
        encoding the largest of ``inputs``, whichever is more."""
        decode = self.fit(vae, dtype, "decode").at(output[0] * output[1])
        encode = self.fit(vae, dtype, "encode")
        return max([decode, *(encode.at(w * h) for w, h in inputs)])


def shaping_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of an AutoencoderKL config that shape its layers, as JSON values: all but
    :data:`NOT_SHAPING` and diffusers' private ``_`` keys."""
    shaping = {k: v for k, v in config.items() if not k.startswith("_") and k not in NOT_SHAPING}
    return json.loads(json.dumps(shaping, sort_keys=True, default=list))


def vae_fingerprint(config: Mapping[str, Any]) -> str:
    """A short hash of :func:`shaping_config`: the table's key for a VAE."""
    text = json.dumps(shaping_config(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def vae_width(config: Mapping[str, Any]) -> float:
    """Channels per pixel of the widest level: level i holds block_out_channels[i] maps at
    1/4**i of the pixels. The fallback scales the measured peaks by it."""
    return max(c / 4**i for i, c in enumerate(config["block_out_channels"]))


def vae_shape(config: Mapping[str, Any]) -> VAEShape:
    """:class:`VAEShape` of an AutoencoderKL ``config``, from the model built on the meta
    device (cached per config); a config diffusers cannot build is refused."""
    try:
        key = json.dumps(dict(config), sort_keys=True, default=list)
    except (TypeError, ValueError) as e:
        raise SigmaInputError(f"vae_config: not a JSON-like mapping ({e})") from None
    return _vae_shape(key)


@functools.lru_cache(maxsize=16)
def _vae_shape(config_json: str) -> VAEShape:
    from diffusers import AutoencoderKL

    try:
        with torch.device("meta"):
            model = AutoencoderKL.from_config(json.loads(config_json))
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise SigmaInputError(f"vae_config: diffusers cannot build an AutoencoderKL ({e})") from e
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    return VAEShape(
        parameters=sum(t.numel() for t in (*model.parameters(), *model.buffers())),
        largest_module=max(sum(p.numel() for p in m.parameters()) for m in leaves),
        fingerprint=vae_fingerprint(model.config),
        width=vae_width(model.config),
    )


# ------------------------------------------------------------------------------ the table


@functools.lru_cache(maxsize=1)
def shipped_table() -> MemoryTable:
    """The table shipped beside this module, read once."""
    return read_table(TABLE_PATH)


def read_table(path: Path) -> MemoryTable:
    """Read and check a memory table: hostile input is refused whole (SigmaError), never used
    in part. JSON only; NaN and infinities are not numbers here."""
    try:
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise ValueError(f"over {MAX_TABLE_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        return parse_table(data)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SigmaError(f"{path}: not a usable memory table ({e}); {REWRITE}") from None


def parse_table(data: Any) -> MemoryTable:
    """A :class:`MemoryTable` from decoded JSON; ValueError naming the first bad field."""
    _expect(data, dict, "the table")
    if data.get("format") != TABLE_FORMAT:
        raise ValueError(f"format {str(data.get('format'))[:20]!r} is not {TABLE_FORMAT}")
    machine = _expect(data.get("machine"), dict, "machine")
    for key, value in machine.items():
        _expect(value, str, f"machine.{key}")
    entries = _expect(data.get("vae"), dict, "vae")
    if not entries:
        raise ValueError("vae: no measured VAE")
    vae = {fp: _entry(fp, entry) for fp, entry in entries.items()}
    return MemoryTable(machine=dict(machine), vae=vae)


def _entry(fingerprint: str, data: Any) -> TableEntry:
    where = f"vae.{fingerprint[:20]}"
    _expect(data, dict, where)
    config = _expect(data.get("config"), dict, f"{where}.config")
    channels = _expect(config.get("block_out_channels"), list, f"{where}.block_out_channels")
    if not channels or not all(_is_count(c) for c in channels):
        raise ValueError(f"{where}.block_out_channels: not a list of positive integers")
    if vae_fingerprint(config) != fingerprint:
        raise ValueError(f"{where}: the key is not the fingerprint of its config")
    fits = _expect(data.get("bytes"), dict, f"{where}.bytes")
    return TableEntry(
        name=_expect(data.get("name"), str, f"{where}.name"),
        width=vae_width(config),
        fits={d: _phases(fits.get(d), f"{where}.bytes.{d}") for d in MEASURED_DTYPES},
    )


def _phases(data: Any, where: str) -> dict[str, Fit]:
    _expect(data, dict, where)
    out = {}
    for phase in PHASES:
        line = _expect(data.get(phase), dict, f"{where}.{phase}")
        values = [line.get("per_pixel"), line.get("constant")]
        if not all(_is_number(v) and v >= 0 for v in values) or not values[0] > 0:
            raise ValueError(f"{where}.{phase}: per_pixel > 0 and constant >= 0 are required")
        out[phase] = Fit(float(values[0]), float(values[1]))
    return out


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")
