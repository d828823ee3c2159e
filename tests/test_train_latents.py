"""The training images' VAE posteriors (issue 20, section 4): encoded in batches by size, the
latents the one-at-a-time encode drew for the same generator; kept on disk, the same mean and
std as a fresh encode; hits from the second epoch on; the folder within its bound; a corrupt
file a miss; two writers of one key leave a whole file. Each case reads and writes only its
tmp_path, and reads the tiny checkpoint (the `confined` marker, tests/confine.py)."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from sigma_core.model.bagel import patchify
from sigma_core.model.vae import FluxVAE, write_random_flux_ae
from sigma_core.runtime.references import to_pixels
from sigma_core.training.data import DataPosition, TrainDataset
from sigma_core.training.packing import Draft, ExampleMaker, ImageBounds
from sigma_core.training.posteriors import (
    STALE_SECONDS,
    Posterior,
    PosteriorCache,
    PosteriorEncoder,
)
from sigma_core.training.rows import SkipCounter, TrainSample

SIZE = 96
CACHE_BYTES = 2**30

pytestmark = pytest.mark.confined("tiny_checkpoint")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[TrainSample]:
    from sigma_core.training.synthetic import write_parquet

    path = write_parquet(tmp_path_factory.mktemp("latents") / "s.parquet", 6, size=SIZE, seed=1)
    stream = TrainDataset([path], seed=0).iterate(DataPosition())
    return [next(stream)[1] for _ in range(6)]


def _maker(pipe, cache: PosteriorCache | None = None) -> ExampleMaker:
    # jitter: the images of a batch come in several sizes, so encodes group by size
    bounds = ImageBounds(max_side=SIZE, min_side=64, jitter=0.4)
    return ExampleMaker(pipe.tokenizer, pipe.vae, bounds=bounds, max_tokens=4096, mask=True,
                        image_dropout=0.3, skipped=SkipCounter(), cache=cache)  # fmt: skip


def _drafts(maker: ExampleMaker, samples: list[TrainSample]) -> list[Draft]:
    """The samples' drafts, each seeded by its index, as the trainer seeds by data position."""
    drafts = []
    for i, sample in enumerate(samples):
        draft = maker(sample, random.Random(i), torch.Generator().manual_seed(i))
        assert draft is not None
        drafts.append(draft)
    return drafts


def _latents(examples) -> list[torch.Tensor]:
    return [t for ex in examples for t in (*ex.references.values(), ex.target)]


def test_batched_encode_draws_what_one_encode_per_image_drew(pipe, samples):
    maker = _maker(pipe)
    drafts = _drafts(maker, samples)
    assert len({img.size for d in drafts for img in d.images}) > 1  # several sizes, one batch each
    assert sum(len(d.slots) for d in drafts) > len(drafts)  # references, not only targets
    batched = _latents(maker.encode(drafts))
    # the encode before batching: one image at a time, the noise of a sample from its own
    # generator, its placed references in the draft's order and then its target
    before = []
    for i, d in enumerate(_drafts(maker, samples)):
        g = torch.Generator().manual_seed(i)
        before += [patchify(pipe.vae.encode(to_pixels(x), generator=g).float()) for x in d.images]
    for new, old in zip(batched, before, strict=True):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
    maker.encoder.batch_pixels = 0  # one at a time through the new path: the same numbers
    one_by_one = _latents(maker.encode(_drafts(maker, samples)))
    assert all(torch.equal(a, b) for a, b in zip(one_by_one, before, strict=True))


