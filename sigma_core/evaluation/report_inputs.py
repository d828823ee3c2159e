"""A run folder read back for the report, through the readers beside each file's writer:
run.json (:mod:`.run_record`), benchmark.jsonl (:mod:`.benchmark`), generated.jsonl
(:mod:`.runlog`), scores.jsonl and scores.json (:mod:`.score_files`). Each checks its file as a
stranger's; a refusal is one SigmaInputError (exit 2) naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigma_core.errors import SigmaInputError
from sigma_core.evaluation import score_files
from sigma_core.evaluation.run_record import RunFolder, arm_names, open_run
from sigma_core.evaluation.runlog import Generated, read_images
from sigma_core.inputs.png import find_png_text
from sigma_core.inputs.preset import PNG_NOTICE_KEY


@dataclass(frozen=True)
class Run(RunFolder):
    """A run folder as the report needs it; ``scores`` holds each image's last line of
    scores.jsonl (the one rule every reader of that file follows)."""

    images: tuple[Generated, ...]
    scores: tuple[dict[str, Any], ...]
    scoring: dict[str, Any]  # scores.json
    notices: tuple[str, ...]  # the preview notices found in the images' PNG text

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def arms(self) -> list[str]:
        return arm_names(self.record)

    @property
    def preview(self) -> bool:
        """True when the preview engine (random weights) made the images: run.json says so,
        or an image carries the preview notice."""
        checkpoint = self.record["engine"].get("checkpoint")
        return checkpoint in (None, "preview") or bool(self.notices)


def read_run(folder: Path) -> Run:
    """The run in ``folder``, every file checked; it must be scored (the report reports
    scores: a run not yet scored is refused with the command that scores it)."""
    run = open_run(folder)
    if not (folder / score_files.SCORES).exists() or not (folder / score_files.SUMMARY).exists():
        raise SigmaInputError(
            f"{folder} has no scores yet; run `python -m sigma_core evaluate score {folder}` first"
        )
    images = tuple(read_images(folder, run.record))
    scores = score_files.read_scores(folder, run.record, run.families)
    summary = score_files.read_summary(folder)
    notices = tuple(n for image in images if (n := _notice(image.path)))
    return Run(folder, run.record, run.items, images, tuple(scores.values()), summary, notices)


def _notice(path: Path) -> str | None:
    """The preview notice a generated PNG carries in its text chunks, if any (a file that is
    not a PNG is a PresetError, which is a SigmaInputError)."""
    return find_png_text(path, PNG_NOTICE_KEY, max_bytes=4096)
