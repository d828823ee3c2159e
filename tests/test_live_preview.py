"""Live preview: the least-squares latent-to-RGB fit, the x0 estimate, where the factors come from
(stored file, user cache, one fit) and previews from a real tiny pipeline run."""

from __future__ import annotations

import itertools
import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sigma_core import Composition, Reference, Settings, SigmaInputError
from sigma_core.runtime import (
    LIVE_PREVIEW_TENSORS,
    LatentPreviewer,
    estimate_x0,
    fit_latent_rgb,
    live_preview as lp,
    previewer_for,
    step_x0,
    vae_identity,
)
from sigma_core.runtime.sampler import euler_step, timesteps


def _planted(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(16, 3, generator=g) * 0.3, torch.randn(1, 3, generator=g) * 0.1])


# ----------------------------------------------------------------------------- the fit


def test_least_squares_recovers_a_planted_map() -> None:
    factors = _planted(0)
    latents = torch.randn(2000, 16, generator=torch.Generator().manual_seed(1))
    rgb = latents @ factors[:-1] + factors[-1]
    found = lp.solve_latent_rgb(latents, rgb)
    torch.testing.assert_close(found, factors, atol=1e-5, rtol=0)
    quality = lp.fit_quality(found, latents, rgb)
    assert quality["r2"] == [1.0, 1.0, 1.0] and max(quality["rmse"]) < 1e-5


class _LinearVAE:
    """A stand-in VAE whose latents carry each cell's pooled RGB linearly: z = Q·[rgb - c; r],
    r 13 channels of noise, so rgb = Q⁻¹[:3]·z + c exactly."""

    downsample = 8

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(2)
        self.q = torch.randn(16, 16, generator=g, dtype=torch.float64)
        self.c = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)
        self.noise = torch.Generator().manual_seed(3)

    def planted(self) -> torch.Tensor:
        rows = torch.linalg.inv(self.q)[:3]  # rgb - c = rows @ z
        return torch.cat([rows.T, self.c[None]]).float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        rgb = F.avg_pool2d(x.double(), self.downsample) - self.c[:, None, None]
        r = torch.randn(1, 13, *rgb.shape[-2:], generator=self.noise, dtype=torch.float64)
        return torch.einsum("ij,bjhw->bihw", self.q, torch.cat([rgb, r], dim=1)).float()


def test_fit_through_a_vae_recovers_its_linear_map() -> None:
    """The whole path (resize, [-1, 1] pixels, encode, pooling to the latent grid, cell
    pairing) on the shipped images: a VAE that is exactly linear gives its map back."""
    vae = _LinearVAE()
    images = [img for _, img in lp.shipped_images()]
    found = fit_latent_rgb(vae, images, side=64)
    torch.testing.assert_close(found, vae.planted(), atol=2e-4, rtol=0)


