"""The engine the CLI's flags name (``generate``, ``evaluate generate``): one place that turns
an :class:`~sigma_core.model.modes.EngineChoice` into a pipeline."""

from __future__ import annotations

from typing import Any

from sigma_core.model.modes import EngineChoice
from sigma_core.runtime.pipeline import SigmaPipeline


def load_engine(choice: EngineChoice, device: Any) -> SigmaPipeline:
    """The checkpoint's engine on ``device``, or the preview engine when there is none."""
    options = choice.load_options(device)
    if choice.checkpoint:
        return SigmaPipeline.from_pretrained(
            choice.checkpoint, sigma_weights=choice.sigma_weights, **options
        )
    return SigmaPipeline.preview_engine(**options)
