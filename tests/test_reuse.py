"""Runs that reuse their work: the references' latent cache (bounded in bytes, least recently
used first out) and several images per call, which encode and prefill once and repeat only the
Euler loop, each image exactly what a call of one image with its seed makes."""

from __future__ import annotations

import pickle
import random
import threading
import weakref
from collections.abc import Iterable

import numpy as np
import pytest
import torch
from PIL import Image

import sigma_core.runtime.pipeline as pipeline_module
from sigma_core import (
    Composition,
    GenerationCancelled,
    Reference,
    Settings,
    SigmaInputError,
    SigmaPipeline,
)
from sigma_core.runtime.references import CacheStats, LatentCache

FLOATS = 100  # each test entry: 100 fp32 values, 400 bytes


def _entry() -> torch.Tensor:
    return torch.zeros(FLOATS)


def _kept(cache: LatentCache, keys: Iterable[str]) -> list[str]:
    return [k for k in keys if cache.get(k) is not None]


# ----------------------------------------------------------------------------- the cache


def test_the_cache_drops_the_least_recently_used_first() -> None:
    cache = LatentCache(max_bytes=3 * 400)
    for key in "abc":
        cache.put(key, _entry())
    assert cache.get("a") is not None  # a is used again: b is now the oldest
    cache.put("d", _entry())
    assert _kept(cache, "abcd") == ["a", "c", "d"]  # read in that order: d is the newest
    cache.put("e", torch.zeros(2 * FLOATS))  # needs two entries' room: a and c go
    assert _kept(cache, "acde") == ["d", "e"]
    assert cache.stats().bytes == 3 * 400


def test_an_entry_larger_than_the_bound_is_not_kept_and_evicts_nothing() -> None:
    cache = LatentCache(max_bytes=1000)
    cache.put("a", _entry())
    cache.put("huge", torch.zeros(300))  # 1200 bytes
    assert _kept(cache, ["a", "huge"]) == ["a"]
    assert cache.stats().bytes == 400
    cache.put("a", torch.zeros(300))  # replacing one with a value too large drops it
    assert cache.stats() == CacheStats(hits=1, misses=1, entries=0, bytes=0, max_bytes=1000)


def test_the_bytes_held_never_pass_the_bound_and_the_stats_add_up() -> None:
    rng = random.Random(0)
    cache = LatentCache(max_bytes=4000)
    sizes: dict[str, int] = {}
    for _ in range(500):
        key = f"k{rng.randrange(30)}"
        if rng.random() < 0.5:
            sizes[key] = 4 * (n := rng.randrange(1, 400))
            cache.put(key, torch.zeros(n))
        else:
            cache.get(key)
        stats = cache.stats()
        held = [k for k in sizes if k in cache._entries]
        assert stats.bytes == sum(sizes[k] for k in held) <= stats.max_bytes
        assert stats.entries == len(held)
    assert stats.hits > 0 and stats.misses > 0 and 0 < stats.hit_rate < 1
    cache.clear()
    assert cache.stats() == CacheStats(0, 0, 0, 0, 4000) and cache.stats().hit_rate == 0.0


def test_threads_may_share_the_cache() -> None:
    cache = LatentCache(max_bytes=20 * 400)
    gets = 8 * 2000
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(2000):
            key = f"k{rng.randrange(40)}"
            if cache.get(key) is None:
                cache.put(key, _entry())

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == gets
    assert stats.entries == len(cache._entries) == 20 and stats.bytes == 20 * 400


def test_the_bound_is_an_option_checked_before_loading(tiny_checkpoint) -> None:
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu", latent_cache_bytes=4096)
    assert pipe.encode_references.stats().max_bytes == 4096
    for bad in (-1, 1.5, "big", True):
        with pytest.raises(SigmaInputError, match="latent_cache_bytes"):
            SigmaPipeline.from_pretrained(tiny_checkpoint, latent_cache_bytes=bad)


# ----------------------------------------------------------------------------- runs


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def _comp(prompt: str = "Put [1] on a beach next to [2] at sunset", **settings) -> Composition:
    """Two references, ending with text: gen, cfg_text and cfg_img are three distinct rows."""
    refs = [
        Reference(1, _image(1, (512, 512)), ("<subject>",), "the ball"),
        Reference(2, _image(2, (640, 512)), ("<id>",), "the person"),
    ]
    settings = {"size": (64, 64), "num_timesteps": 4, "cfg_img_scale": 2.0, **settings}
    return Composition(prompt, refs, Settings(**settings))


def test_a_new_seed_or_prompt_word_skips_the_encode(fresh) -> None:
    pipe, calls = fresh
    pipe(_comp(seed=1), output_type="latent")
    assert calls.count("encode") == 2
    pipe(_comp(seed=2), output_type="latent")
    pipe(_comp("Put [1] on a beach next to [2] at dawn", seed=2), output_type="latent")
    assert calls.count("encode") == 2 and calls.count("prefill") == 3
    stats = pipe.encode_references.stats()
    assert (stats.hits, stats.misses, stats.entries) == (4, 2, 2)
    assert stats.bytes == (32 * 32 + 40 * 32) * 64 * 4  # 512x512 and 640x512: [n, 64] fp32
    assert stats.hit_rate == pytest.approx(4 / 6)


