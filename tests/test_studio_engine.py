"""The studio's engine handlers: the banner, switching precision and offload for every session,
sessions kept apart, and the memory a run is predicted to need before it starts."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

import sigma_core
from sigma_core import SigmaInputError, SigmaOutOfMemoryError, frontend
from studio import compose, engine as studio_engine, modes, runs, views
from studio.engine import Engine, Sessions, refusals
from studio.forms import Draft, to_composition
from tests.studio_helpers import finish, tiny_engine, two_slots

pytest_plugins = ["tests.studio_fixtures"]


# ----------------------------------------------------------------------------- the engine


def test_the_banner_makes_the_preview_engine_unmistakable(engine):
    assert engine.info.preview and engine.info.precision == "fp32" and engine.info.device == "cpu"
    html = views.banner(engine.info, engine.memory_in_use())
    assert "PREVIEW ENGINE" in html and "random weights" in html and "process memory" in html
    assert "fp32 on cpu · offload none · VAE fp32" in html


# ----------------------------------------------------------------------------- engine modes


@pytest.fixture
def fresh(pipe, tiny_checkpoint) -> Engine:
    """An engine of its own: a switch changes it for whoever holds it."""
    return tiny_engine(pipe, tiny_checkpoint)


def test_the_modes_this_machine_cannot_run_are_marked_with_the_engines_reason():
    refused = refusals("cpu")
    choices = dict((value, label) for label, value in modes.precision_choices(refused))
    assert list(choices) == list(frontend.PRECISIONS)
    assert choices["int8"] == "int8" and choices["nf4"] == "nf4"  # bitsandbytes runs on CPU
    assert choices["fp8"].startswith("fp8 (not here: fp8 runs on NVIDIA GPUs of compute")
    offloads = dict((v, label) for label, v in modes.offload_choices(refused, "int8"))
    assert offloads["none"] == "none"
    assert "int8 layers cannot move between devices" in offloads["model"]
    assert "sequential streams full-precision layers" in offloads["sequential"]
    assert [label for label, _ in modes.offload_choices(refused, "bf16")] == list(
        frontend.OFFLOAD_MODES
    )


def test_a_mode_whose_trial_load_fails_otherwise_is_refused_too(monkeypatch):
    real = sigma_core.SigmaPipeline.preview_engine

    def no_kernels(*, precision, **options):
        if precision == "nf4":
            raise RuntimeError("no kernel image is available for execution on the device")
        return real(precision=precision, **options)

    monkeypatch.setattr(sigma_core.SigmaPipeline, "preview_engine", no_kernels)
    refused = refusals.__wrapped__("cpu")  # uncached
    assert "no kernel image" in refused[("nf4", "none")]
    assert ("int8", "none") not in refused
    label = dict((v, label) for label, v in modes.precision_choices(refused))["nf4"]
    assert label.startswith("nf4 (not here: loading fails (RuntimeError")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # no GPU to try outside a run
    assert refusals.__wrapped__("cuda") == {}


def test_switching_precision_and_offload_reloads_the_engine_for_everyone(fresh, images, tmp_path):
    message = modes.switch_engine(fresh, "nf4", "model")
    assert "now runs nf4 with offload model (was fp32, offload none)" in message
    assert "for everyone" in message
    assert (fresh.info.precision, fresh.info.offload) == ("nf4", "model")
    assert fresh.pipe.precision.name == "nf4" and fresh.options.precision == "nf4"
    assert "nf4 on cpu · offload model · VAE fp32" in views.banner(fresh.info, "")
    _, outcome = finish(
        runs.generate(fresh, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert outcome.error is None and outcome.entries
    assert "already runs nf4" in modes.switch_engine(fresh, "nf4", "model")


@pytest.mark.parametrize(
    ("precision", "offload", "text"),
    [
        ("fp8", "none", "precision: fp8 runs on NVIDIA GPUs"),
        ("int8", "sequential", "offload: sequential streams full-precision layers"),
        ("fp64", "none", "precision: 'fp64' is not one of"),
    ],
)
def test_a_mode_that_cannot_load_keeps_the_old_engine(fresh, precision, offload, text):
    pipe, info = fresh.pipe, fresh.info
    with pytest.raises(SigmaInputError, match=text):
        modes.switch_engine(fresh, precision, offload)
    assert fresh.pipe is pipe and fresh.info == info and fresh.options.precision is None


def test_a_locked_studio_refuses_to_switch_and_says_how(fresh):
    fresh.options = replace(fresh.options, share=True)
    with pytest.raises(SigmaInputError, match=r"restart it with --precision int8 --offload none"):
        modes.switch_engine(fresh, "int8", "none")
    assert fresh.info.precision == "fp32" and "--share" in fresh.lock


def test_when_both_engines_do_not_fit_the_old_one_is_released_first(fresh, monkeypatch):
    real, calls = studio_engine.load_pipeline, []

    def tight(options):  # the new engine fits only once the old one is gone
        calls.append((options.precision, fresh.pipe is None))
        if fresh.pipe is not None:
            raise SigmaOutOfMemoryError("loading the weights", "cuda:0")
        return real(options)

    monkeypatch.setattr(studio_engine, "load_pipeline", tight)
    modes.switch_engine(fresh, "bf16", "none")
    assert calls == [("bf16", False), ("bf16", True)]
    assert fresh.info.precision == "bf16" and fresh.plan is not None


def test_when_the_new_engine_fails_alone_too_the_old_one_is_loaded_again(fresh, monkeypatch):
    real, calls = studio_engine.load_pipeline, []

    def never(options):
        calls.append(options.precision)
        if options.precision == "bf16":
            raise SigmaOutOfMemoryError("loading the weights", "cuda:0")
        return real(options)

    monkeypatch.setattr(studio_engine, "load_pipeline", never)
    with pytest.raises(SigmaOutOfMemoryError):
        modes.switch_engine(fresh, "bf16", "none")
    assert calls == ["bf16", "bf16", None]  # beside, alone, then the old options again
    assert fresh.info.precision == "fp32" and fresh.pipe is not None
    assert fresh.plan(to_composition(Draft(prompt="a cat")), {}).length > 0


def test_a_switch_waits_for_the_run_in_progress(fresh, images):
    started, gate = threading.Event(), threading.Event()

    def hold(step, steps, preview):
        started.set()
        gate.wait(30)

    run = threading.Thread(
        target=fresh.generate,
        args=(to_composition(two_slots(images)),),
        kwargs={"cancel": threading.Event(), "on_step": hold},
    )
    run.start()
    assert started.wait(30)
    switch = threading.Thread(target=modes.switch_engine, args=(fresh, "bf16", "none"))
    switch.start()
    switch.join(0.5)
    assert switch.is_alive() and fresh.info.precision == "fp32"  # queued behind the run
    gate.set()
    run.join(30)
    switch.join(30)
    assert fresh.info.precision == "bf16"


def test_user_text_is_escaped_on_the_page(engine, images):
    draft = replace(two_slots(images), prompt="<b>bold</b> [1] and [2]")
    html = views.sequence(compose.check(engine, draft))
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert "<script>" not in views.messages(["<script>x</script>"], [])


def test_sessions_are_isolated():
    sessions = Sessions()
    a, b = sessions.arm("a"), sessions.arm("b")
    assert sessions.cancel("a") and a.is_set() and not b.is_set()
    assert not sessions.arm("a").is_set()  # Generate arms a fresh token
    sessions.forget("b")
    assert b.is_set() and not sessions.cancel("b")


# ----------------------------------------------------------------------------- memory

GIB = 2**30


def fake_estimates(**peaks_gib: float):
    """An estimator giving each "precision_offload" its peak (GiB); others 100 GiB."""

    def estimate(precision: str, offload: str) -> sigma_core.MemoryEstimate:
        peak = int(peaks_gib.get(f"{precision}_{offload}", 100) * GIB)
        return sigma_core.MemoryEstimate(
            weights=peak // 2, vae_weights=0, kv_cache=peak // 4, activations=peak // 4,
            vae_activations=0, peak=peak, per_device={"cuda:0": peak}, offload=offload,
        )  # fmt: skip

    return estimate


FP8_REFUSED = {("fp8", "none"): "precision: fp8 needs compute capability 8.9 or later"}


def test_a_run_that_fits_shows_its_predicted_peak():
    fit = modes.check_fit(
        fake_estimates(bf16_none=15.2), ("bf16", "none"), 22 * GIB, "cuda:0", {}, None
    )
    assert fit.fits and fit.proposal is None
    assert fit.text.startswith("Predicted peak about 15.2 GiB: weights 7.6")
    assert fit.text.endswith("22.0 GiB available on cuda:0.")
    assert "GiB" in views.memory(fit) and "sigma-problems" not in views.memory(fit)


@pytest.mark.parametrize(
    ("peaks", "refused", "proposal"),
    [
        ({"fp8_none": 9, "int8_none": 8}, {}, ("fp8", "none")),  # best quality first
        ({"fp8_none": 9, "int8_none": 8}, FP8_REFUSED, ("int8", "none")),  # not on this GPU
        ({"int8_none": 12, "nf4_none": 9}, {}, ("nf4", "none")),
        ({"nf4_none": 11, "nf4_model": 6}, {}, ("nf4", "model")),
        ({"nf4_model": 11, "bf16_sequential": 4}, {}, ("bf16", "sequential")),
    ],
)
def test_a_run_that_does_not_fit_proposes_the_first_mode_that_would(peaks, refused, proposal):
    fit = modes.check_fit(
        fake_estimates(bf16_none=15, **peaks), ("bf16", "none"), 10 * GIB, "cuda:0", refused,
        None,
    )  # fmt: skip
    assert not fit.fits and fit.proposal == proposal
    assert "This run does not fit, so it will not start." in fit.text
    assert f"choose precision {proposal[0]} and offload {proposal[1]}" in fit.text
    assert "sigma-problems" in views.memory(fit)


def test_a_locked_studio_proposes_the_flags_instead():
    fit = modes.check_fit(
        fake_estimates(bf16_none=15, int8_none=8), ("bf16", "none"), 10 * GIB, "cuda:0", {},
        "this studio is shared through a public link (--share)",
    )  # fmt: skip
    assert "Restart the studio with --precision int8 --offload none (about 8.0 GiB)" in fit.text


def test_off_cuda_offloading_is_never_proposed():
    fit = modes.check_fit(
        fake_estimates(fp32_none=15, nf4_model=1, bf16_sequential=1), ("fp32", "none"),
        10 * GIB, "cpu", FP8_REFUSED, None,
    )  # fmt: skip
    assert not fit.fits and fit.proposal is None
    assert "No precision or offload fits it here: use a smaller size or fewer references" in (
        fit.text
    )


def test_without_a_known_budget_the_run_goes_ahead():  # ZeroGPU: a GPU per run only
    fit = modes.check_fit(fake_estimates(bf16_none=15), ("bf16", "none"), None, "cuda:0", {}, None)
    assert fit.fits and fit.text.startswith("Predicted peak about 15.0 GiB")


def test_the_engine_predicts_its_runs_and_knows_the_memory_it_may_use(engine, images):
    comp = to_composition(two_slots(images))
    estimate = engine.estimate(comp, "fp32", "none")
    assert estimate.peak > estimate.weights > 0
    assert estimate.peak == engine.pipe.estimate_memory(comp).peak
    assert engine.estimate(comp, "int8", "none").weights < estimate.weights
    assert engine.memory_available() > engine.info.weights_bytes
    fit = modes.fit_for(engine, comp)
    assert fit.fits and "available on cpu" in fit.text


def test_a_run_that_does_not_fit_is_not_started(fresh, images, tmp_path, monkeypatch):
    comp = to_composition(two_slots(images))
    fp32, int8 = (fresh.estimate(comp, p, "none").peak for p in ("fp32", "int8"))
    assert int8 < fp32
    monkeypatch.setattr(fresh, "memory_available", lambda: (int8 + fp32) // 2)
    steps, outcome = finish(
        runs.generate(fresh, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert not steps and not outcome.entries and not (tmp_path / runs.RESULTS).exists()
    assert "does not fit, so it will not start" in outcome.error
    assert "choose precision int8 and offload none" in outcome.error
    modes.switch_engine(fresh, "int8", "none")  # what the message proposes
    _, outcome = finish(
        runs.generate(fresh, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert outcome.error is None and outcome.entries
