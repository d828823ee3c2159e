"""Regenerate the example images in assets/ and the example presets in presets/.

Everything shipped there must be licence-clean and reproducible, so this script is the only
source of those files: photographs come from scikit-image's bundled sample data (public domain or
CC0, as its docstrings state), the layout sketch and the style swatch are drawn here.
scikit-image is a development tool for this script only, not a runtime dependency.

    python -m scripts.make_assets      (from the repository root)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sigma_core.inputs import PROJECT_ASSETS, Composition, Reference, Settings, save_preset

ROOT = Path(__file__).resolve().parent.parent
ASSETS = PROJECT_ASSETS
PRESETS = ROOT / "presets"
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Asset:
    """One file in assets/ and what LICENSES.md says about it."""

    file: str
    source: str  # skimage.data function, or "drawn"
    description: str
    credit: str  # quoted from scikit-image's docstring, or our own statement
    license: str


SKIMAGE_ASSETS = (
    Asset(
        "astronaut.png",
        "astronaut",
        "Eileen Collins, NASA astronaut, portrait (512x512).",
        '"This image was downloaded from the NASA Great Images database '
        "<https://flic.kr/p/r9qvLn>. No known copyright restrictions, released into the public "
        'domain."',
        "Public domain (NASA)",
    ),
    Asset(
        "chelsea.png",
        "chelsea",
        "Chelsea the cat (451x300).",
        '"No copyright restrictions. CC0 by the photographer (Stefan van der Walt)."',
        "CC0",
    ),
    Asset(
        "coffee.png",
        "coffee",
        "A cup of coffee on a saucer, on a wooden table (600x400).",
        '"This photograph is courtesy of Pikolo Espresso Bar. [...] No copyright restrictions. '
        'CC0 by the photographer (Rachel Michetti)."',
        "CC0",
    ),
    Asset(
        "rocket.jpg",
        "rocket",
        "Falcon 9 carrying DSCOVR lifting off from Cape Canaveral (640x427).",
        '"Launch photo of DSCOVR on Falcon 9 by SpaceX. [...] This image was downloaded from '
        "SpaceX Photos <https://www.flickr.com/photos/spacexphotos/16511594820/>. The image was "
        'captured by SpaceX and released in the public domain."',
        "Public domain (SpaceX)",
    ),
)

DRAWN_ASSETS = (
    Asset(
        "layout_sketch.png",
        "drawn",
        "Layout sketch for the <layout> preset: labelled boxes (woman, cat, rocket) on white "
        "(1024x768).",
        "Drawn by scripts/make_assets.py.",
        "CC0",
    ),
    Asset(
        "style_brushstrokes.png",
        "drawn",
        "Style swatch for the <style> preset: bold swirling brush strokes in a blue and "
        "yellow palette (768x512).",
        "Drawn by scripts/make_assets.py (seeded, so it is the same on every run).",
        "CC0",
    ),
)


# ----------------------------------------------------------------------------- images


def save_skimage_assets(out: Path) -> None:
    """Save the sample photographs; JPEG sources stay JPEG so the folder stays small."""
    from skimage import data

    for asset in SKIMAGE_ASSETS:
        img = Image.fromarray(getattr(data, asset.source)())
        if asset.file.endswith(".jpg"):
            img.save(out / asset.file, quality=JPEG_QUALITY)
        else:
            img.save(out / asset.file, optimize=True)


LAYOUT_BOXES = (
    # label, (left, top, right, bottom), colour
    ("woman", (90, 170, 390, 700), (52, 101, 164)),
    ("cat", (430, 470, 660, 700), (230, 126, 34)),
    ("rocket", (720, 70, 930, 700), (39, 174, 96)),
)


def draw_layout_sketch(size: tuple[int, int] = (1024, 768)) -> Image.Image:
    """A layout the way users sketch one: a horizon line and labelled, tinted boxes."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img, "RGBA")
    font = ImageFont.load_default(size=34)
    draw.line([(0, 560), (size[0], 560)], fill=(170, 170, 170), width=3)
    draw.text((940, 530), "horizon", fill=(140, 140, 140), font=ImageFont.load_default(size=20))
    for label, box, colour in LAYOUT_BOXES:
        draw.rectangle(box, fill=(*colour, 60), outline=colour, width=6)
        draw.text((box[0] + 14, box[1] + 10), label, fill=colour, font=font)
    return img


STYLE_PALETTE = (
    (22, 48, 112),
    (38, 84, 160),
    (92, 140, 200),
    (240, 200, 60),
    (250, 226, 120),
    (20, 28, 60),
    (230, 236, 240),
)


