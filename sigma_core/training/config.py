"""Every setting of a training run, in one frozen dataclass read from YAML.

Defaults follow the paper's recipe (sigma-facts.md): the generation branch trains, the VAE and
the understanding expert stay frozen, token packing of 30K, AdamW (0.9, 0.95), lr 2e-5 cosine
to 1e-7, gradient clip 1.0, bf16, EMA 0.9999 (BAGEL's), timestep shift 1.0 and conditioning
dropout text 0.1 / reference 0.3 / ViT block 0.3 (BAGEL's and SIGMA's training code). The
sequence layout is inference's by default, so the weights suit the default inference layout;
``layout: training`` packs SIGMA's own training sequence (see sigma_core.planning.layout). Unlike
the released
SIGMA code, the intra-group mask is on and W_tau trains, as the paper describes; both switch
off to reproduce the released code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sigma_core.errors import SigmaInputError
from sigma_core.geometry import MAX_SIDE, MIN_SIDE, TOKEN_STRIDE
from sigma_core.inputs.bounded import read_bounded
from sigma_core.inputs.fields import cut, field_name, is_int, shown
from sigma_core.inputs.settings import LAYOUTS
from sigma_core.limits import MAX_PLAN_TOKENS
from sigma_core.model.modes import TRAINABLE

MIXED_PRECISIONS = ("no", "bf16", "fp16")
WEIGHT_DTYPES = ("fp32", "bf16")
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")
MAX_STEPS = 10_000_000
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 10_000  # values once aliases are expanded: a "billion laughs" stops here
MAX_CONFIG_DEPTH = 32  # nesting of lists and mappings
MAX_SHOWN = 80  # characters of a value quoted in a message
# 4 GiB: a 1024x1024 image's posterior is 2 MiB (mean and log-variance [16, 128, 128] fp32)
DISK_CACHE_BYTES = 4 * 2**30


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``base`` is BAGEL (a folder or hub repo); ``sigma_weights`` starts
    from SIGMA's weights instead of BAGEL's; ``data`` lists parquet shards, folders of them or
    JSONL manifests."""

    base: str
    data: tuple[str, ...]
    output_dir: str = "runs/sigma"
    sigma_weights: str | None = None
    # the sequence and SIGMA's mechanisms
    mask: bool = True
    attribute_projection: bool = True
    layout: str = "inference"  # one of LAYOUTS: the sequence layout, recorded in the model card
    max_tokens: int = 30_000  # tokens per packed batch, per process
    max_image_size: int = MAX_SIDE
    min_image_size: int = 512
    resize_jitter: float = 0.0
    text_dropout: float = 0.1
    image_dropout: float = 0.3
    vit_dropout: float = 0.3  # the phantom ViT block, in the "training" layout
    timestep_shift: float = 1.0
    # a folder keeping each image's VAE posterior, so later epochs skip the frozen VAE (it may be
    # shared by ranks and runs); at most latent_cache_bytes of files, least recently used out
    latent_cache: str | None = None
    latent_cache_bytes: int = DISK_CACHE_BYTES
    # what trains
    train: str = "gen"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # optimisation
    steps: int = 30_000
    lr: float = 2e-5
    min_lr: float = 1e-7
    warmup_steps: int = 500
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-15
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema: float = 0.9999
    mixed_precision: str = "bf16"
    weights_dtype: str = "fp32"  # frozen weights; trained ones stay fp32
    gradient_checkpointing: bool = True
    flex_attention: bool = True  # the block mask on GPU; CPU always uses a dense mask
    seed: int = 0
    # progress, logs, checkpoints
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: never
    sample_preset: str | None = None
    sample_steps: int = 30
    trackers: tuple[str, ...] = ("tensorboard",)

    def __post_init__(self) -> None:
        for name in ("data", "trackers"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def problems(self) -> list[str]:
        """Every out-of-range setting, each naming its field."""
        out = [
            f"{name}: {shown(getattr(self, name), MAX_SHOWN)} {what}"
            for name, what in _failed_checks(self)
        ]
        if not out and self.min_image_size > self.max_image_size:
            out.append("min_image_size: must not exceed max_image_size")
        if self.sample_every and not self.sample_preset:
            out.append("sample_preset: sample_every needs a preset to sample")
        return out

    def check(self, where: str = "training config") -> TrainConfig:
        """This config, or a SigmaInputError listing its problems after ``where``."""
        problems = self.problems()
        if problems:
            raise SigmaInputError(f"{where}: " + "; ".join(problems))
        return self

    def folders(self) -> dict[str, str]:
        """The folders the run writes, by setting name: each checked before the model loads."""
        named = {"output_dir": self.output_dir, "latent_cache": self.latent_cache}
        return {what: folder for what, folder in named.items() if folder}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["data"], out["trackers"] = list(self.data), list(self.trackers)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def config_from_dict(raw: Any, where: str = "training config") -> TrainConfig:
    """A checked config from a mapping; unknown keys are refused by name."""
    if not isinstance(raw, dict):
        raise SigmaInputError(f"{where}: expected a mapping of settings")
    unknown = sorted(field_name(k) for k in raw if k not in FIELDS)
    if unknown:
        raise SigmaInputError(f"{where}: unknown setting(s) {', '.join(unknown[:5])}")
    for key in ("base", "data"):
        if key not in raw:
            raise SigmaInputError(f"{where}: '{key}' is required")
    cfg = TrainConfig(**{k: _as_float(v) if k in FLOATS else v for k, v in raw.items()})
    return cfg.check(where)


def _as_float(value: Any) -> Any:
    """A number YAML read as a string (``1e-5``: YAML 1.1 wants ``1.0e-5``) as a float."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            return float(value)
        except ValueError:
            pass
    return value


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting and more than MAX_CONFIG_NODES values once
    aliases are expanded, while composing (before any Python object is built)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        if self._depth > MAX_CONFIG_DEPTH:
            raise SigmaInputError(f"nested more than {MAX_CONFIG_DEPTH} levels deep")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._sizes:
            children = node.value if isinstance(node.value, list) else []
            items = [x for c in children for x in (c if isinstance(c, tuple) else (c,))]
            size = 1 + sum(self._sizes.get(id(c), 1) for c in items)
            if size > MAX_CONFIG_NODES:
                raise SigmaInputError(
                    f"more than {MAX_CONFIG_NODES:,} values, each alias counted as what it repeats"
                )
            self._sizes[id(node)] = size
        return node


def parse_yaml(text: str) -> Any:
    """YAML data (no Python objects), bounded in depth and expanded size; SigmaInputError
    with the reason (no position, no long excerpt) otherwise."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]  # no position, no excerpt
        raise SigmaInputError(f"not valid YAML ({cut(first, MAX_SHOWN)})") from None
    finally:
        loader.dispose()


def _read_config(path: Path) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES (a FIFO is never opened)."""
    data = read_bounded(path, MAX_CONFIG_BYTES, what="config file", error=SigmaInputError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SigmaInputError(f"{path}: not UTF-8 text; a config is a YAML file") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (data only, bounded), apply ``overrides`` and check it."""
    path = Path(path)
    text = _read_config(path)
    try:
        raw = parse_yaml(text)
    except SigmaInputError as e:
        raise SigmaInputError(f"{path}: {e}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SigmaInputError(f"{path}: expected a mapping of settings")
    return config_from_dict({**raw, **(overrides or {})}, where=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line, the value read as YAML (numbers, lists, bools)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SigmaInputError(f"--set {shown(text, MAX_SHOWN)}: expected key=value")
    try:
        return key.strip(), parse_yaml(value)
    except SigmaInputError as e:
        raise SigmaInputError(f"--set {shown(text, MAX_SHOWN)}: the value is {e}") from None


# ----------------------------------------------------------------------------- bounds

CHOICES = {
    "train": TRAINABLE,
    "mixed_precision": MIXED_PRECISIONS,
    "weights_dtype": WEIGHT_DTYPES,
    "layout": tuple(LAYOUTS),
}
FLAGS = ("mask", "attribute_projection", "gradient_checkpointing", "flex_attention")
INTS = {
    "max_tokens": (16, MAX_PLAN_TOKENS),
    "steps": (1, MAX_STEPS),
    "warmup_steps": (0, MAX_STEPS),
    "grad_accum": (1, 1024),
    "lora_rank": (1, 1024),
    "seed": (0, 2**31 - 1),
    "log_every": (1, MAX_STEPS),
    "save_every": (1, MAX_STEPS),
    "keep_checkpoints": (1, 1000),
    "sample_every": (0, MAX_STEPS),
    "sample_steps": (2, 200),
    "latent_cache_bytes": (2**20, 2**50),
}
SIDES = ("max_image_size", "min_image_size")
# name -> (low, high, whether low itself is allowed)
FLOATS = {
    "lr": (0.0, 1.0, False),
    "min_lr": (0.0, 1.0, True),
    "beta1": (0.0, 1.0, True),
    "beta2": (0.0, 1.0, True),
    "eps": (0.0, 1.0, False),
    "weight_decay": (0.0, 10.0, True),
    "grad_clip": (0.0, 1e6, False),
    "ema": (0.0, 1.0, True),
    "timestep_shift": (0.0, 100.0, False),
    "resize_jitter": (0.0, 0.9, True),
    "text_dropout": (0.0, 1.0, True),
    "image_dropout": (0.0, 1.0, True),
    "vit_dropout": (0.0, 1.0, True),
    "lora_alpha": (0.0, 1e6, False),
    "lora_dropout": (0.0, 0.9, True),
}


def _number_in(v: Any, lo: float, hi: float, closed: bool) -> bool:
    # an int compares with a float exactly, however large: no float(v), no OverflowError
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    return (lo <= v if closed else lo < v) and v <= hi


def _named(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _names(v: Any, allowed: tuple[str, ...] | None) -> bool:
    """A tuple (a YAML list or one string) of names, each in ``allowed`` when given."""
    return isinstance(v, tuple) and all(_named(x) and (allowed is None or x in allowed) for x in v)


def _is_side(v: Any) -> bool:
    return is_int(v) and MIN_SIDE <= v <= MAX_SIDE and v % TOKEN_STRIDE == 0


def _named_checks(cfg: TrainConfig) -> list[tuple[str, str]]:
    checks = (
        ("base", _named(cfg.base), "must name a checkpoint"),
        ("data", _names(cfg.data, None) and bool(cfg.data),
         "must list at least one parquet file, folder or JSONL manifest"),
        ("output_dir", _named(cfg.output_dir), "must name a folder"),
        ("latent_cache", cfg.latent_cache is None or _named(cfg.latent_cache),
         "must name a folder, or be null"),
        ("sample_preset", cfg.sample_preset is None or _named(cfg.sample_preset),
         "must name a preset file"),
        ("trackers", _names(cfg.trackers, TRACKERS), f"may only hold {', '.join(TRACKERS)}"),
    )  # fmt: skip
    return [(name, why) for name, ok, why in checks if not ok]


def _kind_checks(cfg: TrainConfig) -> list[tuple[str, str]]:
    failed = [
        (name, f"must be one of {', '.join(allowed)}")
        for name, allowed in CHOICES.items()
        if getattr(cfg, name) not in allowed
    ]
    failed += [
        (name, "must be true or false")
        for name in FLAGS
        if not isinstance(getattr(cfg, name), bool)
    ]
    return failed


def _range_checks(cfg: TrainConfig) -> list[tuple[str, str]]:
    failed = [
        (name, f"must be an integer from {lo} to {hi}")
        for name, (lo, hi) in INTS.items()
        if not (is_int(getattr(cfg, name)) and lo <= getattr(cfg, name) <= hi)
    ]
    side = f"must be a multiple of {TOKEN_STRIDE} from {MIN_SIDE} to {MAX_SIDE}"
    failed += [(name, side) for name in SIDES if not _is_side(getattr(cfg, name))]
    failed += [
        (name, f"must be a number in {'[' if closed else '('}{lo}, {hi}]")
        for name, (lo, hi, closed) in FLOATS.items()
        if not _number_in(getattr(cfg, name), lo, hi, closed)
    ]
    return failed


def _failed_checks(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(field, what it must be) for each setting out of bounds."""
    return _named_checks(cfg) + _kind_checks(cfg) + _range_checks(cfg)
