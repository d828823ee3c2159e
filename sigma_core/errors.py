"""The errors sigma_core raises on purpose, in four kinds a caller can tell apart.

    SigmaError                      every error below; its message is written for the user
    ├── SigmaInputError             bad input: a preset, image, prompt or setting (ValueError)
    │   ├── PresetError             a preset or PNG metadata that does not read or validate
    │   ├── ImageInputError         an image that cannot be read safely
    │   └── PromptError             slots, placeholders and attribute tokens that do not fit
    ├── CheckpointError             weights, configs or tokenizer missing or not fitting the model
    ├── SigmaResourceError          the machine ran out of something
    │   └── SigmaOutOfMemoryError   out of GPU or CPU memory; the message says what to lower
    └── GenerationCancelled         a run stopped on request; the pipeline stays usable

The CLI prints any SigmaError's message and exits 2 (130 for a cancel); anything else is a bug.
The studio shows the message and keeps the user's work.
"""

from __future__ import annotations

import functools
from typing import Any


class SigmaError(Exception):
    """Base of every error raised on purpose; the message says what is wrong and what to do."""


class SigmaInputError(SigmaError, ValueError):
    """Bad user input. The message names the field and the fix."""


class PresetError(SigmaInputError):
    """A preset (or PNG metadata) that cannot be read or does not validate."""


class ImageInputError(SigmaInputError):
    """An image that cannot be read safely: unreadable, corrupt, too big or not allowed."""


class PromptError(SigmaInputError):
    """A prompt whose slots, placeholders or attribute tokens do not fit together."""


class CheckpointError(SigmaError):
    """A checkpoint that is missing, incomplete or does not fit the model: weights, configs, the
    VAE file or the tokenizer."""


class SigmaResourceError(SigmaError):
    """The machine cannot provide what a run needs (memory, a device)."""


class SigmaOutOfMemoryError(SigmaResourceError):
    """Out of memory during a run; the message lists what to lower."""

    ADVICE = (
        "use a smaller output size, fewer or smaller references, a lower precision (bf16 "
        "instead of fp32; int8 or nf4 quantize the LLM) or offload='model'; or free memory that "
        "other programs hold"
    )

    def __init__(self, where: str, device: str, detail: str = "") -> None:
        super().__init__(f"out of memory on {device} while {where}{detail}: {self.ADVICE}")
        self.where, self.device = where, device


class GenerationCancelled(SigmaError):
    """A run stopped on request; the pipeline stays usable. ``step``: the Euler steps done (of
    the image running). ``partial``: when a call of several images (num_images_per_prompt) is
    cancelled after its first, the images whose loops finished, decoded as the call asked, as
    a :class:`~sigma_core.runtime.output.SigmaOutput` (split() gives each with its seed); None
    when no image finished. (Typed Any: this base module imports nothing of sigma_core.)"""

    def __init__(self, message: str, *, step: int, partial: Any = None) -> None:
        super().__init__(message)
        self.step, self.partial = step, partial

    def __reduce__(self) -> tuple[Any, ...]:
        # keyword arguments survive a pickle (a ZeroGPU run raises in another process)
        return functools.partial(type(self), step=self.step, partial=self.partial), (str(self),)
