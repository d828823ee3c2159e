"""What the status line says while a run goes: each phase (planning, encoding reference k of n,
prefill, the steps, decoding), and a time left that follows the step rate alone."""

from __future__ import annotations

import time
from dataclasses import replace

from studio import runs, views
from studio.engine import Engine, Sessions
from studio.options import StudioOptions
from tests.studio_helpers import FAST, two_slots

pytest_plugins = ["tests.studio_fixtures"]


class SlowEncode(Engine):
    """A run whose encoding takes 0.6 s, its prefill 0.2 s, and its 20 steps 10 ms each."""

    def __init__(self, pipe) -> None:
        super().__init__(pipe, weights="slow encode", options=StudioOptions())

    def generate(self, composition, *, cancel, on_step=None, on_phase=None, seeds=()):
        on_phase("plan", 0, 1)
        for k in range(2):
            on_phase("encode", k, 2)
            time.sleep(0.3)
        on_phase("prefill", 0, 1)
        time.sleep(0.2)
        on_phase("denoise", 0, 20)
        for step in range(1, 21):
            time.sleep(0.01)
            on_step(step, 20, None)
        on_phase("decode", 0, 1)
        return super().generate(replace(composition), cancel=cancel, seeds=seeds)


def test_the_status_names_each_phase_and_times_only_the_steps(pipe, images, tmp_path):
    sessions = Sessions()
    sessions.arm("a")
    items = list(
        runs.generate(SlowEncode(pipe), sessions, "a", two_slots(images), files=tmp_path,
                      time_limit_s=60)
    )  # fmt: skip
    texts = [views.progress(i) for i in items if isinstance(i, runs.Progress)]
    # each phase that lasts is shown (an instant one may give way to the next at once)
    assert "Encoding reference 1 of 2…" in texts and "Encoding reference 2 of 2…" in texts
    assert "Reading the prompt and the references (prefill)…" in texts
    assert "Denoising: step 1 of 20 running…" in texts
    assert texts[-1] == "Decoding the image…" or texts[-1].startswith("step")
    steps = [i for i in items if isinstance(i, runs.Progress) and i.phase == "denoise" and i.step]
    assert steps
    # 10 ms a step: the encode's 0.6 s is not in the rate, nor in the time left
    assert all(p.elapsed_s / p.step < 0.1 for p in steps), [p.elapsed_s for p in steps]
    assert isinstance(items[-1], runs.Outcome) and items[-1].error is None


def test_time_left_is_the_remaining_steps_at_the_step_rate():
    p = runs.Progress(1, 1, 10, 49, elapsed_s=10.0)
    assert views.progress(p) == "step 10/49 · 1.00 s/step · about 39 s left"
    two = runs.Progress(1, 2, 10, 49, elapsed_s=5.0)  # the second image's steps count too
    assert views.progress(two) == "image 1/2 · step 10/49 · 0.50 s/step · about 44 s left"
    encode = runs.Progress(2, 2, 0, 3, phase="encode")
    assert views.progress(encode) == "image 2/2 · Encoding reference 1 of 3…"
    assert views.progress(replace(encode, step=3)) == "image 2/2 · 3 references ready"
    cached = replace(encode, step=2, reused=2)
    assert views.progress(cached) == (
        "image 2/2 · Encoding reference 3 of 3… (2 reused from an earlier run)"
    )


def test_the_pipeline_reports_its_phases_in_order(pipe, images):
    from studio.forms import to_composition

    comp = to_composition(replace(two_slots(images), settings=FAST.replace(num_timesteps=4)))
    heard: list[tuple[str, int, int]] = []
    pipe.encode_references.clear()  # a shared engine: other tests' runs cached these images
    out = pipe(comp, callback_on_phase=lambda *a: heard.append(a))
    assert heard == [
        ("plan", 0, 1), ("encode", 0, 2), ("encode", 1, 2), ("encode", 2, 2),
        ("prefill", 0, 1), ("denoise", 0, 3), ("decode", 0, 1),
    ]  # fmt: skip
    assert set(out.timings) == {f"{p}_s" for p in ("plan", "encode", "prefill", "denoise",
                                                   "decode", "total")}  # fmt: skip
    heard.clear()
    pipe(comp, output_type="latent", callback_on_phase=lambda *a: heard.append(a))
    assert [h[0] for h in heard][-1] == "denoise"  # nothing decoded
    assert heard[1:4] == [("encode", 0, 2), ("reuse", 1, 2), ("reuse", 2, 2)]  # cached now
