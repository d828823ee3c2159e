"""Presets: the shipped examples, opening a preset or a generated PNG, and saving the current
composition as one self-contained JSON file (images embedded) to share."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

import sigma_core
from sigma_core import SigmaError, SigmaInputError, frontend
from studio.forms import Draft, to_composition, to_draft

log = logging.getLogger(__name__)
SAVED = "presets"


@dataclass(frozen=True)
class PresetEntry:
    """A preset file on the server, with the picture the examples gallery shows for it."""

    name: str
    path: Path
    cover: Image.Image | None


def list_presets(folder: Path) -> list[PresetEntry]:
    """Every valid preset in ``folder``, by file name; a broken one is logged and skipped so
    one bad file never hides the others."""
    entries = []
    for path in sorted(folder.glob("*.json")):
        try:
            comp = sigma_core.load_preset(path)
            placed = [r for r in comp.references if r.image is not None]
            cover = comp.load_image(placed[0]) if placed else None
        except SigmaError as e:
            log.warning("preset %s skipped: %s", path.name, e)
            continue
        if cover is not None:
            cover.thumbnail((256, 256))
        entries.append(PresetEntry(comp.name or path.stem, path, cover))
    return entries


def open_composition(path: str | Path, files: Path, *, max_slots: int) -> Draft:
    """A preset JSON, or a PNG saved by SIGMA Studio, as the controls' values."""
    if not path:
        raise SigmaInputError("preset: choose a preset JSON or a PNG made by SIGMA Studio")
    try:
        comp = sigma_core.load_composition(path)
    except SigmaInputError as e:  # name the file as the user knows it, not the server's path
        raise type(e)(str(e).replace(str(path), Path(path).name)) from None
    return to_draft(comp, files, max_slots=max_slots)


def save_draft(draft: Draft, files: Path) -> Path:
    """The composition as preset JSON with every image embedded, in a file to download."""
    text = frontend.dumps_preset(to_composition(draft), embed_images=True)
    slug = re.sub(r"[^a-z0-9]+", "-", draft.name.lower()).strip("-")[:40] or "composition"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    folder = files / SAVED / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug}.json"
    path.write_text(text, encoding="utf-8")
    return path
