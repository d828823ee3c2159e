"""The studio as a program: its flags, its page (every control the browser tests need has its
elem_id) and its HTTP API, called with gradio_client against the app served in-process."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest

import sigma_core
from sigma_core import PresetError, SigmaInputError, frontend
from sigma_core.inputs.settings import describe_layout
from studio.app import build_app
from studio.engine import load_engine
from studio.forms import Draft, SettingsForm
from studio.handlers import warn, warns
from studio.main import main, serve
from studio.options import PRESETS_DIR, default_model, engine_lock, parse_options
from studio.page import build_page
from studio.settings_panel import ROWS, elem_id

pytest_plugins = ["tests.studio_fixtures"]

# gradio's queue metrics use pandas APIs that pandas 3 deprecates; not the studio's concern
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
ROOT = Path(__file__).resolve().parent.parent
PROGRESS = gr.Progress()
ELEM_IDS = [
    "engine-banner", "preset-dropdown", "preset-upload", "save-preset", "preset-file",
    "examples", "add-slot", "composition-name", "prompt", "prompt-problems", "auto-compose",
    "problems", "sequence-view", "mask-button", "mask-image", "settings", "size", "steps",
    "cfg-text-scale", "cfg-img-scale", "cfg-interval-from", "cfg-interval-to",
    "timestep-shift", "cfg-renorm-type", "cfg-renorm-min",
    "seed-mode", "seed", "reuse-seed", "images-per-run", "mask", "attribute-projection",
    "layout", "settings-problems", "generate", "cancel", "progress", "live-preview", "gallery",
    "result-info", "download", "restore-composition", "compare-with", "ab-button", "slider",
    "slot-order", "precision", "offload", "engine-apply", "engine-status", "memory-estimate",
]  # fmt: skip
SLOT_IDS = [
    "slot-{k}", "slot-{k}-image", "slot-{k}-thumb", "slot-{k}-info", "slot-{k}-attributes",
    "slot-{k}-entity", "slot-{k}-crop", "slot-{k}-problems", "slot-{k}-up", "slot-{k}-down",
    "slot-{k}-remove", "insert-{k}",
]  # fmt: skip


# ----------------------------------------------------------------------------- flags


def test_defaults_are_local_and_quiet():
    options = parse_options(["--model", "preview"])
    assert options.model is None and options.host == "127.0.0.1" and not options.share
    assert options.max_references == 8 and options.offload == "none"
    assert options.vae_dtype == "fp32" and options.device_map is None
    assert options.engine_switch == "auto"


def test_every_precision_and_offload_is_a_flag():
    for precision in frontend.PRECISIONS:
        assert parse_options(["--precision", precision, "--model", "preview"]).precision == (
            precision
        )
    options = parse_options(
        ["--model", "preview", "--offload", "model", "--vae-dtype", "bf16", "--device-map", "auto"]
    )
    assert (options.offload, options.vae_dtype, options.device_map) == ("model", "bf16", "auto")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-references", "0"], "must be from 1 to 16"),
        (["--max-references", "17"], "must be from 1 to 16"),
        (["--port", "70000"], "--port"),
        (["--model", "preview", "--sigma-weights", "x"], "--sigma-weights needs real base"),
        (["--precision", "fp64"], "invalid choice"),
        (["--offload", "disk"], "invalid choice"),
        (["--engine-switch", "maybe"], "invalid choice"),
        (["--time-limit", "0"], "--time-limit"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_options(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_app_py_refuses_a_bad_flag_before_loading_anything():
    done = subprocess.run(
        [sys.executable, "app.py", "--max-references", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert done.returncode == 2
    assert "must be from 1 to 16" in done.stderr and "loading" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "fp8"], "error: precision: fp8 runs on NVIDIA GPUs"),
        (["--precision", "int8", "--offload", "sequential"], "error: offload: sequential"),
        (["--precision", "int8", "--offload", "model"], "int8 layers cannot move"),
        (["--device-map", "auto", "--offload", "model"], "device_map and offload exclude"),
    ],
)
def test_a_mode_this_machine_cannot_run_exits_2_with_the_engines_reason(argv, message, capsys):
    assert main(["--model", "preview", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_app_py_refuses_fp8_on_cpu_before_gradio_loads():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "app.py", "--model", "preview", "--device", "cpu",
         "--precision", "fp8"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: precision: fp8 runs on NVIDIA GPUs of compute capability 8.9" in done.stderr
    assert not re.search(r"\| gradio$", done.stderr, re.M)  # -X importtime lists each import


def test_an_int8_engine_loads_from_the_flags():
    engine = load_engine(parse_options(["--model", "preview", "--precision", "int8"]))
    assert engine.info.precision == "int8" and engine.pipe.precision.name == "int8"
    assert engine.info.offload == "none" and engine.info.vae_dtype == "fp32"
    assert any(type(m).__name__ == "Linear8bitLt" for m in engine.pipe.model.modules())


@pytest.mark.parametrize(
    ("argv", "environ", "locked"),
    [
        ([], {}, None),
        (["--share"], {}, "--share"),
        (["--host", "0.0.0.0"], {}, "served on 0.0.0.0"),
        ([], {"SPACE_ID": "someone/sigma"}, "Hugging Face Space"),
        (["--engine-switch", "off"], {}, "--engine-switch off"),
        (["--engine-switch", "on", "--share"], {"SPACE_ID": "x/y"}, None),
    ],
)
def test_only_a_studio_served_to_this_machine_lets_its_page_switch_the_engine(
    argv, environ, locked
):
    lock = engine_lock(parse_options(["--model", "preview", *argv]), environ)
    assert lock is None if locked is None else locked in lock


def test_the_default_model_is_bagel_only_when_it_is_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert default_model() is None
    repo = tmp_path / f"models--{frontend.BAGEL_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in ("llm_config.json", "ema.safetensors"):
        (snapshot / name).write_text("{}")
    assert default_model() is None  # ae.safetensors is missing
    (snapshot / "ae.safetensors").write_text("{}")
    assert default_model() == frontend.BAGEL_REPO


# ----------------------------------------------------------------------------- the page


def test_every_control_has_its_elem_id(studio):
    demo = build_app(studio)
    ids = [c.get("props", {}).get("elem_id") for c in demo.config["components"]]
    expected = ELEM_IDS + [i.format(k=k) for k in (1, 2, 3) for i in SLOT_IDS]
    missing = [i for i in expected if i not in ids]
    assert not missing
    duplicated = {i for i in ids if i and ids.count(i) > 1}
    assert not duplicated
    assert "slot-4" not in ids  # --max-references 3


def test_the_settings_panel_is_made_from_the_cores_spec_table(studio):
    names = [name for row in ROWS for name in row]
    assert sorted(names) == sorted(s.name for s in frontend.SETTING_SPECS)  # each once
    demo = build_app(studio)
    for spec in frontend.SETTING_SPECS:
        ids = [f"{elem_id(spec.name)}-{end}" for end in ("from", "to")]
        if spec.kind != "interval":
            ids = [elem_id(spec.name)]
        for i, key in enumerate(ids):
            props = _props(demo, key)
            assert spec.label in props["label"] and props["info"] == spec.help
            default = spec.default[i] if spec.kind == "interval" else spec.default
            assert (
                props["value"] == spec.text(default)
                if spec.kind in ("size", "seed")
                else (props["value"] == default)
            )
            if spec.kind in ("int", "number", "interval"):
                assert (props["minimum"], props["maximum"], props["step"]) == (
                    spec.low,
                    spec.high,
                    spec.step,
                )  # the steps slider reaches the core's 1,000: no bound of the studio's own
            if spec.kind == "choice":
                assert [v for _, v in props["choices"]] == list(spec.choices)


def _props(demo, elem_id: str) -> dict:
    return next(
        c["props"] for c in demo.config["components"] if c["props"].get("elem_id") == elem_id
    )


def test_the_engine_controls_show_the_engine_and_lock_on_a_shared_studio(studio):
    demo = build_app(studio)
    precision = _props(demo, "precision")
    assert precision["value"] == "fp32" and precision["interactive"] is not False
    labels = [label for label, _ in precision["choices"]]
    assert labels[:5] == ["fp32", "bf16", "fp16", "int8", "nf4"] and "not here" in labels[5]
    assert _props(demo, "offload")["value"] == "none"
    assert "everyone using this studio" in str(demo.config)
    studio.engine.options = replace(studio.engine.options, share=True)  # --share
    try:
        locked = build_app(studio)
    finally:
        studio.engine.options = replace(studio.engine.options, share=False)
    assert _props(locked, "precision")["interactive"] is False
    assert _props(locked, "engine-apply")["interactive"] is False
    assert (
        "Locked: this studio is shared through a public link"
        in (_props(locked, "engine-status")["value"])
    )


def test_the_layout_dropdown_offers_the_cores_layouts_and_travels_with_the_form(studio):
    demo = build_app(studio)
    layout = _props(demo, "layout")
    assert [value for _, value in layout["choices"]] == list(frontend.LAYOUT_CHOICES)
    assert layout["value"] == "auto"
    descriptions = [f"{k}: {describe_layout(k)}" for k in frontend.LAYOUT_CHOICES]
    assert all(text in layout["info"] for text in descriptions)
    with gr.Blocks():
        page = build_page(studio, [])
    draft = Draft(prompt="A red cube", settings=SettingsForm().replace(layout="training"))
    values = page.form_of(draft)  # a preset, a PNG or a result loaded into the controls
    assert values[page.form_outputs.index(page.settings["layout"])] == "training"
    assert page.draft_of(dict(zip(page.form_outputs, values, strict=True))) == draft


def test_a_form_change_sends_only_what_it_changed(studio):
    """Adding a slot leaves every control of the slots before it to the page (a face crop
    answered meanwhile is not overwritten by the click's stale value); a move sends the slots
    it swapped, their upload notes cleared."""
    from studio import slots
    from studio.forms import SlotForm

    with gr.Blocks():
        page = build_page(studio, [])
    one = SlotForm(image="data:a", attributes=("<id>",), entity="woman", crop="1, 2, 30, 40")
    two = SlotForm(image="data:b", attributes=("<style>",))
    draft = Draft(prompt="[1] in the style of [2]", slots=(one, two))
    outputs = page.form_outputs

    def sent(values: list) -> dict:
        return {
            c: v for c, v in zip(outputs, values, strict=True) if not isinstance(v, type(gr.skip()))
        }

    added = sent(page.form_changes(draft, slots.add_slot(draft, 4)))
    first = page.slots[0]
    assert first.crop not in added and first.image not in added and first.entity not in added
    assert added[outputs[0]] == 3  # the slot count
    assert not any(s.upload_note in added for s in page.slots)  # "cropped to the face" stays
    moved = sent(page.form_changes(draft, slots.move_slot(draft, 1, +1)))
    assert moved[page.slots[0].upload_note] == moved[page.slots[1].upload_note] == ""
    assert moved[first.image] == "data:b" and moved[page.slots[1].crop] == "1, 2, 30, 40"
    assert page.prompt not in moved or moved[page.prompt] != draft.prompt


def test_a_handlers_sigma_error_becomes_an_escaped_toast_and_the_outputs_stay():
    kept = ["kept"]

    @warns(keep=lambda: kept)
    def check(data: dict) -> list[str]:
        raise PresetError("'<idd>' is not an attribute")

    with pytest.warns(UserWarning, match="^&#x27;&lt;idd&gt;&#x27; is not an attribute$"):
        assert check({}) is kept  # gr.Warning outside a request is a Python warning
    with pytest.warns(UserWarning, match="^a.png: &lt;id&gt; <br>b.png: not read$"):
        warn("a.png: <id>\nb.png: not read")  # a line each, the text still escaped

    @warns(keep=dict)
    def run(data: dict, event: gr.EventData, progress: gr.Progress = PROGRESS) -> Iterator[dict]:
        yield {"status": "step 1"}
        raise SigmaInputError("the engine went away")

    assert inspect.isgeneratorfunction(run)  # gradio streams it only if it is one
    wrapped = gr.helpers.special_args(run, [{}, None, None])[1:3]
    assert wrapped == gr.helpers.special_args(run.__wrapped__, [{}, None, None])[1:3] == (2, 1)
    with pytest.warns(UserWarning, match="the engine went away"):
        assert list(run({}, None)) == [{"status": "step 1"}, {}]

    @warns(keep=dict)
    def bug(data: dict) -> None:
        raise KeyError("not a SigmaError: gradio shows it as the error it is")

    with pytest.raises(KeyError):
        bug({})


def test_only_the_api_events_are_public(studio):
    demo = build_app(studio)
    public = sorted(
        fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public" and fn.api_name
    )
    assert public == ["generate", "inspect", "validate_preset"]


# ----------------------------------------------------------------------------- the live API


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    demo = serve(studio, prevent_thread_lock=True, quiet=True, server_port=None)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def _preset(**settings) -> str:
    comp = sigma_core.load_preset(PRESETS_DIR / "select_coffee_cup.json")
    comp = comp.__class__(
        prompt=comp.prompt,
        references=comp.references,
        settings=comp.settings.replace(**{"size": (64, 64), "num_timesteps": 3, **settings}),
        name=comp.name,
        base_dir=comp.base_dir,
    )
    return frontend.dumps_preset(comp, embed_images=True)


def test_gradio_client_generates_through_the_api(client):
    image, meta = client.predict(_preset(seed=5), api_name="/generate")
    assert meta["seed"] == 5 and meta["size"] == [64, 64] and meta["preview"] is True
    stored = sigma_core.read_png_composition(image)
    assert stored.settings.seed == 5 and stored.prompt.startswith("Isolate <select>")


def test_gradio_client_validates_and_inspects(client):
    report = client.predict(_preset(), api_name="/validate_preset")
    assert report["valid"] and report["output_size"] == [64, 64]
    assert report["layout"] == "inference"  # "auto" with weights that record no layout
    training = client.predict(_preset(layout="training"), api_name="/validate_preset")
    assert training["layout"] == "training"
    inspected = client.predict(_preset(), api_name="/inspect")
    assert inspected["groups"][0]["attributes"] == ["<select>"]
    bad = json.loads(_preset())
    bad["references"][0]["attributes"] = ["<idd>"]
    report = client.predict(json.dumps(bad), api_name="/validate_preset")
    assert not report["valid"] and "did you mean '<id>'" in report["problems"][0]


def test_api_errors_reach_the_client_and_the_app_keeps_serving(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="malformed JSON"):
        client.predict("{", api_name="/generate")
    assert client.predict(_preset(), api_name="/validate_preset")["valid"]


def test_a_cancelled_api_job_stops_and_the_next_one_runs_at_once(client):
    """gradio_client's job.cancel() stops the run within a step (the handler streams its
    progress, so gradio can close it), and a short job sent right after is not kept waiting
    behind the cancelled one's remaining steps."""
    job = client.submit(_preset(num_timesteps=1000, size=(1008, 1008)), api_name="/generate")
    deadline = time.monotonic() + 60

    def stepping() -> bool:
        outputs = job.outputs()
        return bool(outputs) and outputs[-1][1].get("phase") == "denoise"

    while not stepping() and time.monotonic() < deadline:  # its first step's progress
        time.sleep(0.05)
    _, progress = job.outputs()[-1]
    assert progress["steps"] == 999 and progress["phase"] == "denoise"
    started = time.monotonic()
    job.cancel()
    image, meta = client.predict(_preset(seed=9), api_name="/generate")
    assert meta["seed"] == 9 and Path(image).is_file()
    assert time.monotonic() - started < 15  # the cancelled run had minutes of steps left
