"""The planner of one checkpoint: plain data in, a :class:`Plan` out.

A plan depends on the composition and on three facts of the weights: the tokenizer, the rope
position budget (the LLM's ``max_position_embeddings``) and the layout a composition set to
"auto" runs in (the one the weights were trained in, from their model card). The planner holds
those three, and nothing of the model, so the studio plans as the user types, and the memory
predictor sizes a run, without touching the pipeline. A fast tokenizer is not safe to call from
two threads at once: planning takes a lock (a plan costs milliseconds).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any

from PIL import Image

from sigma_core.inputs.composition import Composition
from sigma_core.inputs.settings import DEFAULT_LAYOUT, check_layout_name
from sigma_core.planning.sequence import Plan, build_plan


class Planner:
    """Plans compositions for one checkpoint (see the module docstring).

    ``layout`` is what "auto" means here: by default ``trained_layout``, the layout the weights
    were trained in (None for SIGMA's released weights), else SIGMA's released inferencer's.
    Choosing another layout than the trained one warns, here and in every plan.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_positions: int,
        *,
        layout: str | None = None,
        trained_layout: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_positions = max_positions
        self.trained_layout = trained_layout
        if layout is not None:
            check_layout_name(layout)
            if trained_layout not in (None, layout):
                warnings.warn(layout_warning(layout, trained_layout), UserWarning, stacklevel=4)
        self.layout = layout or trained_layout or DEFAULT_LAYOUT
        self._lock = threading.Lock()

    def plan(
        self, composition: Composition, images: Mapping[int, Image.Image] | None = None
    ) -> Plan:
        """The sequence ``composition`` makes here, checked against the position budget; its
        ``warnings`` are worth showing before a long run. ``images`` are the loaded references
        by slot (read from the composition when omitted)."""
        if images is None:
            images = composition.load_images()
        sizes = {slot: im.size for slot, im in images.items()}
        with self._lock:
            plan = build_plan(
                composition,
                self.tokenizer,
                sizes,
                max_positions=self.max_positions,
                weights_layout=self.layout,
            )
        if self.trained_layout not in (None, plan.layout):
            plan.warnings.append(layout_warning(plan.layout, self.trained_layout))
        return plan


def layout_warning(layout: str, trained: str) -> str:
    """Why running ``layout`` on weights trained in ``trained`` deserves a warning."""
    return (
        f"layout {layout!r} differs from {trained!r}, the layout these weights were trained in "
        "(their model card): positions and attention differ from what training saw"
    )
