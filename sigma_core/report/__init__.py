"""Presentation shared by the CLI and the studio: the plan report and the mask picture.

None of it imports torch or transformers. :func:`mask_png` (numpy and Pillow's drawing) loads on
first use.
"""

from __future__ import annotations

from sigma_core.lazy import lazy_exports
from sigma_core.report.plan_report import attributes_table, escape_text, plan_report, render_report

__all__ = ["attributes_table", "escape_text", "mask_png", "plan_report", "render_report"]


__getattr__, __dir__ = lazy_exports(__name__, {"mask_png": "sigma_core.report.mask_picture"})
