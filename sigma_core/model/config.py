"""Typed configs read from a BAGEL checkpoint folder."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from sigma_core.errors import CheckpointError


@dataclass(frozen=True)
class LLMConfig:
    """The Qwen2 decoder sizes BAGEL reads from ``llm_config.json``.

    As the official app does, qk-norm is always on when read from a file, embeddings are untied
    and every layer is a two-expert MoT layer, whatever the file says. ``qk_norm=False`` exists
    for tests that compare the decoder with plain Qwen2.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    qk_norm: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "llm_config.json") -> LLMConfig:
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object")
        names = {f.name for f in fields(cls)} - {"qk_norm"}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise CheckpointError(f"{source}: missing {', '.join(missing)}")
        for name in names & data.keys():
            _check_value(name, data[name], source)
        cfg = cls(**{k: data[k] for k in names if k in data})
        if cfg.head_dim % 2:
            raise CheckpointError(
                f"{source}: the head size {cfg.head_dim} is odd (rope needs even)"
            )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise CheckpointError(f"{source}: hidden_size is not a multiple of the head count")
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise CheckpointError(f"{source}: query heads are not a multiple of KV heads")
        if cfg.hidden_act != "silu":
            raise CheckpointError(f"{source}: hidden_act {cfg.hidden_act!r} is not supported")
        if (data.get("rope_scaling") or {}).get("rope_type", "default") != "default":
            raise CheckpointError(f"{source}: rope_scaling is not supported")
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LLMConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(
                f"{path}: not found; a BAGEL folder has llm_config.json"
            ) from None
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read ({e})") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """As written in llm_config.json (with the MoT settings the official app forces)."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "tie_word_embeddings": False,
            "layer_module": "Qwen2MoTDecoderLayer",
            "rope_scaling": None,
            "torch_dtype": "bfloat16",
        }


# The published BAGEL-7B-MoT's llm_config.json, for what is sized without the checkpoint
# (memory predictions, full-size benchmarks).
BAGEL_7B_MOT = LLMConfig(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    rope_theta=1_000_000.0,
)


def _check_value(name: str, value: Any, source: str) -> None:
    """Sizes are positive integers, eps and theta positive finite numbers: a config that says
    otherwise is refused before a model is built from it."""
    if name == "hidden_act":
        ok = isinstance(value, str)
    elif name in ("rms_norm_eps", "rope_theta"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and 0 < value < float("inf")
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31
    if not ok:
        raise CheckpointError(f"{source}: {name} = {value!r:.40} is not a valid value")
