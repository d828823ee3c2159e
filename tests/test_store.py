"""Storing compositions: JSON read safely, one size limit for writer and reader, only the placed
references embedded (in a format that loads back to the same pixels), and output files checked
before a run and written atomically, never replacing a file by surprise."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from sigma_core.errors import PresetError, SigmaInputError, SigmaResourceError
from sigma_core.inputs import (
    Composition,
    Reference,
    check_output_path,
    embeddable_bytes,
    load_preset,
    loads_preset,
    parse_json,
    read_png_composition,
    save_preset,
    write_png,
)
from sigma_core.inputs.png import find_png_text
from sigma_core.inputs.preset import PNG_METADATA_KEY, dumps_preset, json_depth
from sigma_core.limits import MAX_JSON_DEPTH
from sigma_core.runtime.output import SigmaOutput


def _noise(size: tuple[int, int] = (48, 32), mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), np.uint8)
    return Image.fromarray(pixels, mode)


def _encoded(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _preset_text(**settings: object) -> str:
    return json.dumps(
        {
            "format": "sigma-studio/preset",
            "version": 1,
            "prompt": "a photo",
            "references": [],
            "settings": settings,
        }
    )


def _stored(png: Path) -> dict:
    """The composition JSON a PNG carries, read without validating it."""
    text = find_png_text(png, PNG_METADATA_KEY)
    assert text is not None
    return json.loads(text)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


# ----------------------------------------------------------------------------- 1. JSON


def test_deep_json_preset_is_refused_before_parsing():
    with pytest.raises(PresetError) as info:
        loads_preset("[" * 100_000)
    msg = str(info.value)
    assert "nested 100000 levels deep" in msg and f"limit of {MAX_JSON_DEPTH}" in msg


def test_deep_json_preset_file_names_the_file(tmp_path: Path):
    path = tmp_path / "deep.json"
    path.write_text('{"format": "sigma-studio/preset", "name": ' + "[" * 50_000 + "]" * 50_000)
    with pytest.raises(PresetError, match=f"^{path}: .*nested 50001 levels deep"):
        load_preset(path)


def test_deep_json_in_png_metadata_is_refused(tmp_path: Path):
    info = PngInfo()
    info.add_itxt(PNG_METADATA_KEY, "[" * 100_000 + "]" * 100_000, zip=True)
    path = tmp_path / "deep.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(PresetError, match=r"stored composition.*nested 100000 levels deep"):
        read_png_composition(path)


def test_json_depth_limit_is_inclusive():
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "t") is not None
    deeper = MAX_JSON_DEPTH + 1
    with pytest.raises(PresetError, match=f"nested {deeper} levels deep"):
        parse_json("[" * deeper + "]" * deeper, "t")


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('["[[[[", {"a": "}}]]"}]', 2),  # brackets in strings do not count
        (r'["a \" [[[ \" b", [1]]', 2),  # nor behind an escaped quote
        (r'["a\\", [[1]]]', 3),  # an escaped backslash does not escape the quote
        ('{"unterminated": "[[[[', 1),
        ('{"\u00e9[": ["\u00fc", {"x": 1}]}', 3),  # non-ASCII text
        ("42", 0),
    ],
)
def test_json_depth_skips_strings_and_escapes(text: str, depth: int):
    assert json_depth(text) == depth


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(literal: str):
    with pytest.raises(PresetError, match=f"preset: {literal} is not a number a preset accepts"):
        loads_preset(_preset_text(cfg_text_scale="X").replace('"X"', literal))


def test_float_overflowing_to_infinity_is_refused():
    with pytest.raises(PresetError, match="the number 1e999 is too large"):
        loads_preset(_preset_text(cfg_text_scale="X").replace('"X"', "1e999"))


def test_5000_digit_integer_is_a_preset_error():
    with pytest.raises(PresetError, match="an integer of 5000 digits is too long to read"):
        loads_preset(_preset_text(seed="X").replace('"X"', "7" * 5000))


def test_malformed_json_keeps_line_and_column():
    with pytest.raises(PresetError, match="preset: malformed JSON at line 2, column 1"):
        loads_preset('{"a": 1,\n}')


# ----------------------------------------------------------------------------- 2. size limit


def test_composition_over_the_limit_is_stored_without_images(tmp_path: Path):
    comp = Composition("a photo of [1]", [Reference(1, _noise((64, 64)), ("<style>",))])
    warnings: list[str] = []
    out = write_png(
        Image.new("RGB", (8, 8)), comp, tmp_path / "o.png", max_bytes=8_000, warnings=warnings
    )
    assert len(warnings) == 1
    assert warnings[0].startswith("the references are not embedded: ")
    assert "over the 8,000 bytes limit" in warnings[0]
    back = read_png_composition(out, max_bytes=8_000)
    assert back.prompt == comp.prompt and back.reference(1).image is None
    assert back.reference(1).attributes == ("<style>",)


def test_composition_within_the_limit_keeps_its_images(tmp_path: Path):
    comp = Composition("a photo of [1]", [Reference(1, _noise((64, 64)), ("<style>",))])
    warnings: list[str] = []
    out = write_png(Image.new("RGB", (8, 8)), comp, tmp_path / "o.png", warnings=warnings)
    assert warnings == []
    assert read_png_composition(out).reference(1).image.startswith("data:image/png;base64,")


def test_reader_says_a_large_chunk_is_larger_than_the_limit(tmp_path: Path):
    """A chunk too long to hold the limit's worth of text: refused from its length alone."""
    comp = Composition("a photo of [1]", [Reference(1, _noise((128, 128)), ("<style>",))])
    out = write_png(Image.new("RGB", (8, 8)), comp, tmp_path / "o.png")
    with pytest.raises(PresetError) as info:
        read_png_composition(out, max_bytes=1_000)
    msg = str(info.value)
    assert "larger than the 1,000 bytes limit" in msg and "as stored in the PNG" in msg
    assert "holds no" not in msg


