"""The studio's run handlers: generating (progress, cancel, time limit, engine failures), the
browser's history of results, presets and the HTTP API."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import sigma_core
from sigma_core import (
    GenerationCancelled,
    PresetError,
    SigmaInputError,
    SigmaOutOfMemoryError,
    frontend,
)
from studio import api, compose, presets, runs, views
from studio.engine import Engine, RunToken, Sessions
from studio.forms import to_composition, to_draft
from studio.options import PRESETS_DIR, StudioOptions
from tests.studio_helpers import FAST, finish, tiny_engine, two_slots

pytest_plugins = ["tests.studio_fixtures"]


# ----------------------------------------------------------------------------- runs


def test_a_run_reports_its_steps_and_saves_a_png_with_its_composition(engine, images, tmp_path):
    sessions = Sessions()
    sessions.arm("a")
    steps, outcome = finish(
        runs.generate(engine, sessions, "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert outcome.error is None
    # newest first: a step the consumer was too slow for is skipped, never shown late (the
    # last may come with the run's end, which then stands for it)
    assert steps and steps[-1].steps == 2 and 1 <= steps[-1].step <= 2
    assert [p.step for p in steps] == sorted({p.step for p in steps})
    assert all(p.preview is not None and max(p.preview.size) == 256 for p in steps)
    (entry,) = outcome.entries
    assert entry["seed"] == 42 and entry["size"] == [64, 64] and entry["preview"] is True
    assert set(entry["timings"]) >= {"encode_s", "denoise_s", "total_s"}
    path = runs.result_file(entry, tmp_path)
    stored = sigma_core.read_png_composition(path)
    assert stored.prompt == "A photo of [1] holding [2]"
    assert stored.settings.seed == 42
    assert len(json.dumps(entry)) < 20_000  # a thumbnail, not the image
    assert "data:" not in entry["preset"]  # ... and the composition without its images
    info = views.result_info(entry)
    assert "Seed 42" in info and "W_tau on · layout inference" in info  # what "auto" ran as
    older = dict(entry, settings={k: v for k, v in entry["settings"].items() if k != "layout"})
    assert "layout" not in views.result_info(older)  # a result from before layouts


def test_a_slow_consumer_sees_the_newest_step_and_its_cancel_lands_there(engine, images, tmp_path):
    """A browser or API caller slower than the engine is shown where the run is, not a backlog
    of old steps, so a Cancel pressed at the step it shows stops the run there (within the step
    in flight and one more)."""
    sessions = Sessions()
    cancel = sessions.arm("a")
    draft = replace(two_slots(images), settings=FAST.replace(num_timesteps=400))
    shown, seen = None, []
    for item in runs.generate(engine, sessions, "a", draft, files=tmp_path, time_limit_s=60):
        if isinstance(item, runs.Outcome):
            outcome = item
            break
        if item.phase != "denoise" or item.step == 0:
            continue
        seen.append(item.step)
        if len(seen) == 4:
            cancel.set()
            shown = item.step
        else:
            time.sleep(0.03)  # a slow consumer: the engine takes a few ms a step
    assert outcome.cancelled, outcome.error
    stopped = int(re.search(r"after step (\d+)", outcome.error)[1])
    assert shown > 4, seen  # skipped ahead to the newest step
    assert stopped <= shown + 2, (shown, stopped, seen)


def test_images_per_run_use_consecutive_seeds(engine, images, tmp_path):
    draft = replace(two_slots(images), settings=FAST.replace(seed="7", images_per_run=2))
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", draft, files=tmp_path, time_limit_s=60)
    )
    assert [e["seed"] for e in outcome.entries] == [8, 7]  # newest first
    random = replace(draft, settings=draft.settings.replace(seed_mode="random"))
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", random, files=tmp_path, time_limit_s=60)
    )
    second, first = (e["seed"] for e in outcome.entries)
    assert second == first + 1


def test_images_per_run_encode_and_prefill_once(
    fresh, tiny_checkpoint, images, tmp_path, monkeypatch
):
    """Three images per run: one VAE encode per reference and one prefill for all three, each
    image saved as its own result with its seed, and shown as image k of 3; the next run, with
    a new seed, encodes nothing."""
    own_cache, calls = fresh
    engine = tiny_engine(own_cache, tiny_checkpoint)
    # 50 ms a step: the consumer sees each image's first step (the last may give way at once)
    monkeypatch.setattr(engine, "live_preview", lambda tensors: time.sleep(0.05))
    draft = replace(two_slots(images), settings=FAST.replace(seed="7", images_per_run=3))
    steps, outcome = finish(
        runs.generate(engine, Sessions(), "a", draft, files=tmp_path, time_limit_s=60)
    )
    assert outcome.error is None and calls == ["encode", "encode", "prefill"]
    assert [e["seed"] for e in outcome.entries] == [9, 8, 7]  # newest first
    assert all(e["references"] == {"placed": 2, "reused": 0} for e in outcome.entries)
    for entry in outcome.entries:
        stored = sigma_core.read_png_composition(runs.result_file(entry, tmp_path))
        assert stored.settings.seed == entry["seed"]
    shown = [(p.image, p.step) for p in steps]
    assert {(1, 1), (2, 1), (3, 1)} <= set(shown) and shown == sorted(shown)
    assert all(p.images == 3 for p in steps)
    calls.clear()
    again = replace(draft, settings=draft.settings.replace(seed="10", images_per_run=1))
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", again, files=tmp_path, time_limit_s=60)
    )
    assert outcome.entries[0]["seed"] == 10 and calls == ["prefill"]
    # the result and the progress say so: both references came from the cache
    assert outcome.entries[0]["references"] == {"placed": 2, "reused": 2}
    assert "references: 2 reused from an earlier run" in views.result_info(outcome.entries[0])
    stats = own_cache.encode_references.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 2, 2)


def test_a_cancel_keeps_the_images_done(engine, images, tmp_path):
    """Three images per run, cancelled during the second: the first is saved, with its seed,
    and the message says so."""
    sessions = Sessions()
    sessions.arm("a")
    settings = FAST.replace(seed="7", images_per_run=3, num_timesteps=40)
    draft = replace(two_slots(images), settings=settings)
    seen = []
    for item in runs.generate(engine, sessions, "a", draft, files=tmp_path, time_limit_s=60):
        seen.append(item)
        if isinstance(item, runs.Progress) and item.image == 2 and item.step >= 1:
            sessions.cancel("a")
    outcome = seen[-1]
    assert outcome.cancelled and len(outcome.entries) == 1, outcome.error
    assert outcome.error.startswith("cancelled during image 2 of 3, after step ")
    assert "; 1 image kept; the composition is unchanged" in outcome.error
    (entry,) = outcome.entries
    stored = sigma_core.read_png_composition(runs.result_file(entry, tmp_path))
    assert entry["seed"] == stored.settings.seed == 7
    assert [p.image for p in seen if isinstance(p, runs.Progress)][-1] == 2  # no image 3


def test_the_time_limit_message_counts_the_images_kept(engine, images):
    late = RunToken(threading.Event(), 0)
    stop = GenerationCancelled("cancelled during image 3 of 4, after step 5 of 20", step=5)
    comp = to_composition(two_slots(images))
    text = runs.describe_failure(stop, engine, late, 60, comp, kept=2, images=4)
    assert text == (
        "stopped during image 3 of 4, after step 5 of 20: the run took longer than this "
        "studio's time limit of 60 s; 2 images kept; use fewer steps, fewer images per run or a "
        "smaller size"
    )


def test_a_run_records_its_layout_and_its_png_restores_it(engine, images, tmp_path):
    draft = replace(two_slots(images), settings=FAST.replace(layout="training"))
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", draft, files=tmp_path, time_limit_s=60)
    )
    (entry,) = outcome.entries
    assert outcome.error is None and entry["settings"]["layout"] == "training"
    assert "layout training" in views.result_info(entry)
    png = runs.result_file(entry, tmp_path)
    assert presets.open_composition(png, tmp_path, max_slots=8).settings["layout"] == "training"


def test_a_bad_draft_never_starts_a_run(engine, images, tmp_path):
    items = list(
        runs.generate(
            engine, Sessions(), "a", two_slots(images, "[3]"), files=tmp_path, time_limit_s=60
        )
    )
    assert len(items) == 1 and "slot 3" in items[0].error
    assert not (tmp_path / runs.RESULTS).exists()


def test_cancel_stops_only_its_own_session_within_one_step(engine, images, tmp_path):
    sessions = Sessions()
    sessions.arm("a")
    sessions.arm("b")
    draft = replace(two_slots(images), settings=FAST.replace(num_timesteps=30))
    items = runs.generate(engine, sessions, "a", draft, files=tmp_path, time_limit_s=60)
    seen = []
    for item in items:
        seen.append(item)
        if isinstance(item, runs.Progress) and item.step == 1:
            sessions.cancel("b")  # another session's Cancel
        if isinstance(item, runs.Progress) and item.step == 3:
            assert sessions.cancel("a")
    outcome = seen[-1]
    steps = [i.step for i in seen if isinstance(i, runs.Progress)]
    assert outcome.cancelled and "cancelled after step" in outcome.error
    assert max(steps) <= 4
    assert "composition is unchanged" in outcome.error


def test_a_cancel_pressed_while_queued_stops_the_run(engine, images, tmp_path):
    sessions = Sessions()
    sessions.arm("a")
    sessions.cancel("a")
    steps, outcome = finish(
        runs.generate(engine, sessions, "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert outcome.cancelled and not steps and not outcome.entries
    assert not Sessions().cancel("never-armed")


def test_the_time_limit_stops_a_run(engine, images, tmp_path):
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=0)
    )
    assert "time limit of 0 s" in outcome.error


def test_an_abandoned_run_is_cancelled(engine, images, tmp_path):
    sessions = Sessions()
    draft = replace(two_slots(images), settings=FAST.replace(num_timesteps=40))
    items = runs.generate(engine, sessions, "a", draft, files=tmp_path, time_limit_s=60)
    next(item for item in items if isinstance(item, runs.Progress))
    items.close()  # the page went away
    assert sessions.token("a").is_set()


class FaultyEngine(Engine):
    """An engine whose runs fail, as out-of-memory or a bug would."""

    def __init__(self, pipe, error: Exception) -> None:
        super().__init__(pipe, weights="faulty", options=StudioOptions())
        self.error = error

    def generate(self, composition, *, cancel, on_step=None, on_phase=None, seeds=()):
        raise self.error


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (SigmaOutOfMemoryError("denoising", "cuda:0"), "To fit: In Settings › Engine choose"),
        (RuntimeError("CUDA error: an illegal memory access"), "engine error (RuntimeError"),
        (GenerationCancelled("cancelled after step 2 of 9", step=2), "cancelled after step 2"),
    ],
)
def test_engine_failures_become_messages_and_the_studio_goes_on(
    pipe, images, tmp_path, error, text
):
    faulty = FaultyEngine(pipe, error)
    _, outcome = finish(
        runs.generate(faulty, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert text in outcome.error and not outcome.entries
    if not isinstance(error, GenerationCancelled):  # a mode needing less than fp32, and how
        assert "precision int8 and offload none, then reload the engine" in outcome.error


def test_run_tokens_trip_on_cancel_or_deadline():
    event = threading.Event()
    assert not RunToken(event, float("inf")).is_set()
    assert RunToken(event, 0).is_set() and RunToken(event, 0).timed_out()
    event.set()
    assert RunToken(event, float("inf")).is_set()


# ----------------------------------------------------------------------------- history


@pytest.fixture(scope="module")
def made(engine, images, tmp_path_factory):
    """One finished result: (its history entry, the files folder)."""
    files = tmp_path_factory.mktemp("files")
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", two_slots(images), files=files, time_limit_s=60)
    )
    return outcome.entries[0], files


def test_history_keeps_new_results_first_and_drops_junk(made):
    entry, _ = made
    junk = [{"file": 3}, "x", None, {"thumb": "data:"}]
    history = runs.add_to_history([*junk, entry], [dict(entry, seed=1)])
    assert [e["seed"] for e in history] == [1, 42]
    assert len(runs.add_to_history([entry] * 100, [])) == runs.HISTORY_LIMIT
    assert runs.valid_history("not a list") == []


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", ".hidden.png", "a/b.png", ""])
def test_history_entries_cannot_name_files_outside_the_results(made, name):
    entry, files = made
    assert runs.result_file(dict(entry, file=name), files) is None


def test_the_gallery_falls_back_to_the_thumbnail(made):
    entry, files = made
    items = runs.gallery_items([entry, dict(entry, file="gone.png")], files)
    assert items[0][0].endswith(entry["file"])
    assert isinstance(items[1][0], Image.Image) and "seed 42" in items[1][1]


def test_a_result_restores_its_composition(made, tmp_path):
    entry, files = made
    comp = runs.entry_composition(entry, files)
    draft = to_draft(comp, tmp_path, max_slots=8)
    assert draft.prompt == "A photo of [1] holding [2]" and all(s.image for s in draft.slots)
    bare = runs.entry_composition(dict(entry, file="gone.png"), files)
    assert bare.prompt == comp.prompt and all(r.image is None for r in bare.references)


def test_compare_a_result_with_a_reference(made):
    entry, files = made
    reference, result = runs.compare_with_reference(entry, 2, files)
    assert reference.size == result.size == (64, 64)
    assert runs.placed_references(entry) == [1, 2]
    with pytest.raises(SigmaInputError, match="no reference 5"):
        runs.compare_with_reference(entry, 5, files)


def test_leakage_ab_runs_the_same_seed_with_the_mask_flipped(engine, made):
    entry, files = made
    twin = runs.ab_composition(entry, files)
    assert twin.settings.seed == 42 and twin.settings.mask is False
    _, outcome = finish(runs.stream(engine, Sessions(), "a", twin, files=files, time_limit_s=60))
    other = outcome.entries[0]
    mask_on, mask_off = runs.ab_pair(entry, other, files)
    assert mask_on.endswith(entry["file"]) and mask_off.endswith(other["file"])
    assert runs.ab_pair(other, entry, files) == (mask_on, mask_off)


# ----------------------------------------------------------------------------- presets


def test_every_shipped_preset_opens_and_plans(engine, tmp_path):
    entries = presets.list_presets(PRESETS_DIR)
    assert len(entries) == len(list(PRESETS_DIR.glob("*.json"))) >= 4
    assert all(e.cover is not None and max(e.cover.size) <= 256 for e in entries)
    for entry in entries:
        draft = presets.open_composition(entry.path, tmp_path, max_slots=8)
        assert compose.check(engine, draft).ok, entry.path


def test_a_generated_png_opens_as_its_composition(made, tmp_path):
    entry, files = made
    draft = presets.open_composition(runs.result_file(entry, files), tmp_path, max_slots=8)
    assert draft.settings["seed"] == "42" and len(draft.slots) == 2
    assert draft.settings["layout"] == "inference"  # the layout "auto" ran as


def test_bad_uploads_are_refused_with_the_cores_message(images, tmp_path):
    with pytest.raises(PresetError, match=r"^red.png: this PNG holds no SIGMA Studio composition"):
        presets.open_composition(images["red"], tmp_path, max_slots=8)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "sigma-studio/preset", "version": 1, "prompt": 3}')
    with pytest.raises(PresetError, match="prompt: expected a string"):
        presets.open_composition(broken, tmp_path, max_slots=8)
    with pytest.raises(SigmaInputError, match="choose a preset"):
        presets.open_composition(None, tmp_path, max_slots=8)


def test_a_preset_with_a_layout_sets_the_layout_dropdown(tmp_path):
    comp = sigma_core.Composition(
        prompt="A red cube", settings=sigma_core.Settings(layout="training")
    )
    path = tmp_path / "training.json"
    path.write_text(frontend.dumps_preset(comp))
    draft = presets.open_composition(path, tmp_path, max_slots=8)
    assert draft.settings["layout"] == "training"


def test_a_saved_composition_is_self_contained(images, tmp_path):
    settings = FAST.replace(layout="training-no-vit")
    draft = replace(two_slots(images), name="Red & blue!", settings=settings)
    path = presets.save_draft(draft, tmp_path)
    assert path.name == "red-blue.json"
    data = json.loads(path.read_text())
    assert data["settings"]["layout"] == "training-no-vit"
    assert all(r["image"].startswith("data:image/png;base64,") for r in data["references"])
    loaded = frontend.loads_preset(path.read_text())
    reopened = to_draft(loaded, tmp_path / "again", max_slots=8)
    assert reopened.prompt == draft.prompt and reopened.settings == draft.settings
    assert Path(reopened.slots[0].image).read_bytes() == Path(images["red"]).read_bytes()


# ----------------------------------------------------------------------------- API


def preset_text(images: dict[str, str]) -> str:
    return frontend.dumps_preset(to_composition(two_slots(images)), embed_images=True)


def test_api_generate_returns_the_png_and_its_metadata(engine, images, tmp_path):
    *progress, (path, meta) = api.api_generate(
        engine, Sessions(), "api", preset_text(images), files=tmp_path, time_limit_s=60
    )
    assert progress and all(isinstance(p, runs.Progress) for p in progress)
    assert meta["seed"] == 42 and meta["preview"] is True and meta["size"] == [64, 64]
    assert sigma_core.read_png_composition(path).prompt == meta["prompt"]


def test_closing_an_api_run_stops_it_within_a_step(engine, images, tmp_path):
    """What gradio does when an API caller cancels or goes away: it closes the handler."""
    data = json.loads(preset_text(images))
    data["settings"].update(num_timesteps=1000, size=[1008, 1008])  # 0.2 s a step on 2 cores
    items = api.api_generate(
        engine, Sessions(), "api", json.dumps(data), files=tmp_path, time_limit_s=600
    )
    first = next(i for i in items if i.phase == "denoise" and i.step >= 1)
    assert first.phase == "denoise" and first.steps == 999
    started = time.monotonic()
    items.close()  # GeneratorExit at the yield: the run's token is set, the engine stops
    # a 2-step run right after gets the engine at once (it waits for the cancelled one)
    *_, (path, _) = api.api_generate(
        engine, Sessions(), "api2", preset_text(images), files=tmp_path, time_limit_s=60
    )
    assert time.monotonic() - started < 10.0  # the 999-step run would take minutes
    assert list((tmp_path / runs.RESULTS).glob("*.png")) == [Path(path)]  # none half-made


def test_api_reads_no_server_paths(engine, images, tmp_path):
    data = json.loads(preset_text(images))
    data["references"][0]["image"] = images["red"]  # an absolute path on the server
    with pytest.raises(PresetError, match="absolute path"):
        list(
            api.api_generate(
                engine, Sessions(), "api", json.dumps(data), files=tmp_path, time_limit_s=60
            )
        )


def test_api_inspect_and_validate(engine, images):
    report = api.api_inspect(engine, preset_text(images))
    assert [s["kind"] for s in report["segments"]][-1] == "noise"
    good = api.api_validate_preset(engine, preset_text(images))
    assert good["valid"] and good["tokens"] == report["length"]
    assert good["layout"] == "inference"  # what "auto" resolves to with these weights
    bad = api.api_validate_preset(engine, preset_text(images).replace("[2]", "[3]"))
    assert not bad["valid"] and "slot 3" in bad["problems"][0]
    assert not api.api_validate_preset(engine, "{")["valid"]


def test_api_run_failures_raise(pipe, images, tmp_path):
    faulty = FaultyEngine(pipe, SigmaOutOfMemoryError("denoising", "cpu"))
    with pytest.raises(api.RunFailed, match="out of memory"):
        list(
            api.api_generate(
                faulty, Sessions(), "a", preset_text(images), files=tmp_path, time_limit_s=9
            )
        )
