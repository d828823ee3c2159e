"""Presentation shared by the CLI and the studio: the plan report and the mask picture."""

from sigma_core.report.mask_picture import mask_png
from sigma_core.report.plan_report import attributes_table, plan_report, render_report

__all__ = ["attributes_table", "mask_png", "plan_report", "render_report"]
