"""The shipped example presets and assets: users open these first, so they must all work."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigma_core.inputs import (
    IMAGE_PLACEHOLDER,
    PROJECT_ASSETS,
    dumps_preset,
    load_preset,
    save_preset,
)
from sigma_core.planning import build_plan

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "presets").glob("*.json"))
ASSETS = PROJECT_ASSETS


def test_there_are_example_presets() -> None:
    assert len(PRESETS) >= 4


@pytest.fixture(params=PRESETS, ids=lambda p: p.stem)
def preset(request: pytest.FixtureRequest) -> Path:
    return request.param


def test_preset_builds_a_plan_without_warnings(preset: Path, tokenizer) -> None:
    comp = load_preset(preset)
    assert comp.name.strip()
    plan = build_plan(comp, tokenizer)
    assert plan.warnings == []
    assert plan.num_groups == len(comp.references)


def test_preset_images_load_from_assets(preset: Path) -> None:
    comp = load_preset(preset)
    for ref in comp.references:
        assert comp.resolve_path(ref.image).parent == PROJECT_ASSETS.resolve()
        img = comp.load_image(ref)
        assert img.mode == "RGB" and min(img.size) >= 256


def test_preset_file_is_canonical(preset: Path) -> None:
    assert preset.read_text(encoding="utf-8") == dumps_preset(load_preset(preset))


def test_save_load_save_is_byte_identical(preset: Path, tmp_path: Path) -> None:
    comp = load_preset(preset)
    first = save_preset(comp, tmp_path / "first.json")
    again = load_preset(first)
    assert again == comp
    second = save_preset(again, tmp_path / "second.json")
    assert first.read_bytes() == second.read_bytes()


def test_presets_cover_the_main_task_families(tokenizer) -> None:
    bound: set[str] = set()
    for path in PRESETS:
        plan = build_plan(load_preset(path), tokenizer)
        bound.update(a for s in plan.segments for a in s.attributes)
    wanted = {"<id>", "<subject>", "<background>", "<style>", "<select>", "<layout>"}
    assert wanted <= bound


def test_both_prompt_syntaxes_are_shown() -> None:
    prompts = [load_preset(p).prompt for p in PRESETS]
    assert any(IMAGE_PLACEHOLDER.search(p) for p in prompts), "no raw <image_k> preset"
    assert any(not IMAGE_PLACEHOLDER.search(p) for p in prompts), "no [k] template preset"


def test_every_asset_has_a_licence_entry() -> None:
    licences = (ASSETS / "LICENSES.md").read_text(encoding="utf-8")
    files = [p for p in ASSETS.iterdir() if p.name != "LICENSES.md"]
    assert files
    for path in files:
        assert f"`{path.name}`" in licences, f"{path.name} is missing from assets/LICENSES.md"


def test_assets_stay_small() -> None:
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) < 3 * 2**20
