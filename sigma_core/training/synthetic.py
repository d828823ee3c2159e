"""A small multi-reference dataset drawn by code, for tests and demo runs: licence-clean,
deterministic for a seed, and easy enough that a tiny model's loss visibly falls on it.

Each sample binds two or three references: a coloured shape on white (``<subject>``), a flat
or striped backdrop (``<background>``) and, in most samples, a marker on grey (``<layout>``).
The target is the backdrop with the shape, in its colour, drawn where the marker is (in the
centre when there is no layout reference). Prompts are SIGMA's raw syntax, with the wording
and the order of the references varied.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sigma_core.errors import SigmaInputError
from sigma_core.geometry import TOKEN_STRIDE
from sigma_core.inputs.composition import Composition, Reference
from sigma_core.inputs.preset import preset_to_dict

COLOURS = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (240, 130, 20),
    "black": (25, 25, 25),
}
BACKDROPS = {  # light colours, so every shape colour stands out on them
    "pale blue": (190, 215, 245),
    "cream": (245, 235, 200),
    "mint": (200, 240, 215),
    "pink": (245, 205, 220),
    "light grey": (215, 215, 215),
}
SHAPES = ("circle", "square", "triangle", "diamond")
MARKER_GREY = (128, 128, 128)
MARKER_COLOUR = (255, 255, 255)

# {subject}, {background}, {layout} are the triples "<attr> words <image_k>".
_WITH_LAYOUT = (
    "Place {subject} on {background} at {layout}",
    "Put {subject} onto {background}, at {layout}",
    "On {background}, draw {subject} at {layout}",
    "At {layout}, place {subject} over {background}",
    "Draw {subject} at {layout} on {background}",
)
_CENTRED = (
    "Place {subject} in the centre of {background}",
    "Centre {subject} on {background}",
    "On {background}, draw {subject} in the middle",
)

Sample = tuple[str, list[Image.Image], Image.Image]


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 2 * TOKEN_STRIDE or size % TOKEN_STRIDE:
        raise SigmaInputError(
            f"size: {size!r} must be a multiple of {TOKEN_STRIDE} of at least {2 * TOKEN_STRIDE}"
        )


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill: tuple
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def _backdrop(size: int, colour: tuple, stripes: str | None, rng: random.Random) -> Image.Image:
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = colour
    if stripes is not None:
        period = size // rng.choice((4, 8))
        band = (np.arange(size) // (period // 2)) % 2 == 1
        darker = (np.asarray(colour) * 0.8).astype(np.uint8)
        if stripes == "horizontal":
            pixels[band, :] = darker
        else:
            pixels[:, band] = darker
    return Image.fromarray(pixels)


def make_sample(rng: random.Random, size: int = 64) -> Sample:
    """One sample: ``(prompt, references in slot order, target)``, all images RGB ``size``
    pixels square. Everything drawn comes from ``rng``, so a seed fixes the sample."""
    _check_size(size)
    colour = rng.choice(sorted(COLOURS))
    shape = rng.choice(SHAPES)
    backdrop = rng.choice(sorted(BACKDROPS))
    stripes = rng.choice((None, None, "horizontal", "vertical"))
    with_layout = rng.random() < 0.75

    subject_ref = Image.new("RGB", (size, size), (255, 255, 255))
    _draw_shape(
        ImageDraw.Draw(subject_ref), shape, size // 2, size // 2, size * 3 // 8, COLOURS[colour]
    )
    background = _backdrop(size, BACKDROPS[backdrop], stripes, rng)

    r = max(size // 8, 3)
    cx = cy = size // 2
    refs = {"subject": subject_ref, "background": background}
    if with_layout:
        cx, cy = rng.randint(r + 1, size - r - 2), rng.randint(r + 1, size - r - 2)
        layout = Image.new("RGB", (size, size), MARKER_GREY)
        m = max(size // 32, 1)
        ImageDraw.Draw(layout).rectangle((cx - m, cy - m, cx + m, cy + m), fill=MARKER_COLOUR)
        refs["layout"] = layout
    target = background.copy()
    _draw_shape(ImageDraw.Draw(target), shape, cx, cy, r, COLOURS[colour])

    roles = list(refs)
    if rng.random() < 0.3:
        rng.shuffle(roles)  # the slots need not follow the order of mention
    slot = {role: k for k, role in enumerate(roles, start=1)}
    kind = f"{stripes}-striped {backdrop}" if stripes else f"plain {backdrop}"
    phrases = {
        "subject": f"<subject> the {colour} {shape} from <image_{slot['subject']}>",
        "background": f"<background> the {kind} backdrop of <image_{slot['background']}>",
    }
    if with_layout:
        phrases["layout"] = f"<layout> the spot marked in <image_{slot['layout']}>"
    template = rng.choice(_WITH_LAYOUT if with_layout else _CENTRED)
    return template.format(**phrases), [refs[role] for role in roles], target


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _rows(rng: random.Random, n: int, size: int) -> dict[str, list]:
    instructions, images = [], []
    for _ in range(n):
        prompt, refs, target = make_sample(rng, size)
        instructions.append([[prompt]])
        images.append([png_bytes(im) for im in [*refs, target]])
    return {"instruction_list": instructions, "image_list": images}


def _write_table(path: Path, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("instruction_list", pa.list_(pa.list_(pa.string()))),
            ("image_list", pa.list_(pa.binary())),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), path)


def write_parquet(path: str | Path, n: int, *, size: int = 64, seed: int = 0) -> Path:
    """One shard of ``n`` rows in SIGMA's exact format: ``instruction_list=[[prompt]]``,
    ``image_list=[reference PNGs..., target PNG]``."""
    _check_size(size)
    path = Path(path)
    _write_table(path, _rows(random.Random(seed), n, size))
    return path


def write_shards(
    folder: str | Path, n: int, *, size: int = 64, seed: int = 0, rows_per_shard: int = 500
) -> list[Path]:
    """``n`` rows as ``train-00000.parquet``, ... of at most ``rows_per_shard`` rows each."""
    _check_size(size)
    if rows_per_shard < 1:
        raise SigmaInputError(f"rows_per_shard: {rows_per_shard} must be at least 1")
    folder, rng, paths = Path(folder), random.Random(seed), []
    for i, start in enumerate(range(0, n, rows_per_shard)):
        path = folder / f"train-{i:05d}.parquet"
        _write_table(path, _rows(rng, min(rows_per_shard, n - start), size))
        paths.append(path)
    return paths


def write_manifest(
    folder: str | Path, n: int, *, size: int = 64, seed: int = 0, name: str = "train.jsonl"
) -> Path:
    """``n`` samples in the project's format: ``folder/name``, one preset per line with a
    ``"target"``, and the PNGs in ``folder/images/`` (paths relative to the manifest)."""
    _check_size(size)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        prompt, refs, target = make_sample(rng, size)
        names = [f"images/{i:06d}-{k}.png" for k in range(1, len(refs) + 1)]
        for rel, im in zip([*names, f"images/{i:06d}-target.png"], [*refs, target], strict=True):
            (folder / rel).write_bytes(png_bytes(im))
        comp = Composition(prompt, tuple(Reference(k, rel) for k, rel in enumerate(names, 1)))
        entry = preset_to_dict(comp) | {"target": f"images/{i:06d}-target.png"}
        lines.append(json.dumps(entry, ensure_ascii=False))
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