def test_cached_posterior_is_the_fresh_encodes_mean_and_std(pipe, tmp_path):
    img = Image.effect_mandelbrot((SIZE, 48), (-2, -1, 1, 1), 60).convert("RGB")
    PosteriorEncoder(pipe.vae, PosteriorCache(tmp_path, CACHE_BYTES))([img])  # cold: stored
    encoder = PosteriorEncoder(pipe.vae, PosteriorCache(tmp_path, CACHE_BYTES))  # another run
    (cached,) = encoder([img])
    assert encoder.encoded == 0 and encoder.cache.hits == 1
    fresh = pipe.vae.autoencoder.encode(to_pixels(img)).latent_dist
    torch.testing.assert_close(cached.mean, fresh.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.exp(0.5 * cached.logvar), fresh.std, atol=1e-6, rtol=0)
    drawn = cached.sample(torch.Generator().manual_seed(5))
    again = pipe.vae.encode(to_pixels(img), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(drawn, patchify(again.float()), atol=1e-6, rtol=0)


def test_the_second_epoch_hits_and_draws_the_same_latents(pipe, samples, tmp_path):
    cache = PosteriorCache(tmp_path / "cache", CACHE_BYTES)
    maker = _maker(pipe, cache)
    first = _latents(maker.encode(_drafts(maker, samples)))
    images = sum(len(d.images) for d in _drafts(maker, samples))
    assert maker.encoder.encoded == images and cache.hits == 0
    second = _latents(maker.encode(_drafts(maker, samples)))  # the next epoch, same draws
    assert maker.encoder.encoded == images and cache.hits == images
    uncached = _latents(_maker(pipe).encode(_drafts(maker, samples)))
    for a, b, c in zip(first, second, uncached, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    other = PosteriorEncoder(_other_vae(tmp_path), cache)  # another VAE never reads these
    other([d.images[-1] for d in _drafts(maker, samples)])
    assert other.encoded == len(samples) and cache.hits == images


def _other_vae(folder: Path) -> FluxVAE:
    from sigma_core.model.vae import TINY_VAE_CONFIG

    return FluxVAE.from_file(write_random_flux_ae(folder / "ae" / "ae.safetensors",
                                                  TINY_VAE_CONFIG, seed=9))  # fmt: skip


def _posterior(value: float) -> Posterior:
    return Posterior(torch.full((1, 16, 4, 4), value), torch.full((1, 16, 4, 4), -value))


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def test_the_folder_stays_within_its_bound_least_recently_used_out(tmp_path):
    probe = PosteriorCache(tmp_path / "probe", CACHE_BYTES)
    probe.put("a", _posterior(0.0))
    entry = _files(tmp_path / "probe")[0].stat().st_size
    cache = PosteriorCache(tmp_path / "c", 10 * entry)
    stale = tmp_path / "c" / ".dead-writer.tmp"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - STALE_SECONDS - 1,) * 2)
    shape = (1, 16, 4, 4)
    for i in range(30):
        cache.put(f"k{i}", _posterior(float(i)))
        os.utime(tmp_path / "c" / f"k{i}.safetensors", (1000.0 + i,) * 2)  # a clear order
        if i == 5:
            assert cache.get("k0", shape, torch.device("cpu")) is not None  # used: kept
        assert sum(p.stat().st_size for p in _files(tmp_path / "c")) <= 10 * entry
    kept = {p.stem for p in _files(tmp_path / "c")}
    assert "k0" in kept and "k1" not in kept and "k29" in kept and len(kept) <= 10
    assert not stale.exists()
    assert cache.get("k1", shape, torch.device("cpu")) is None
    PosteriorCache(tmp_path / "c", 3 * entry)  # a smaller bound applies when a run starts
    assert len(_files(tmp_path / "c")) <= 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(os.urandom(300)),
        lambda p: p.write_bytes(b"\xff" * 8 + b"{}"),  # a header length past the end
    ],
    ids=["truncated", "empty", "garbage", "bad-header"],
)
def test_a_corrupt_cache_file_is_a_miss_and_is_replaced(pipe, tmp_path, damage):
    img = Image.effect_mandelbrot((32, 32), (-2, -1, 1, 1), 40).convert("RGB")
    encoder = PosteriorEncoder(pipe.vae, PosteriorCache(tmp_path, CACHE_BYTES))
    (good,) = encoder([img])
    (path,) = _files(tmp_path)
    damage(path)
    (again,) = encoder([img])  # a miss, encoded again: no crash
    assert encoder.encoded == 2 and encoder.cache.misses == 2
    assert torch.equal(again.mean, good.mean)
    encoder([img])  # the file was replaced by a whole one
    assert encoder.encoded == 2 and encoder.cache.hits == 1