def _r2(pred: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    return 1 - (pred - rgb).pow(2).sum(0) / (rgb - rgb.mean(0)).pow(2).sum(0)


def test_tiny_vae_projection_explains_the_shipped_images(pipe, monkeypatch, tmp_path) -> None:
    """On the random tiny VAE the latents carry some of each cell's colour: the stored factors
    beat the mean (R² 0) and zero baselines on every channel, by a margin that a broken pairing
    of cells and pixels does not reach; factors fitted without an image still beat the mean on
    that image, over all images. (The bounds are far below a real VAE's.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # should the store lack them
    named = lp.shipped_images()
    pairs = [lp.latent_rgb_pairs(pipe.vae, [img]) for _, img in named]
    latents, rgb = torch.cat([z for z, _ in pairs]), torch.cat([r for _, r in pairs])
    factors = LatentPreviewer(pipe.vae).factors
    r2 = _r2(lp.apply_factors(factors, latents), rgb)
    zero = _r2(torch.zeros_like(rgb), rgb)
    assert (r2 > 0.04).all() and (r2 > zero).all(), (r2, zero)
    shuffled = rgb[torch.randperm(len(rgb), generator=torch.Generator().manual_seed(0))]
    control = _r2(lp.apply_factors(lp.solve_latent_rgb(latents, shuffled), latents), shuffled)
    assert (control < 0.01).all(), control
    sse = sst = 0
    for i, (z, target) in enumerate(pairs):
        rest = [p for j, p in enumerate(pairs) if j != i]
        rest_rgb = torch.cat([r for _, r in rest])
        held = lp.solve_latent_rgb(torch.cat([z for z, _ in rest]), rest_rgb)
        sse = sse + (lp.apply_factors(held, z) - target).pow(2).sum(0)
        sst = sst + (target - rest_rgb.mean(0)).pow(2).sum(0)
    held_out = 1 - sse / sst
    assert held_out.mean() > 0.01, held_out


# ----------------------------------------------------------------------------- x0 and pixels


def test_x0_estimate_on_a_straight_line_flow() -> None:
    """x_t = (1 - t)·x0 + t·ε has velocity v = ε - x0 = (x_t - x0)/t: the sampler's Euler step
    stays on the line, and the estimate from the step's tensors is x0 at every step."""
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    ts = timesteps(6, 3.0)
    x = eps
    for t, t_next in itertools.pairwise(ts):
        v = (x - x0) / t
        torch.testing.assert_close(v, eps - x0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(estimate_x0(x, v, t), x0, atol=1e-5, rtol=0)
        x = euler_step(x, v, t, t_next)
        torch.testing.assert_close(x, (1 - t_next) * x0 + t_next * eps, atol=1e-5, rtol=0)
        tensors = {"latents": x, "velocity": v, "t": t, "t_next": t_next}
        torch.testing.assert_close(step_x0(tensors), x0, atol=1e-5, rtol=0)
    with pytest.raises(SigmaInputError, match="missing: velocity"):
        step_x0({"latents": x, "t_next": ts[-1]})


def test_preview_pixels_follow_the_factors() -> None:
    """Channel 0 drives red with weight 1: pixels are round((z·0.5 + 0.5)·255), clamped; green
    is the bias 0 (128) and blue the bias -1 (0). Sizes: latent grid, output, explicit."""
    factors = torch.zeros(17, 3)
    factors[0, 0], factors[16, 2] = 1.0, -1.0
    z = torch.zeros(1, 16, 2, 3)
    z[0, 0] = torch.tensor([[-2.0, -1.0, -0.5], [0.0, 0.5, 3.0]])
    img = lp.latent_rgb_image(z, factors)
    assert img.mode == "RGB" and img.size == (3, 2)
    px = np.asarray(img)
    assert px[..., 0].tolist() == [[0, 0, 64], [128, 191, 255]]  # 63.75 -> 64, 191.25 -> 191
    assert (px[..., 1] == 128).all() and (px[..., 2] == 0).all()
    assert lp.latent_rgb_image(z, factors, size=(12, 8), resample="nearest").size == (12, 8)
    with pytest.raises(SigmaInputError, match="latents"):
        lp.latent_rgb_image(torch.zeros(1, 4, 2, 2), factors)


# ----------------------------------------------------------------------------- factor sources


@pytest.fixture
def counted_fits(monkeypatch, tmp_path):
    """A fresh user cache, and a list that grows by one per fit (fits at a small side)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    real = lp.fit_entry

    def fit_entry(vae, **kw):
        calls.append(vae)
        return real(vae, side=64)

    monkeypatch.setattr(lp, "fit_entry", fit_entry)
    return calls


def test_stored_factors_are_used_when_the_identity_matches(pipe, counted_fits, tmp_path) -> None:
    planted = _planted(5)
    store = tmp_path / "store.json"
    entry = {"fit": lp.FIT_VERSION, **lp.factors_to_json(planted)}
    store.write_text(json.dumps({"format": 1, "entries": {vae_identity(pipe.vae): entry}}))
    previewer = LatentPreviewer(pipe.vae, stored=store)
    torch.testing.assert_close(previewer.factors, planted, atol=1e-6, rtol=0)
    assert previewer.source == "stored" and counted_fits == []
    # Another fit version is ignored: the factors are fitted instead.
    entry["fit"] = lp.FIT_VERSION + 1
    store.write_text(json.dumps({"format": 1, "entries": {vae_identity(pipe.vae): entry}}))
    assert LatentPreviewer(pipe.vae, stored=store).factors.shape == (17, 3)
    assert len(counted_fits) == 1


def test_shipped_store_covers_the_preview_engine(pipe, counted_fits) -> None:
    """scripts/latent_rgb_factors.json has the tiny VAE's factors (the conftest checkpoint has
    the preview engine's VAE); if this fails, rerun python -m scripts.fit_latent_rgb."""
    previewer = LatentPreviewer(pipe.vae)
    assert previewer.factors.shape == (17, 3)
    assert previewer.source == "stored" and counted_fits == []


def test_a_missing_identity_is_fitted_once_then_read_from_the_user_cache(
    pipe, counted_fits, tmp_path
) -> None:
    store = tmp_path / "absent.json"
    previewer = LatentPreviewer(pipe.vae, stored=store)
    latents = torch.randn(1, 16, 4, 4)
    barrier = threading.Barrier(4)
    images = []

    def preview() -> None:
        barrier.wait()
        images.append(previewer.preview(latents))

    threads = [threading.Thread(target=preview) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(images) == 4 and len(counted_fits) == 1 and previewer.source == "fitted"
    cached = lp.user_cache_file(previewer.identity)
    assert cached.is_file() and not store.exists()
    again = LatentPreviewer(pipe.vae, stored=store)
    torch.testing.assert_close(again.factors, previewer.factors, atol=1e-6, rtol=0)
    assert again.source == "user cache" and len(counted_fits) == 1
    assert np.array_equal(np.asarray(again.preview(latents)), np.asarray(images[0]))


def test_previewer_for_shares_one_previewer_per_vae(pipe) -> None:
    previewer = previewer_for(pipe.vae)
    assert previewer is previewer_for(pipe.vae)
    with pytest.raises(SigmaInputError, match="'full' is not"):
        previewer.preview(torch.zeros(1, 16, 2, 2), size="full")


# ----------------------------------------------------------------------------- in a run


def test_every_step_of_a_tiny_run_gives_a_live_preview(pipe) -> None:
    def image(seed: int) -> Image.Image:
        small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((256, 256), Image.BILINEAR)

    comp = Composition(
        "Put [1] on a beach next to [2]",
        [Reference(1, image(1), ("<subject>",), "the ball"), Reference(2, image(2), ("<id>",))],
        Settings(size=(128, 96), cfg_interval=(0.4, 1.0)),
    )
    previews = []

    def callback(p, step, t, tensors):
        assert set(tensors) == set(LIVE_PREVIEW_TENSORS)
        previews.append((p.live_preview(tensors), p.live_preview(tensors, size="output")))

    out = pipe(
        comp, num_inference_steps=4, output_type="latent", callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=LIVE_PREVIEW_TENSORS,
    )  # fmt: skip
    assert len(previews) == 3
    for small, full in previews:
        assert isinstance(small, Image.Image) and small.mode == "RGB"
        assert small.size == (16, 12) and full.size == (128, 96)
    # The last step ends at t = 0, where the estimate is the final latent itself.
    final = previewer_for(pipe.vae).preview(out.latents)
    assert np.array_equal(np.asarray(previews[-1][0]), np.asarray(final))
    with pytest.raises(SigmaInputError, match="velocity, t_next"):
        pipe(comp, num_inference_steps=2, output_type="latent",
             callback_on_step_end=lambda p, i, t, k: p.live_preview(k))  # fmt: skip
