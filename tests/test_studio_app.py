"""The studio as a program: its flags, its page (every control the browser tests need has its
elem_id) and its HTTP API, called with gradio_client against the app served in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sigma_core
from studio.engine import Engine, Sessions, Studio
from studio.layout import build_app
from studio.main import serve
from studio.options import PRESETS_DIR, StudioOptions, default_model, parse_options

# gradio's queue metrics use pandas APIs that pandas 3 deprecates; not the studio's concern
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
ROOT = Path(__file__).resolve().parent.parent
ELEM_IDS = [
    "engine-banner", "preset-dropdown", "preset-upload", "save-preset", "preset-file",
    "examples", "add-slot", "composition-name", "prompt", "prompt-problems", "auto-compose",
    "problems", "sequence-view", "mask-button", "mask-image", "settings", "size", "steps",
    "cfg-text", "cfg-img", "cfg-start", "cfg-end", "shift", "renorm-type", "renorm-min",
    "seed-mode", "seed", "reuse-seed", "images-per-run", "mask", "attribute-projection",
    "settings-problems", "generate", "cancel", "progress", "live-preview", "gallery",
    "result-info", "download", "restore-composition", "compare-with", "ab-button", "slider",
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "int8"], "quantised weights (int8, nf4) are not supported yet"),
        (["--precision", "nf4"], "use fp32, bf16, fp16"),
        (["--offload", "model"], "offloading is not supported yet"),
        (["--max-references", "0"], "must be from 1 to 16"),
        (["--max-references", "17"], "must be from 1 to 16"),
        (["--port", "70000"], "--port"),
        (["--model", "preview", "--sigma-weights", "x"], "--sigma-weights needs real base"),
        (["--precision", "fp64"], "invalid choice"),
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
        [sys.executable, "app.py", "--precision", "nf4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert done.returncode == 2
    assert "not supported yet" in done.stderr and "loading" not in done.stderr


def test_the_default_model_is_bagel_only_when_it_is_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert default_model() is None
    repo = tmp_path / f"models--{sigma_core.BAGEL_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in ("llm_config.json", "ema.safetensors"):
        (snapshot / name).write_text("{}")
    assert default_model() is None  # ae.safetensors is missing
    (snapshot / "ae.safetensors").write_text("{}")
    assert default_model() == sigma_core.BAGEL_REPO


# ----------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def studio(pipe, tmp_path_factory) -> Studio:
    options = StudioOptions(max_references=3, presets=PRESETS_DIR, time_limit_s=60)
    files = tmp_path_factory.mktemp("studio-files")
    return Studio(Engine(pipe, weights="tiny test checkpoint"), Sessions(), options, files)


def test_every_control_has_its_elem_id(studio):
    demo = build_app(studio)
    ids = [c.get("props", {}).get("elem_id") for c in demo.config["components"]]
    expected = ELEM_IDS + [i.format(k=k) for k in (1, 2, 3) for i in SLOT_IDS]
    missing = [i for i in expected if i not in ids]
    assert not missing
    duplicated = {i for i in ids if i and ids.count(i) > 1}
    assert not duplicated
    assert "slot-4" not in ids  # --max-references 3


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
        settings=comp.settings.replace(size=(64, 64), num_timesteps=3, **settings),
        name=comp.name,
        base_dir=comp.base_dir,
    )
    return sigma_core.dumps_preset(comp, embed_images=True)


def test_gradio_client_generates_through_the_api(client):
    image, meta = client.predict(_preset(seed=5), api_name="/generate")
    assert meta["seed"] == 5 and meta["size"] == [64, 64] and meta["preview"] is True
    stored = sigma_core.read_png_composition(image)
    assert stored.settings.seed == 5 and stored.prompt.startswith("Isolate <select>")


def test_gradio_client_validates_and_inspects(client):
    report = client.predict(_preset(), api_name="/validate_preset")
    assert report["valid"] and report["output_size"] == [64, 64]
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
