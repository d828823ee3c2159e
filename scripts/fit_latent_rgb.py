"""Fit the live preview's latent-to-RGB factors for a VAE and store them in latent_rgb_factors.json.

The live preview (sigma_core.runtime.live_preview) shows a step's x0 estimate through a linear
16 -> 3 map instead of the VAE decoder. This script fits that map by least squares for the VAE in
a checkpoint folder, on the shipped images (assets/: each encoded to its posterior
mean, its RGB in [-1, 1] average-pooled to the latent grid), prints the fit quality and writes
the 16x3 weights and the bias into latent_rgb_factors.json next to this file, keyed by the VAE's
identity (sigma_core.runtime.live_preview.vae_identity). A VAE without an entry there is fitted
the same way on first use and cached in the user cache, so storing one is an optimisation.

    python -m scripts.fit_latent_rgb                      (the preview engine's tiny VAE)
    python -m scripts.fit_latent_rgb --checkpoint DIR     (DIR/ae.safetensors, e.g. BAGEL's)

Besides the in-sample R² and RMSE per RGB channel (what the stored factors achieve on the images
they were fitted to), it prints the held-out R²: each image predicted by factors fitted to the
others, pooled over the images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sigma_core.model.vae import FluxVAE
from sigma_core.runtime.live_preview import (
    FIT_SIDE,
    FIT_VERSION,
    STORED_FACTORS,
    apply_factors,
    latent_rgb_pairs,
    make_entry,
    read_store,
    shipped_images,
    solve_latent_rgb,
    vae_identity,
    write_json_atomic,
)
from sigma_core.runtime.loader import AE_FILE, is_preview_checkpoint
from sigma_core.runtime.tiny import preview_checkpoint

STORE = Path(__file__).resolve().with_name("latent_rgb_factors.json")
assert STORE == STORED_FACTORS, "the runtime reads the file this script writes"
ABOUT = (
    "Live-preview latent-to-RGB factors, written by scripts/fit_latent_rgb.py: per VAE identity, "
    "rgb = latents[16] @ weights[16][3] + bias[3], rgb in [-1, 1] (shown as rgb*0.5+0.5); "
    "r2 and rmse per RGB channel on the fitting images."
)


def held_out_r2(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """R² per channel of each image's cells predicted by factors fitted to the other images,
    SSE and SST (about the other images' mean) pooled over the images."""
    sse = sst = torch.zeros(3, dtype=torch.float64)
    for i, (latents, rgb) in enumerate(pairs):
        rest = [p for j, p in enumerate(pairs) if j != i]
        rest_rgb = torch.cat([r for _, r in rest]).double()
        factors = solve_latent_rgb(torch.cat([z for z, _ in rest]), rest_rgb)
        err = apply_factors(factors.double(), latents.double()) - rgb.double()
        sse = sse + err.pow(2).sum(0)
        sst = sst + (rgb.double() - rest_rgb.mean(0)).pow(2).sum(0)
    return [round(float(v), 4) for v in 1 - sse / sst]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="folder with ae.safetensors")
    parser.add_argument("--side", type=int, default=FIT_SIDE, help="longer image side to encode")
    parser.add_argument("--store", type=Path, default=STORE, help="the JSON file to update")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    folder = args.checkpoint or preview_checkpoint()
    vae = FluxVAE.from_file(folder / AE_FILE, device=args.device)
    identity = vae_identity(vae)
    label = "preview engine (tiny random VAE)" if is_preview_checkpoint(folder) else folder.name
    print(f"VAE {folder / AE_FILE}: identity {identity} ({label})")

    t0 = time.perf_counter()
    named = shipped_images()
    pairs = [latent_rgb_pairs(vae, [img], side=args.side) for _, img in named]
    t1 = time.perf_counter()
    latents = torch.cat([z for z, _ in pairs])
    rgb = torch.cat([r for _, r in pairs])
    entry = make_entry([n for n, _ in named], latents, rgb, side=args.side)
    entry["held_out_r2"] = held_out_r2(pairs)
    entry["vae"] = label
    t2 = time.perf_counter()

    print(f"encoded {len(named)} images (longer side {args.side}) in {t1 - t0:.2f}s")
    print(f"fitted {entry['samples']} latent cells in {t2 - t1:.3f}s")
    print("channel        R     G     B")
    for key in ("r2", "rmse", "held_out_r2"):
        print(f"{key:<12}" + "".join(f"{v:6.3f}" for v in entry[key]))

    store = read_store(args.store)
    store["format"] = 1
    store["fit_version"] = FIT_VERSION
    store["about"] = ABOUT
    store["entries"] = {**store["entries"], identity: entry}
    write_json_atomic(
        args.store, {k: store[k] for k in ("format", "fit_version", "about", "entries")}
    )
    print(f"wrote {args.store} (entry {identity})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
