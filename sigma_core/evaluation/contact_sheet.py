"""A contact sheet per benchmark item: its references (slot, role, attributes) above each arm's
image for the first seed, with the image's scores under it, so a number can be checked by eye.

Reference images come through the preset reader (paths inside the run folder only, image
limits checked before decoding); generated images through the same safe image loader.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from PIL import Image, ImageDraw, ImageFont, ImageOps

from sigma_core.evaluation.benchmark import BenchmarkItem
from sigma_core.evaluation.metrics import METRICS
from sigma_core.evaluation.report_inputs import Run
from sigma_core.evaluation.report_stats import arm_names
from sigma_core.evaluation.runlog import Generated

TILE = 224  # the side of one picture on a sheet
PAD = 8
LINE = 16  # caption line height for the font size below
FONT_SIZE = 12
MAX_COLUMNS = 6
_BACKGROUND, _INK, _EMPTY = (255, 255, 255), (20, 20, 20), (200, 200, 200)
# DejaVu Sans ships with matplotlib (its fonts are under a permissive license)
FONT_FILE = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


@dataclass(frozen=True)
class Tile:
    """One picture (None: nothing to show) and the lines of text under it."""

    image: Image.Image | None
    caption: tuple[str, ...]


def sheet_name(index: int, item: str) -> str:
    """A file name for an item's sheet: its index, then its id. The benchmark reader admits
    only letters, digits, '.', '_' and '-' in ids; anything else is replaced here all the same,
    since this names a file."""
    return f"{index:04d}-{re.sub(r'[^A-Za-z0-9._-]', '_', item)[:60]}.png"


def write_sheets(runs: Sequence[Run], folder: Path) -> dict[str, str]:
    """Draw a sheet per item of the first run into ``folder``, in run.json's order; returns
    item id -> file name."""
    folder.mkdir()
    first = runs[0]
    arms = _ArmImages(runs)
    out: dict[str, str] = {}
    for item_id in first.record["items"]:
        item = first.items[item_id]
        name = sheet_name(len(out), item.id)
        title = [f"{item.id} ({item.family})", f"prompt: {item.composition.prompt}"]
        _sheet(title, _reference_tiles(item), arms.tiles(item.id)).save(folder / name)
        out[item.id] = name
    return out


def _reference_tiles(item: BenchmarkItem) -> list[Tile]:
    """The item's references with images, by slot: each image read through the composition
    (paths inside the run folder, limits checked before decoding)."""
    tiles = []
    comp = item.composition
    for ref in sorted((r for r in comp.references if r.image is not None), key=lambda r: r.slot):
        attributes = ", ".join(ref.attributes) or "no attribute"
        caption = (f"[{ref.slot}] {item.references[ref.slot].role}", attributes)
        tiles.append(Tile(comp.load_image(ref), caption))
    return tiles


class _ArmImages:
    """Each arm's image and scores for an item at its run's first seed."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.arms = arm_names(runs)
        self.images = {(r.name, *im.key): im for r in runs for im in r.images}
        self.scores = {(r.name, s["item"], s["arm"], s["seed"]): s for r in runs for s in r.scores}

    def tiles(self, item: str) -> list[Tile]:
        tiles = []
        for run, arm, name in self.arms:
            seed = run.record["seeds"][0]
            key = (run.name, item, arm, seed)
            generated: Generated | None = self.images.get(key)
            image = None if generated is None else generated.load()
            scores = _score_lines(self.scores.get(key))
            made = "" if generated is not None else " (not generated)"
            engine = ", preview engine (random weights)" if run.preview else ""
            tiles.append(Tile(image, (f"{name}{made}", f"seed {seed}{engine}", *scores)))
        return tiles


def _score_lines(line: dict[str, Any] | None) -> list[str]:
    if line is None:
        return ["not scored"]
    values = [(m.label, v) for m in METRICS if (v := line.get(m.name)) is not None]
    return [f"{header} {value:.3f}" for header, value in values] or ["no score"]


def _sheet(title: list[str], refs: list[Tile], arms: list[Tile]) -> Image.Image:
    font = _font()
    columns = min(MAX_COLUMNS, max(len(refs), len(arms), 1))
    header = _text_block([*title, "references:"], columns, font)
    parts = [header, _grid(refs, columns, font), _text_block(["arms:"], columns, font)]
    parts.append(_grid(arms, columns, font))
    width = max(p.width for p in parts)
    sheet = Image.new("RGB", (width, sum(p.height for p in parts)), _BACKGROUND)
    y = 0
    for part in parts:
        sheet.paste(part, (0, y))
        y += part.height
    return sheet


def _grid(tiles: list[Tile], columns: int, font: ImageFont.ImageFont) -> Image.Image:
    lines = max((len(t.caption) for t in tiles), default=0)
    cell_w, cell_h = TILE + PAD, TILE + PAD + lines * LINE
    rows = max(1, -(-len(tiles) // columns))
    grid = Image.new("RGB", (columns * cell_w + PAD, rows * cell_h + PAD), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i, tile in enumerate(tiles):
        x, y = PAD + (i % columns) * cell_w, PAD + (i // columns) * cell_h
        if tile.image is None:
            draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), fill=_EMPTY)
        else:
            thumb = ImageOps.contain(tile.image, (TILE, TILE))
            grid.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
        for j, text in enumerate(tile.caption):
            draw.text((x, y + TILE + 2 + j * LINE), _fit(text, font), fill=_INK, font=font)
    return grid


def _text_block(lines: list[str], columns: int, font: ImageFont.ImageFont) -> Image.Image:
    block = Image.new("RGB", (columns * (TILE + PAD) + PAD, PAD + len(lines) * LINE), _BACKGROUND)
    draw = ImageDraw.Draw(block)
    for i, text in enumerate(lines):
        shown = _fit(text, font, columns * TILE)
        draw.text((PAD, PAD // 2 + i * LINE), shown, fill=_INK, font=font)
    return block


def _fit(text: str, font: ImageFont.ImageFont, width: int = TILE) -> str:
    """``text`` cut with '...' to ``width`` pixels (control characters shown as '?')."""
    text = "".join(c if c.isprintable() else "?" for c in text[:300])
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype(str(FONT_FILE), FONT_SIZE)  # type: ignore[return-value]
    except OSError:  # a matplotlib without its fonts: Pillow's own
        return ImageFont.load_default()  # type: ignore[return-value]
