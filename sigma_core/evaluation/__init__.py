"""Evaluation: the paper's metrics over a benchmark of compositions (docs/evaluation.md).

``benchmark`` reads a benchmark (a folder or a JSONL manifest of presets with their metadata),
``runs`` makes its images into a run folder (ablation arms, seeds, resumable, data-parallel
under ``accelerate launch``), ``scoring`` scores them with the metric modules, and ``report``
lays the results out as the paper's tables. Run as ``python -m sigma_core evaluate ...``.
"""