def test_reader_says_a_text_over_the_limit_once_decompressed_is_larger(tmp_path: Path):
    """A short compressed chunk whose text is over the limit: refused while inflating."""
    comp = Composition("a photo of [1] " + "and more " * 400, [Reference(1, None, ("<style>",))])
    out = write_png(Image.new("RGB", (8, 8)), comp, tmp_path / "o.png")
    assert out.stat().st_size < 5_000
    with pytest.raises(PresetError, match="is larger than the 2,000 bytes limit"):
        read_png_composition(out, max_bytes=2_000)


def test_save_preset_over_the_limit_is_refused(tmp_path: Path):
    comp = Composition("a photo of [1]", [Reference(1, _noise((64, 64)), ("<style>",))])
    with pytest.raises(PresetError, match="larger than the 1,000 bytes limit"):
        save_preset(comp, tmp_path / "p.json", embed_images=True, max_bytes=1_000)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 3. embedding


def test_a_preset_growing_after_its_size_check_is_refused_not_read_whole(tmp_path, monkeypatch):
    """The read itself is bounded (one byte past the limit), not only the size checked first:
    a file that grows between the two is refused."""
    import sigma_core.inputs.bounded as bounded
    import sigma_core.inputs.preset as preset

    path = tmp_path / "p.json"
    path.write_text(_preset_text())
    monkeypatch.setattr(preset, "MAX_COMPOSITION_BYTES", 2**20)
    size_of = bounded.regular_file_size

    def then_grows(where: Path, *args: object) -> int:
        result = size_of(where, *args)
        if where == path:
            with open(path, "a") as f:
                f.write(" " * 2**20)  # JSON still: whitespace
        return result

    monkeypatch.setattr(bounded, "regular_file_size", then_grows)
    with pytest.raises(PresetError, match=r"p\.json: a preset is at most 1 MB"):
        load_preset(path)


