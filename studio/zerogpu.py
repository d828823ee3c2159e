"""Hugging Face ZeroGPU: on such a Space a GPU is attached only inside functions wrapped in
``spaces.GPU``, for a duration asked in advance. Elsewhere nothing changes and ``spaces`` is
never imported (it is not a dependency)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sigma_core import Composition

F = TypeVar("F", bound=Callable[..., Any])
TOKENS_1024 = 4096  # latent tokens of a 1024 x 1024 image
PASS_S = 0.2  # one pass of the generation expert over 4096 tokens, bf16, a ZeroGPU slice
PREFILL_S = 1.0  # encoding and prefilling one 1024 x 1024 reference
BASE_S, MIN_S, MAX_S = 15.0, 30, 240


def on_zerogpu() -> bool:
    """ZeroGPU Spaces set SPACES_ZERO_GPU=true."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() == "true"


def gpu_seconds(
    composition: Composition, generators: Sequence[Any] | None = None, *args: Any, **kwargs: Any
) -> int:
    """The GPU time to ask for one run: CFG's three passes per step over the output's tokens
    for each image (one per generator), one prefill per placed reference, and a margin.
    Called with the wrapped function's own arguments, as ``spaces.GPU(duration=...)`` does."""
    settings = composition.settings
    width, height = settings.size or (1024, 1024)  # following a reference: at most 1024²
    share = width * height / 256 / TOKENS_1024
    passes = 3 * (settings.num_timesteps - 1) * len(generators or [None])
    references = len(composition.referenced_slots())
    seconds = BASE_S + passes * PASS_S * share + references * PREFILL_S
    return int(min(max(math.ceil(seconds), MIN_S), MAX_S))


def gpu_function(fn: F) -> F:
    """``fn`` wrapped for ZeroGPU when on a ZeroGPU Space; ``fn`` itself elsewhere."""
    if not on_zerogpu():
        return fn
    import spaces

    return spaces.GPU(duration=gpu_seconds)(fn)
