"""ZeroGPU: the generation call is wrapped in spaces.GPU only on a ZeroGPU Space."""

from __future__ import annotations

import sys
import types

import pytest

from sigma_core import Composition, Reference, Settings
from studio import zerogpu


def _comp(steps: int, size: tuple[int, int] | None, refs: int) -> Composition:
    prompt = " ".join(f"[{k}]" for k in range(1, refs + 1)) or "a cat"
    references = tuple(
        Reference(slot=k, image=b"", attributes=("<subject>",)) for k in range(1, refs + 1)
    )
    return Composition(prompt, references, Settings(num_timesteps=steps, size=size))


def test_off_zerogpu_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setitem(sys.modules, "spaces", None)  # importing it would fail
    fn = lambda composition: composition  # noqa: E731
    assert zerogpu.gpu_function(fn) is fn


def test_on_zerogpu_the_run_asks_for_a_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    fake = types.ModuleType("spaces")

    def gpu(*, duration):  # records the duration function and calls it as ZeroGPU would
        def wrap(fn):
            def run(*args, **kwargs):
                asked.append(duration(*args, **kwargs))
                return fn(*args, **kwargs)

            return run

        return wrap

    fake.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    wrapped = zerogpu.gpu_function(lambda composition, cancel, step_end: "ran")
    assert wrapped(_comp(50, (1024, 1024), 3), None, None) == "ran"
    assert asked == [zerogpu.gpu_seconds(_comp(50, (1024, 1024), 3))]


def test_duration_grows_with_steps_size_and_references() -> None:
    small = zerogpu.gpu_seconds(_comp(10, (512, 512), 1))
    assert small == zerogpu.MIN_S
    base = zerogpu.gpu_seconds(_comp(50, (1024, 1024), 1))
    assert zerogpu.gpu_seconds(_comp(80, (1024, 1024), 1)) > base
    assert zerogpu.gpu_seconds(_comp(50, (1024, 1024), 8)) > base
    assert zerogpu.gpu_seconds(_comp(50, (768, 768), 1)) < base
    # a run of three images asks once, for every image's steps: two more times 147 passes of 0.2 s
    assert zerogpu.gpu_seconds(_comp(50, (1024, 1024), 1), [None] * 3) >= base + 58
    assert zerogpu.gpu_seconds(_comp(1000, (1024, 1024), 16)) == zerogpu.MAX_S
