"""Compositions, the preset format, its validation, and PNG metadata."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from sigma_core.errors import PresetError
from sigma_core.inputs import (
    Composition,
    Reference,
    Settings,
    composition as comp_mod,
    dumps_preset,
    images as images_mod,
    load_preset,
    loads_preset,
    preset as preset_mod,
    read_png_composition,
    save_preset,
    write_png,
)


def _png(path: Path, size=(64, 48), color=(200, 30, 30)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _preset_dict(**over) -> dict:
    data = {
        "format": "sigma-studio/preset",
        "version": 1,
        "name": "test",
        "prompt": "Put [2] in front of [1]",
        "references": [
            {"slot": 1, "image": "a.png", "attributes": ["<background>"], "entity": "a wall"},
            {"slot": 2, "image": "b.png", "attributes": ["identity"], "entity": "the man"},
        ],
        "settings": {},
    }
    data.update(over)
    return data


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "presets"
    d.mkdir()
    _png(d / "a.png")
    _png(d / "b.png", color=(10, 200, 10))
    return d


def _write(folder: Path, data: dict | str, name: str = "p.json") -> Path:
    p = folder / name
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return p


def _error(folder: Path, data: dict | str) -> str:
    with pytest.raises(PresetError) as e:
        load_preset(_write(folder, data), asset_dirs=[])
    return str(e.value)


# ----------------------------------------------------------------------------- defaults


def test_settings_defaults_are_sigmas():
    s = Settings()
    assert (s.num_timesteps, s.cfg_text_scale, s.cfg_img_scale) == (50, 4.0, 2.0)
    assert s.cfg_interval == (0.0, 1.0)
    assert (s.timestep_shift, s.cfg_renorm_type, s.cfg_renorm_min) == (3.0, "text_channel", 0.0)
    assert s.seed == 42 and s.size is None and s.mask and s.attribute_projection


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_timesteps": 1}, "settings.num_timesteps: 1 must be an integer from 2 to 1000"),
        ({"num_timesteps": 10**9}, "settings.num_timesteps: 1000000000 must be an integer from"),
        ({"cfg_text_scale": -1.0}, "settings.cfg_text_scale: -1.0 must be a number from 0 to 20"),
        ({"cfg_text_scale": 1e308}, "settings.cfg_text_scale: 1e+308 must be a number from 0"),
        ({"cfg_img_scale": 10**400}, "cfg_img_scale: an integer of about 400 digits must be"),
        ({"timestep_shift": 10**5000}, "timestep_shift: an integer of about 5000 digits"),
        ({"timestep_shift": 21.0}, "timestep_shift: 21.0 must be a number from 0.05 to 20.0"),
        ({"cfg_img_scale": -0.5}, "settings.cfg_img_scale"),
        ({"cfg_interval": (0.5, 1.5)}, "settings.cfg_interval"),
        ({"cfg_interval": (0.8, 0.2)}, "0 <= start <= end <= 1"),
        ({"size": (1000, 512)}, "width 1000 must be a multiple of 16"),
        ({"size": (512, 2048)}, "height 2048 must be a multiple of 16 between 64 and 1024"),
        ({"cfg_renorm_type": "chanel"}, "did you mean 'channel'?"),
        ({"cfg_renorm_type": "local"}, "is not one of global, channel, text_channel"),
        ({"timestep_shift": 0}, "settings.timestep_shift"),
        ({"seed": -3}, "settings.seed"),
        ({"mask": "yes"}, "settings.mask"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, needle):
    with pytest.raises(PresetError, match=None) as e:
        Settings(**kwargs)
    assert needle in str(e.value)


def test_all_setting_problems_reported_at_once():
    with pytest.raises(PresetError) as e:
        Settings(num_timesteps=0, cfg_text_scale=-1)
    assert "num_timesteps" in str(e.value) and "cfg_text_scale" in str(e.value)


# ----------------------------------------------------------------------------- round trips


def test_save_load_save_is_byte_identical(folder: Path):
    data = _preset_dict(settings={"size": [512, 768], "seed": None, "cfg_interval": [0, 1]})
    first = load_preset(_write(folder, data), asset_dirs=[])
    out1 = save_preset(first, folder / "one.json")
    second = load_preset(out1, asset_dirs=[])
    out2 = save_preset(second, folder / "two.json")
    assert out1.read_bytes() == out2.read_bytes()
    assert second == first
    assert second.settings.size == (512, 768) and second.settings.seed is None
    assert second.references[1].attributes == ("<id>",)  # alias normalised


def test_embedded_round_trip_is_byte_identical(folder: Path, tmp_path: Path):
    comp = load_preset(_write(folder, _preset_dict()), asset_dirs=[])
    elsewhere = tmp_path / "elsewhere"
    out1 = save_preset(comp, elsewhere / "e1.json", embed_images=True)
    text = out1.read_text()
    assert "data:image/png;base64," in text and "a.png" not in text
    again = load_preset(out1, asset_dirs=[])
    out2 = save_preset(again, elsewhere / "e2.json", embed_images=True)
    assert out1.read_bytes() == out2.read_bytes()
    # the embedded pixels are the original file's
    img = again.load_image(again.reference(2))
    assert img.getpixel((0, 0)) == (10, 200, 10)


def test_save_elsewhere_rewrites_paths_or_refuses(folder: Path, tmp_path: Path):
    comp = load_preset(_write(folder, _preset_dict()), asset_dirs=[])
    sub = folder / "sub"
    with pytest.raises(PresetError, match="outside the preset's folder"):
        save_preset(comp, sub / "x.json")  # a.png is not under sub/ nor assets/
    # saving next to the images keeps them relative
    out = save_preset(comp, folder / "same.json")
    assert json.loads(out.read_text())["references"][0]["image"] == "a.png"
    # images from assets/ stay assets-relative wherever the preset goes
    assets = tmp_path / "assets"
    assets.mkdir()
    _png(assets / "shared.png")
    c2 = Composition(
        "[1]", [Reference(1, "shared.png", ("<style>",))], base_dir=folder, asset_dirs=(assets,)
    )
    out = save_preset(c2, tmp_path / "far" / "y.json")
    assert json.loads(out.read_text())["references"][0]["image"] == "shared.png"
    assert load_preset(out, asset_dirs=[assets]).reference(1).image == "shared.png"


def test_from_json_accepts_text_and_api_images(folder: Path):
    text = json.dumps(_preset_dict(references=[], prompt="a red fox"))
    comp = loads_preset(text)
    assert comp.prompt == "a red fox"
    img = Image.new("RGB", (20, 10), (1, 2, 3))
    c = Composition("[1]", [Reference(1, img, ("<subject>",))])
    with pytest.raises(PresetError, match="save with embedded images"):
        dumps_preset(c, embed_images=False)
    back = loads_preset(dumps_preset(c, embed_images=True))
    assert back.load_image(back.reference(1)).getpixel((5, 5)) == (1, 2, 3)


def test_empty_slot_survives_a_round_trip(folder: Path):
    """Work in progress is never lost: an empty slot saves and loads."""
    data = _preset_dict()
    data["references"][1]["image"] = None
    comp = load_preset(_write(folder, data), asset_dirs=[])
    assert comp.reference(2).image is None
    assert json.loads(dumps_preset(comp))["references"][1]["image"] is None


def test_migration_hook_upgrades_old_versions(folder: Path, monkeypatch):
    """A future version 3 reader upgrades version 1 files through every step of _MIGRATIONS."""
    monkeypatch.setattr(preset_mod, "PRESET_VERSION", 3)

    def v2_to_v3(d: dict) -> dict:
        return {**d, "version": 3, "name": d["name"] + " (migrated)"}

    monkeypatch.setitem(preset_mod._MIGRATIONS, 2, v2_to_v3)
    comp = load_preset(_write(folder, _preset_dict()), asset_dirs=[])
    assert comp.name == "test (migrated)" and comp.settings.layout == "auto"


def test_version_1_presets_gain_the_auto_layout(folder: Path):
    """Version 2 added settings.layout; a version-1 file reads as "auto" (SIGMA's released
    inferencer on every checkpoint that existed then) and is written back as version 2."""
    old = _preset_dict(settings={"seed": 7, "mask": False})
    comp = load_preset(_write(folder, old), asset_dirs=[])
    assert comp.settings.layout == "auto" and comp.settings.seed == 7
    data = json.loads(dumps_preset(comp))
    assert data["version"] == 2 and data["settings"]["layout"] == "auto"
    assert "layout" not in old["settings"]  # the migration does not touch the caller's dict


@pytest.mark.parametrize("layout", ["inference", "training", "training-no-vit", "auto"])
def test_layout_round_trips(folder: Path, layout: str):
    data = _preset_dict(version=2, settings={"layout": layout})
    comp = load_preset(_write(folder, data), asset_dirs=[])
    assert comp.settings.layout == layout
    assert json.loads(dumps_preset(comp))["settings"]["layout"] == layout


def test_unknown_layout_is_refused_with_the_choices(folder: Path):
    msg = _error(folder, _preset_dict(version=2, settings={"layout": "trainin"}))
    assert "settings.layout: 'trainin' is not one of auto, inference, training" in msg
    assert "did you mean 'training'?" in msg
    assert "settings.layout" in _error(folder, _preset_dict(version=2, settings={"layout": [1]}))


# ----------------------------------------------------------------------------- bad presets


def test_malformed_json(folder: Path):
    msg = _error(folder, '{"format": "sigma-studio/preset", "version": 1,,}')
    assert "malformed JSON at line 1, column" in msg


def test_not_an_object(folder: Path):
    assert "expected a JSON object" in _error(folder, "[1, 2]")


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"prompt": 5}, "prompt: expected a string, got int"),
        ({"prompt": "   "}, "prompt: is empty"),
        ({"references": {"slot": 1}}, "references: expected a list, got an object"),
        ({"settings": []}, "settings: expected an object, got a list"),
        ({"settings": {"num_timesteps": "50"}}, "settings.num_timesteps: '50' must be an integer"),
        ({"settings": {"cfg_txt_scale": 4}}, "settings.cfg_txt_scale: unknown field; did you mean"),
        ({"settings": {"size": "big"}}, "settings.size"),
        ({"promt": "x"}, "promt: unknown field; did you mean 'prompt'?"),
    ],
)
def test_wrong_types_name_the_field(folder: Path, over, needle):
    assert needle in _error(folder, _preset_dict(**over))


def test_reference_field_errors(folder: Path):
    data = _preset_dict()
    data["references"][0]["slot"] = "one"
    data["references"][1]["crop"] = [10, 10, 5, 20]
    msg = _error(folder, data)
    assert "references[0].slot: 'one' must be an integer >= 1" in msg
    assert "references[1].crop: [10, 10, 5, 20] must satisfy" in msg


def test_unknown_attribute_suggests(folder: Path):
    data = _preset_dict()
    data["references"][1]["attributes"] = ["<idd>"]
    msg = _error(folder, data)
    assert "references[1].attributes[0]: '<idd>' is not an attribute; did you mean '<id>'?" in msg


def test_duplicate_slot(folder: Path):
    data = _preset_dict()
    data["references"][1]["slot"] = 1
    assert "references[1].slot: slot 1 is already used by references[0]" in _error(folder, data)


def test_missing_slot(folder: Path):
    msg = _error(folder, _preset_dict(prompt="Put [2] in front of [3]"))
    assert "prompt: places slot 3, but references has no slot 3" in msg


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"format": "other/app"}, "format: expected 'sigma-studio/preset'"),
        ({"version": 7}, "version 7, written by a newer SIGMA Studio"),
        ({"version": "1"}, "version: expected a positive integer"),
    ],
)
def test_unknown_format_or_version(folder: Path, over, needle):
    assert needle in _error(folder, _preset_dict(**over))


class _ReadSpy:
    """Records every file the image reader opens, to prove nothing outside is read."""

    def __init__(self, monkeypatch):
        self.paths: list[Path] = []
        real = images_mod.read_image_bytes

        def spy(path, **kw):
            self.paths.append(Path(path).resolve())
            return real(path, **kw)

        monkeypatch.setattr(comp_mod, "read_image_bytes", spy)


def _with_image(folder: Path, image) -> dict:
    data = _preset_dict()
    data["references"][0]["image"] = image
    return data


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        ("../secret.png", "goes up with '..'"),
        ("sub/../../secret.png", "goes up with '..'"),
        ("/etc/passwd", "is an absolute path"),
        ("~/secret.png", "is an absolute path"),
        ("C:/secret.png", "is an absolute path"),
        ("sub\\a.png", "uses backslashes"),
        ("nothere.png", "was not found"),
    ],
)
def test_paths_outside_are_refused(folder: Path, monkeypatch, image, needle):
    _png(folder.parent / "secret.png")
    spy = _ReadSpy(monkeypatch)
    assert needle in _error(folder, _with_image(folder, image))
    assert all(p.is_relative_to(folder.resolve()) for p in spy.paths)


def test_symlink_that_escapes_is_refused(folder: Path, monkeypatch):
    secret = _png(folder.parent / "secret.png")
    os.symlink(secret, folder / "link.png")
    (folder / "dirlink").symlink_to(folder.parent, target_is_directory=True)
    spy = _ReadSpy(monkeypatch)
    assert "is a link that leads outside" in _error(folder, _with_image(folder, "link.png"))
    msg = _error(folder, _with_image(folder, "dirlink/secret.png"))
    assert "is a link that leads outside" in msg
    assert spy.paths == [] or all(p.is_relative_to(folder.resolve()) for p in spy.paths)


def test_symlink_inside_is_fine(folder: Path):
    (folder / "inner").mkdir()
    os.symlink(folder / "a.png", folder / "inner" / "alias.png")
    comp = load_preset(_write(folder, _with_image(folder, "inner/alias.png")), asset_dirs=[])
    assert comp.load_image(comp.reference(1)).size == (64, 48)


def test_non_image_file(folder: Path):
    (folder / "notes.png").write_text("just some text, not pixels")
    msg = _error(folder, _with_image(folder, "notes.png"))
    assert "references[slot 1].image" in msg and "is not an image" in msg


def test_truncated_png(folder: Path):
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(buf, format="PNG")
    (folder / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "truncated or corrupt" in _error(folder, _with_image(folder, "cut.png"))


def test_decompression_bomb(folder: Path):
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 MP, a few kB on disk
    assert (folder / "bomb.png").stat().st_size < 200_000
    msg = _error(folder, _with_image(folder, "bomb.png"))
    assert "references[slot 1].image" in msg and "9000x9000" in msg


def test_oversized_file(folder: Path):
    big = folder / "huge.png"
    with big.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(60 * 2**20)  # sparse: fast, but 60 MB by size
    msg = _error(folder, _with_image(folder, "huge.png"))
    assert "references[slot 1].image" in msg and "60.0 MB" in msg and "50.0 MB" in msg


def test_bad_data_uri(folder: Path):
    msg = _error(folder, _with_image(folder, "data:image/gif;base64,R0lGODlhAQABAAAAACw="))
    assert "references[slot 1].image" in msg


def test_all_image_problems_reported_together(folder: Path):
    (folder / "notes.png").write_text("text")
    data = _preset_dict()
    data["references"][0]["image"] = "notes.png"
    data["references"][1]["image"] = "missing.png"
    msg = _error(folder, data)
    assert "slot 1" in msg and "missing.png" in msg


# ----------------------------------------------------------------------------- PNG metadata


def test_png_metadata_round_trip(folder: Path, tmp_path: Path):
    comp = load_preset(_write(folder, _preset_dict()), asset_dirs=[])
    out = write_png(Image.new("RGB", (32, 32), "blue"), comp, tmp_path / "gen.png")
    back = read_png_composition(out, asset_dirs=[])
    assert back == loads_preset(dumps_preset(comp, embed_images=True))
    assert dumps_preset(back, embed_images=True) == dumps_preset(comp, embed_images=True)
    assert back.load_image(back.reference(1)).getpixel((1, 1)) == (200, 30, 30)
    assert Image.open(out).size == (32, 32)


def test_png_metadata_large_composition(tmp_path: Path):
    """Embedded references exceed Pillow's 1 MB text-chunk limit; our reader copes."""
    noise = Image.effect_noise((1024, 1024), 80).convert("RGB")
    comp = Composition("[1] and [2]", [Reference(s, noise, ("<style>",)) for s in (1, 2)])
    out = write_png(Image.new("RGB", (16, 16)), comp, tmp_path / "big.png")
    assert out.stat().st_size > 1_500_000
    back = read_png_composition(out)
    assert back.load_image(back.reference(2)).size == (1024, 1024)


def test_png_without_metadata_and_non_png(tmp_path: Path):
    plain = _png(tmp_path / "plain.png")
    with pytest.raises(PresetError, match="holds no SIGMA Studio composition"):
        read_png_composition(plain)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    with pytest.raises(PresetError, match="not a PNG file"):
        read_png_composition(tmp_path / "x.jpg")
    with pytest.raises(PresetError, match="cannot open"):
        read_png_composition(tmp_path / "absent.png")
