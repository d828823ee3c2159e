"""Results that can be told apart: history captions with the title and the settings that
differ, a result panel with its title and prompt, comparison sides that say what they are."""

from __future__ import annotations

from studio import runs, views


def _entry(**overrides) -> dict:
    settings = {"num_timesteps": 50, "mask": True, "layout": "inference", "seed": 42}
    entry = {
        "file": "a.png", "thumb": "data:", "seed": 42, "preset": "{}", "size": [512, 512],
        "preview": True, "name": "", "prompt": "A photo of [1] holding [2]", "settings": settings,
    }  # fmt: skip
    entry.update(overrides)
    return entry


def test_captions_carry_the_title_and_what_differs():
    same = [_entry(), _entry(seed=43)]
    assert runs.varying_settings(same) == []  # the seed and size are always shown
    assert (
        runs.caption(same[0]) == "A photo of [1] holding [2] · seed 42 · 512×512 · preview engine"
    )
    off = _entry(settings={**_entry()["settings"], "mask": False, "num_timesteps": 30})
    named = _entry(name="Cat on the moon", settings={**_entry()["settings"], "layout": "training"})
    entries = [_entry(), off, named]
    varying = runs.varying_settings(entries)
    assert sorted(varying) == ["layout", "mask", "num_timesteps"]
    captions = [runs.caption(e, varying) for e in entries]
    assert len(set(captions)) == 3  # no two alike
    assert "mask off" in captions[1] and "steps 30" in captions[1]
    assert captions[2].startswith("Cat on the moon · seed 42") and "layout training" in captions[2]
    long = runs.caption(_entry(prompt="x" * 100))
    assert long.startswith("x" * 39 + "…")


def test_captions_survive_hostile_history_entries():
    odd = _entry(settings="not a dict", name=None, prompt=None)
    assert runs.varying_settings([odd, _entry()]) == []  # a non-dict is read as no settings
    assert runs.caption(odd, ["mask"]).startswith("untitled · seed 42")


def test_the_result_panel_names_the_result_and_the_comparison_sides():
    info = views.result_info(_entry(name="Cat <b>on</b> the moon"))
    assert (
        info.splitlines()[0] == "**Cat &lt;b&gt;on&lt;/b&gt; the moon**: A photo of [1] holding [2]"
    )
    assert "Seed 42" in info
    assert "left, SIGMA's mask on" in runs.AB_LABEL and "right, mask off" in runs.AB_LABEL
    assert runs.compare_label(2) == "Compare: left, reference [2] · right, the result"