def test_unused_slot_is_not_embedded(tmp_path: Path):
    _noise(seed=1).save(tmp_path / "used.png")
    secret = _encoded(_noise(seed=2), "PNG")
    (tmp_path / "private.png").write_bytes(secret)
    preset = tmp_path / "p.json"
    preset.write_text(
        json.dumps(
            {
                "format": "sigma-studio/preset",
                "version": 1,
                "prompt": "a photo of [1]",
                "references": [
                    {"slot": 1, "image": "used.png", "attributes": ["<style>"]},
                    {"slot": 2, "image": "private.png", "attributes": ["<id>"]},
                ],
                "settings": {},
            }
        )
    )
    out = write_png(Image.new("RGB", (8, 8)), load_preset(preset), tmp_path / "o.png")
    assert [r["slot"] for r in _stored(out)["references"]] == [1]
    assert base64.b64encode(secret)[:200] not in out.read_bytes().replace(b"\n", b"")
    assert [r.slot for r in read_png_composition(out).references] == [1]


def _gif() -> bytes:
    return _encoded(_noise().quantize(32), "GIF", transparency=5)


def _grey16() -> Image.Image:
    return Image.fromarray((np.arange(48 * 32, dtype=np.uint16) * 40).reshape(32, 48))


def _tiff() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the upright image is 32x48
    return _encoded(_noise(mode="RGBA"), "TIFF", exif=exif)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("ref.gif", _gif()),
        ("ref.bmp", _encoded(_noise(mode="RGBA"), "BMP")),
        ("ref.tif", _tiff()),
        ("grey16.tif", _encoded(_grey16(), "TIFF")),
        ("cmyk.tif", _encoded(_noise().convert("CMYK"), "TIFF")),
    ],
)
def test_gif_bmp_tiff_references_save_and_load_back_the_same(tmp_path: Path, name, data):
    (tmp_path / name).write_bytes(data)
    ref = Reference(1, name, ("<style>",), crop=(2, 3, 30, 31))
    comp = Composition("a photo of [1]", [ref], base_dir=tmp_path, asset_dirs=())
    out = write_png(Image.new("RGB", (8, 8)), comp, tmp_path / "o.png")
    stored = _stored(out)["references"][0]["image"]
    assert stored.startswith("data:image/png;base64,")  # re-encoded, losslessly
    back = read_png_composition(out, asset_dirs=[])
    assert back.reference(1).crop == (2, 3, 30, 31)
    original = comp.load_image(ref)
    assert original.size == (28, 28)
    np.testing.assert_array_equal(_pixels(back.load_image(back.reference(1))), _pixels(original))


