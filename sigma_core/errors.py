"""Error types shared by the engine, the CLI and the studio.

Every error caused by what a user gave us (a preset, an image, a prompt, a setting) is a
:class:`SigmaInputError`, so callers can show its message as is and keep running; anything else
is a bug.
"""

from __future__ import annotations


class SigmaInputError(ValueError):
    """Bad user input. The message says what is wrong and how to fix it."""


class PresetError(SigmaInputError):
    """A preset (or PNG metadata) that cannot be read or does not validate."""


class ImageInputError(SigmaInputError):
    """An image that cannot be read safely: unreadable, corrupt, too big or not allowed."""


class PromptError(SigmaInputError):
    """A prompt whose slots, placeholders or attribute tokens do not fit together."""


class GenerationCancelled(RuntimeError):
    """A run stopped on request; the pipeline stays usable."""

    def __init__(self, message: str, *, step: int) -> None:
        super().__init__(message)
        self.step = step