def draw_style_swatch(size: tuple[int, int] = (768, 512), seed: int = 7) -> Image.Image:
    """Thick strokes that follow a swirling flow field, each made of jittered bristle lines,
    so the swatch reads as paint, not as a photograph."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, (30, 56, 120))
    draw = ImageDraw.Draw(img)

    def angle(x: float, y: float) -> float:
        return math.sin(x / 97.0) * 1.7 + math.cos(y / 71.0) * 1.3 + math.sin((x + y) / 151.0) * 0.9

    for _ in range(900):
        x, y = rng.uniform(-20, w + 20), rng.uniform(-20, h + 20)
        width = int(rng.integers(8, 20))
        base = np.array(STYLE_PALETTE[rng.integers(len(STYLE_PALETTE))], dtype=float)
        colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 12, 3), 0, 255))
        path = [(x, y, angle(x, y))]
        for _ in range(int(rng.integers(6, 16))):
            a = angle(x, y)
            x, y = x + math.cos(a) * 9, y + math.sin(a) * 9
            path.append((x, y, a))
        draw.line([(px, py) for px, py, _ in path], fill=colour, width=width, joint="curve")
        for offset in np.linspace(-width / 2, width / 2, 5):
            shade = rng.uniform(0.7, 1.3)
            bristle = tuple(int(min(255, c * shade)) for c in colour)
            line = [(px - math.sin(a) * offset, py + math.cos(a) * offset) for px, py, a in path]
            draw.line(line, fill=bristle, width=2)
    return img


def write_licenses(out: Path) -> None:
    """assets/LICENSES.md, generated from the same records as the files."""
    lines = [
        "# Licences of the files in assets/",
        "",
        "Generated by `python -m scripts.make_assets`; run it again to regenerate every file",
        "here. This is the checkout's top-level `assets/`; an installed package holds the same",
        "files as `sigma_core/assets/` (see `[tool.setuptools.package-dir]` in pyproject.toml).",
        "Photographs come from scikit-image's sample data (`skimage.data`, scikit-image 0.26); the",
        "credit column quotes that function's docstring. scikit-image's own code is BSD-3-Clause;",
        "the licence of each picture is the one its docstring states.",
        "Photographs of people may carry personality rights independent of copyright.",
        "",
        "| File | Source | Content | Credit | Licence |",
        "|---|---|---|---|---|",
    ]
    for a in (*SKIMAGE_ASSETS, *DRAWN_ASSETS):
        source = (
            "drawn by `scripts/make_assets.py`"
            if a.source == "drawn"
            else (f"`skimage.data.{a.source}()`")
        )
        desc = a.description.replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{a.file}` | {source} | {desc} | {a.credit} | {a.license} |")
    (out / "LICENSES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- presets


def write_presets(out: Path) -> list[Path]:
    """The example presets, written through save_preset so they are canonical."""
    presets = {
        "combine_astronaut_cat_rocket.json": Composition(
            name="Astronaut, cat and rocket launch (combinatorial)",
            prompt="A candid photo of [1] holding [2] in her arms, standing in front of [3]",
            references=[
                Reference(1, "astronaut.png", ("<id>",), "woman"),
                Reference(2, "chelsea.png", ("<subject>",), "tabby cat"),
                Reference(3, "rocket.jpg", ("<background>",), "rocket launch"),
            ],
        ),
        "stylize_cat_brushstrokes.json": Composition(
            name="Cat in swirling brushstrokes (stylization)",
            prompt="Repaint [1] as an oil painting with the bold brushstrokes and palette of [2]",
            references=[
                Reference(1, "chelsea.png", ("<subject>",), "the cat"),
                Reference(2, "style_brushstrokes.png", ("<style>",), "the swirling painting"),
            ],
        ),
        "select_coffee_cup.json": Composition(
            name="Coffee cup on the launch pad (selective extraction)",
            prompt=(
                "Isolate <select> the cup of coffee on its saucer in <image_1> and place it on "
                "a railing in front of <background> the rocket launch <image_2>"
            ),
            references=[
                Reference(1, "coffee.png", ("<select>",), "the cup of coffee"),
                Reference(2, "rocket.jpg", ("<background>",), "the rocket launch"),
            ],
        ),
        "layout_beach_sketch.json": Composition(
            name="Beach scene from a box sketch (layout)",
            prompt=(
                "A sunny beach photo arranged as [1]: a woman in the blue box, a cat in the "
                "orange box and a small rocket on the launch pad in the green box"
            ),
            references=[Reference(1, "layout_sketch.png", ("<layout>",), "the box sketch")],
            settings=Settings(size=(1024, 768)),
        ),
    }
    return [save_preset(comp, out / name) for name, comp in presets.items()]


def main() -> int:
    ASSETS.mkdir(exist_ok=True)
    save_skimage_assets(ASSETS)
    draw_layout_sketch().save(ASSETS / "layout_sketch.png", optimize=True)
    draw_style_swatch().save(ASSETS / "style_brushstrokes.png", optimize=True)
    write_licenses(ASSETS)
    written = write_presets(PRESETS)
    total = sum(p.stat().st_size for p in ASSETS.iterdir())
    print(
        f"{ASSETS.relative_to(ROOT)}/: {len(list(ASSETS.iterdir()))} files, {total / 2**20:.2f} MB"
    )
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
