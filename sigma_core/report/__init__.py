"""Presentation shared by the CLI and the studio: the plan report and the mask picture.

None of it imports torch or transformers. :func:`mask_png` (numpy and Pillow's drawing) loads on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sigma_core.lazy import lazy_package

# Eager: a name equal to its submodule's (plan_report) must be bound before that submodule
# is imported, or the submodule would shadow it on the package.
from sigma_core.report.plan_report import attributes_table, escape_text, plan_report, render_report

if TYPE_CHECKING:  # the names that load on first use (sigma_core.lazy)
    from sigma_core.report.mask_picture import mask_image as mask_image, mask_png as mask_png

if not TYPE_CHECKING:  # type checkers see the imports above; a misspelt name is an error
    _lazy, __getattr__, __dir__ = lazy_package(__name__)
    __all__ = [*_lazy, "attributes_table", "escape_text", "plan_report", "render_report"]