def test_a_file_of_other_shapes_is_a_miss(tmp_path):
    cache = PosteriorCache(tmp_path, CACHE_BYTES)
    cache.put("k", _posterior(1.0))
    assert cache.get("k", (1, 16, 8, 8), torch.device("cpu")) is None
    assert cache.get("k", (1, 16, 4, 4), torch.device("cpu")) is not None


def test_a_write_that_fails_is_skipped_with_one_warning(tmp_path, monkeypatch, caplog):
    import errno

    import sigma_core.training.posteriors as posteriors

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(posteriors, "save_file", full)
    cache = PosteriorCache(tmp_path, CACHE_BYTES)
    cache.put("a", _posterior(1.0))
    cache.put("b", _posterior(2.0))
    assert list(tmp_path.iterdir()) == []  # nothing kept, no temporary left
    assert [r.message for r in caplog.records].count(
        f"latent_cache {tmp_path}: cannot write ([Errno 28] No space left on device); "
        "encoding instead"
    ) == 1


def test_two_writers_of_one_key_leave_a_whole_file(tmp_path):
    """Two processes' caches on one folder writing the same key over and over while a third
    reads: every read is one writer's whole posterior or a miss, never a mix or an error."""
    writers = [PosteriorCache(tmp_path, CACHE_BYTES) for _ in range(2)]
    reader = PosteriorCache(tmp_path, CACHE_BYTES)
    shape, seen, done = (1, 16, 4, 4), set(), threading.Event()

    def write(cache: PosteriorCache, value: float) -> None:
        for _ in range(60):
            cache.put("same", _posterior(value))

    def read() -> None:
        while not done.is_set():
            got = reader.get("same", shape, torch.device("cpu"))
            if got is not None:
                values = torch.cat([got.mean.flatten(), -got.logvar.flatten()]).tolist()
                seen.add(frozenset(values))

    threads = [threading.Thread(target=write, args=(w, k + 1.0)) for k, w in enumerate(writers)]
    watcher = threading.Thread(target=read)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert seen and seen <= {frozenset({1.0}), frozenset({2.0})}
    assert [p.name for p in tmp_path.iterdir()] == ["same.safetensors"]  # no temporary left
    assert reader.get("same", shape, torch.device("cpu")) is not None


def test_a_cache_location_that_is_a_file_is_refused(tmp_path):
    from sigma_core.errors import SigmaInputError

    (tmp_path / "file").write_text("x")
    for where in (tmp_path / "file", tmp_path / "file" / "cache"):
        with pytest.raises(SigmaInputError, match=r"latent_cache.*not a folder"):
            PosteriorCache(where, CACHE_BYTES)


def test_a_run_with_the_cache_trains_as_one_without(tiny_checkpoint, tmp_path):
    """Six samples, about two a step, five steps: the second epoch on reads every posterior,
    and the losses are those of a run that encodes every time."""
    from accelerate.state import AcceleratorState, GradientState

    from sigma_core.training.config import TrainConfig
    from sigma_core.training.synthetic import write_parquet
    from sigma_core.training.trainer import Trainer

    shard = write_parquet(tmp_path / "d.parquet", 6, size=64, seed=2)
    base = TrainConfig(base=str(tiny_checkpoint), data=(str(shard),), max_tokens=240,
                       max_image_size=64, min_image_size=64, steps=5, lr=2e-3, warmup_steps=1,
                       mixed_precision="no", gradient_checkpointing=False, trackers=(),
                       save_every=1000)  # fmt: skip
    runs = []
    for name, cache in (("off", None), ("on", str(tmp_path / "cache"))):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        trainer = Trainer(base.replace(output_dir=str(tmp_path / name), latent_cache=cache))
        runs.append((trainer, trainer.run()))
    (off, off_steps), (on, on_steps) = runs
    assert on.cache is not None and on.cache.hits > 0 and on.cache.hit_rate > 0.3
    assert on.cache.misses == on.maker.encoder.encoded < off.maker.encoder.encoded
    for a, b in zip(off_steps, on_steps, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-6)