def test_png_jpeg_webp_references_are_embedded_as_they_are(tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 8
    files = {
        "a.png": _encoded(_noise(), "PNG"),
        "b.jpg": _encoded(_noise(), "JPEG", exif=exif),
        "c.webp": _encoded(_noise(), "WEBP", lossless=True),
    }
    refs = []
    for slot, (name, data) in enumerate(files.items(), start=1):
        (tmp_path / name).write_bytes(data)
        refs.append(Reference(slot, name, ("<style>",)))
    comp = Composition("[1] [2] [3]", refs, base_dir=tmp_path, asset_dirs=())
    out = write_png(Image.new("RGB", (8, 8)), comp, tmp_path / "o.png")
    for stored, data in zip(_stored(out)["references"], files.values(), strict=True):
        assert base64.b64decode(stored["image"].partition(",")[2]) == data


def test_api_images_are_embedded_upright_with_their_alpha(tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = Image.open(io.BytesIO(_encoded(_noise(), "JPEG", exif=exif)))
    grey_alpha = _noise(mode="RGBA").convert("LA")
    floats = np.random.default_rng(3).random((32, 48, 3), dtype=np.float32)
    sources = [rotated, grey_alpha, floats, _gif()]
    refs = [
        Reference(slot, src, ("<style>",), crop=(0, 0, 30, 30))
        for slot, src in enumerate(sources, start=1)
    ]
    comp = Composition("[1] [2] [3] [4]", refs)
    assert comp.load_image(refs[0]).size == (30, 30)  # the crop fits only the upright image
    out = write_png(Image.new("RGB", (8, 8)), comp, tmp_path / "o.png")
    back = read_png_composition(out)
    for ref in refs:
        np.testing.assert_array_equal(
            _pixels(back.load_image(back.reference(ref.slot))), _pixels(comp.load_image(ref))
        )
    assert ImageOps.exif_transpose(rotated).size == (32, 48)


def test_embeddable_bytes_keeps_png_bytes_and_reencodes_gif():
    png = _encoded(_noise(), "PNG")
    assert embeddable_bytes(png) == png
    assert embeddable_bytes(_gif()).startswith(b"\x89PNG\r\n\x1a\n")


# ----------------------------------------------------------------------------- 4. output path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_check_output_path_accepts_a_new_png(out_dir: Path):
    assert check_output_path(out_dir / "a.png", overwrite=False) == out_dir / "a.png"
    assert check_output_path(str(out_dir / "A.PNG"), overwrite=False) == out_dir / "A.PNG"


def test_check_output_path_relative_name(out_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(out_dir)
    assert check_output_path("a.png", overwrite=False) == Path("a.png")


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("", "output path is empty; give a file name ending in .png"),
        (".", "is a folder; give a file name in it"),
        ("missing/a.png", "output folder '{d}/missing' does not exist; create it first"),
        ("file.txt/a.png", "output folder '{d}/file.txt' is not a folder: a file is in the way"),
        ("file.txt/sub/a.png", "is not a folder: a file is in the way"),
        ("a\0b.png", "cannot be used (embedded null byte)"),
        ("x" * 300 + ".png", "cannot be used (File name too long)"),
        ("a.jpg", "does not end in .png; the output is always a PNG image"),
        ("a", "does not end in .png"),
        ("taken.png", "output file '{d}/taken.png' already exists; pass --overwrite"),
    ],
)
def test_check_output_path_refusals(out_dir: Path, monkeypatch, name: str, needle: str):
    (out_dir / "file.txt").write_text("x")
    (out_dir / "taken.png").write_bytes(b"precious")
    monkeypatch.chdir(out_dir)
    path = name if name in ("", ".") else str(out_dir / name)
    with pytest.raises(SigmaInputError) as info:
        check_output_path(path, overwrite=False)
    assert needle.format(d=out_dir) in str(info.value)
    assert (out_dir / "taken.png").read_bytes() == b"precious"


def test_check_output_path_existing_file_with_overwrite(out_dir: Path):
    (out_dir / "taken.png").write_bytes(b"old")
    assert check_output_path(out_dir / "taken.png", overwrite=True) == out_dir / "taken.png"


def test_check_output_path_not_a_regular_file():
    with pytest.raises(SigmaInputError, match="exists and is not a regular file"):
        check_output_path("/dev/null", overwrite=True)


def test_check_output_path_unwritable_folder(out_dir: Path, monkeypatch):
    # chmod does not stop root, so the permission check itself answers "no"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SigmaInputError, match="is not writable \\(permission denied\\)"):
        check_output_path(out_dir / "a.png", overwrite=False)


def test_check_output_path_not_enough_disk_space(out_dir: Path):
    with pytest.raises(SigmaResourceError, match=r"not enough free disk space in .* needed"):
        check_output_path(out_dir / "a.png", overwrite=False, needed_bytes=2**62)


# ----------------------------------------------------------------------------- 4. writing


def _comp() -> Composition:
    """A composition whose reference is embedded as it is (PNG bytes), never re-encoded."""
    return Composition("a photo of [1]", [Reference(1, _encoded(_noise(), "PNG"), ("<style>",))])


def test_no_clobber_when_the_target_appears_after_the_check(out_dir: Path):
    target = check_output_path(out_dir / "img.png", overwrite=False)
    target.write_bytes(b"written by someone else during the run")
    warnings: list[str] = []
    written = write_png(Image.new("RGB", (8, 8)), _comp(), target, warnings=warnings)
    assert written == out_dir / "img-2.png"
    assert target.read_bytes() == b"written by someone else during the run"
    assert read_png_composition(written).prompt == "a photo of [1]"
    assert warnings == [
        f"{target} appeared while the image was made; it is kept, and the image was saved as "
        f"{written}"
    ]
    again = write_png(Image.new("RGB", (8, 8)), _comp(), target)
    assert again == out_dir / "img-3.png"
    assert sorted(p.name for p in out_dir.iterdir()) == ["img-2.png", "img-3.png", "img.png"]


def test_no_clobber_without_hard_links(out_dir: Path, monkeypatch):
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (out_dir / "img.png").write_bytes(b"old")
    written = write_png(Image.new("RGB", (8, 8)), _comp(), out_dir / "img.png")
    assert written == out_dir / "img-2.png" and (out_dir / "img.png").read_bytes() == b"old"
    assert read_png_composition(written).prompt == "a photo of [1]"
    assert sorted(p.name for p in out_dir.iterdir()) == ["img-2.png", "img.png"]


def test_overwrite_replaces(out_dir: Path):
    (out_dir / "img.png").write_bytes(b"old")
    written = write_png(Image.new("RGB", (8, 8)), _comp(), out_dir / "img.png", overwrite=True)
    assert written == out_dir / "img.png"
    assert read_png_composition(written).prompt == "a photo of [1]"
    assert sorted(p.name for p in out_dir.iterdir()) == ["img.png"]


def _failing_save(err: int):
    def save(self: Image.Image, fp: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half an image")
        raise OSError(err, os.strerror(err))

    return save


def test_disk_full_is_a_resource_error_and_leaves_nothing(out_dir: Path, monkeypatch):
    (out_dir / "img.png").write_bytes(b"old")
    image, comp = Image.new("RGB", (8, 8)), _comp()
    monkeypatch.setattr(Image.Image, "save", _failing_save(errno.ENOSPC))
    with pytest.raises(SigmaResourceError) as info:
        write_png(image, comp, out_dir / "img.png", overwrite=True)
    assert str(info.value).startswith(f"disk full while writing '{out_dir}/img.png'")
    assert sorted(p.name for p in out_dir.iterdir()) == ["img.png"]  # no temporary file
    assert (out_dir / "img.png").read_bytes() == b"old"


def test_other_write_errors_name_the_path_and_the_reason(out_dir: Path, monkeypatch):
    image, comp = Image.new("RGB", (8, 8)), _comp()
    monkeypatch.setattr(Image.Image, "save", _failing_save(errno.EACCES))
    with pytest.raises(SigmaInputError) as info:
        write_png(image, comp, out_dir / "img.png")
    assert str(info.value) == f"cannot write '{out_dir}/img.png': Permission denied"
    assert list(out_dir.iterdir()) == []


def test_save_preset_replaces_atomically(out_dir: Path):
    comp = Composition("a photo of [1]", [Reference(1, _noise(), ("<style>",))])
    first = save_preset(comp, out_dir / "p.json", embed_images=True)
    second = save_preset(Composition("another"), out_dir / "p.json")
    assert first == second and loads_preset(second.read_text()).prompt == "another"
    assert [p.name for p in out_dir.iterdir()] == ["p.json"]
    assert dumps_preset(Composition("another")) == second.read_text()


def _output(comp: Composition) -> SigmaOutput:
    image = Image.new("RGB", (8, 8), "red")
    return SigmaOutput([image], latents=torch.zeros(1), seed=1, composition=comp, plan=None)


def test_sigma_output_save_reports_warnings(out_dir: Path):
    out = _output(_comp())
    assert out.save(out_dir / "r.png") == out_dir / "r.png" and out.warnings == []
    assert out.save(out_dir / "r.png") == out_dir / "r-2.png"
    assert out.warnings and "saved as" in out.warnings[0] and "r-2.png" in out.warnings[0]
    assert out.save(out_dir / "r.png", overwrite=True) == out_dir / "r.png"
    assert len(out.warnings) == 1


def test_sigma_output_save_warns_when_a_reference_is_gone(tmp_path: Path):
    _noise().save(tmp_path / "ref.png")
    comp = Composition("a photo of [1]", [Reference(1, "ref.png", ("<style>",))], base_dir=tmp_path)
    (tmp_path / "ref.png").unlink()  # deleted during the run: the image is still saved
    out = _output(comp)
    path = out.save(tmp_path / "r.png")
    assert read_png_composition(path).reference(1).image is None
    assert out.warnings[0].startswith("the references are not embedded: references[slot 1]")