@pytest.mark.parametrize("batch_cfg", [False, True], ids=["sequential", "batched"])
def test_images_of_one_call_equal_separate_calls_with_their_seeds(
    fresh, batch_cfg, tmp_path
) -> None:
    """Encode and prefill once, three Euler loops on the same KV cache: each image bit for bit
    what a call of one image makes, with text and image CFG on (three cache rows)."""
    pipe, calls = fresh
    heard: list[tuple[str, int, int]] = []
    out = pipe(_comp(seed=7), num_images_per_prompt=3, batch_cfg=batch_cfg,
               callback_on_phase=lambda *a: heard.append(a))  # fmt: skip
    assert calls == ["encode", "encode", "prefill"]
    assert out.seeds == [7, 8, 9] and out.seed == 7 and out.settings.seed == 7
    assert out.latents.shape == (3, 16, 8, 8) and len(out.images) == 3
    assert [h for h in heard if h[0] in ("image", "denoise", "decode")] == [
        ("image", 0, 3), ("denoise", 0, 3), ("image", 1, 3), ("denoise", 0, 3),
        ("image", 2, 3), ("denoise", 0, 3), ("decode", 0, 3),
    ]  # fmt: skip
    for i, one in enumerate(out.split()):
        alone = pipe(_comp(seed=7 + i), batch_cfg=batch_cfg)
        assert torch.equal(one.latents, alone.latents), i
        assert one.images[0].tobytes() == alone.images[0].tobytes()
        assert one.seed == one.settings.seed == 7 + i and one.num_passes == alone.num_passes
    assert len({out.latents[i].sum().item() for i in range(3)}) == 3  # three different images
    with pytest.raises(SigmaInputError, match="holds 3 images"):
        out.save(tmp_path / "three.png")  # each saves on its own, with its seed
    assert out.split()[2].save(tmp_path / "third.png").is_file()


def test_a_list_of_generators_gives_one_image_each(fresh) -> None:
    pipe, _ = fresh
    out = pipe(_comp(), generator=[torch.Generator().manual_seed(s) for s in (5, 3)],
               output_type="np")  # fmt: skip
    assert out.seeds == [5, 3] and out.images.shape == (2, 64, 64, 3)
    alone = pipe(_comp(seed=3), output_type="np")
    assert np.array_equal(out.split()[1].images, alone.images)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"num_images_per_prompt": 0}, "num_images_per_prompt: 0 must be"),
        ({"num_images_per_prompt": 2, "generator": torch.Generator()}, "consecutive seeds"),
        ({"num_images_per_prompt": 2, "latents": torch.zeros(1, 16, 8, 8)}, "consecutive seeds"),
        ({"num_images_per_prompt": 3, "generator": [torch.Generator()] * 2}, "a list of 2"),
        ({"generator": []}, "a list of 0"),
    ],
)
def test_what_cannot_make_several_images_is_refused(fresh, call, message) -> None:
    pipe, calls = fresh
    with pytest.raises(SigmaInputError, match=message):
        pipe(_comp(seed=1), output_type="latent", **call)
    assert calls == []  # refused while planning, before any work


def test_the_step_callback_runs_for_each_image_and_cancel_stops_within_a_step(fresh) -> None:
    pipe, _ = fresh
    stop, steps = threading.Event(), []

    def step(p, i, t, tensors):
        steps.append(i)
        if len(steps) == 4:  # the first step of the second image
            stop.set()

    with pytest.raises(GenerationCancelled, match="after step 1 of 3") as e:
        pipe(_comp(seed=1), num_images_per_prompt=3, output_type="latent", cancel=stop,
             callback_on_step_end=step)  # fmt: skip
    assert steps == [0, 1, 2, 0] and e.value.step == 1
    assert e.value.partial.seeds == [1] and e.value.partial.images is None  # image 1, as asked


def test_a_cancel_keeps_the_images_done_decoded_after_the_kv_cache_is_freed(
    fresh, monkeypatch
) -> None:
    """Cancelled during image 2 of 3: image 1 is still decoded, once the KV cache is freed, and
    goes with the cancel, exactly what a call of one image with its seed makes."""
    pipe, _ = fresh
    made, freed = [], []
    denoiser, decode = pipeline_module.Denoiser, pipe.vae.decode

    def track(*args, **kwargs):
        made.append(weakref.ref(d := denoiser(*args, **kwargs)))
        return d

    monkeypatch.setattr(pipeline_module, "Denoiser", track)
    monkeypatch.setattr(
        pipe.vae, "decode", lambda z: freed.append(all(r() is None for r in made)) or decode(z)
    )
    stop, steps = threading.Event(), []

    def step(p, i, t, tensors):
        steps.append(i)
        if len(steps) == 5:  # the second step of the second image
            stop.set()

    with pytest.raises(GenerationCancelled, match="during image 2 of 3, after step 2 of 3") as e:
        pipe(_comp(seed=7), num_images_per_prompt=3, cancel=stop, callback_on_step_end=step)
    part = e.value.partial
    assert freed == [True] and e.value.step == 2  # image 1 alone decoded, the cache gone
    assert part.seeds == [7] and part.seed == part.settings.seed == 7 and len(part.images) == 1
    alone = pipe(_comp(seed=7))
    assert torch.equal(part.latents, alone.latents)
    assert part.images[0].tobytes() == alone.images[0].tobytes()
    assert part.num_passes == alone.num_passes and part.split() == [part]
    again = pickle.loads(pickle.dumps(e.value))  # as a ZeroGPU run sends it back
    assert str(again) == str(e.value) and again.step == 2
    assert torch.equal(again.partial.latents, alone.latents)
    # a cancel before any image is done keeps nothing; a call of one image names no image
    for n, where in ((2, "^cancelled during image 1 of 2, after"), (1, "^cancelled after")):
        stop.clear()
        with pytest.raises(GenerationCancelled, match=where + " step 1 of 3$") as e:
            pipe(_comp(seed=7), num_images_per_prompt=n, cancel=stop,
                 callback_on_step_end=lambda *a: stop.set())  # fmt: skip
        assert e.value.partial is None
