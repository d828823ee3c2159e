"""Seeded tiny runs whose final latents are stored in tests/data/golden_latents.safetensors.

The stored numbers pin the engine: a refactor or a speed change that moves them fails
``test_golden.py``. When a change of numbers is intended, regenerate the file and say why in the
commit:

    python -m tests.golden_cases --write        (from the repository root)

Each case is a tiny random checkpoint (official layout, fp32 on CPU), a composition with
code-drawn references, fixed noise and a few steps; 64x64 outputs keep the file at a few KB.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

GOLDEN_FILE = Path(__file__).with_name("data") / "golden_latents.safetensors"
REGENERATE = "python -m tests.golden_cases --write"


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


# name -> (checkpoint W_tau, prompt, settings)
CASES: dict[str, tuple[bool, str, dict]] = {
    "ends_with_text": (False, "Put [1] on a beach next to [2] at sunset", {}),
    "ends_with_image": (
        False,
        "Paint [1] in the style of [2]",
        {"mask": False, "cfg_renorm_type": "global"},
    ),
    "text_only": (False, "a red fox in the snow", {"cfg_renorm_type": "channel"}),
    "attribute_projection": (
        True,
        "A <subject> ball <image_1> beside <id> a person <image_2> at dusk",
        {"cfg_img_scale": 1.0, "cfg_interval": (0.3, 1.0)},
    ),
}
STEPS = 5  # timesteps: 4 Euler steps


def composition(prompt: str, settings: dict):
    from sigma_core import Composition, Reference, Settings

    refs = [
        Reference(1, _image(1, (512, 512)), ("<subject>",), "the ball"),
        Reference(2, _image(2, (640, 512)), ("<id>",), "the person"),
    ]
    if "[" not in prompt and "<image" not in prompt:
        refs = []
    return Composition(prompt, refs, Settings(size=(64, 64), num_timesteps=STEPS, **settings))


def noise(index: int) -> torch.Tensor:
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1000 + index))


def run_cases(
    folder: Path, *, batch_cfg: bool = False, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Final latents [1, 16, 8, 8] of every case, on tiny checkpoints written into ``folder``."""
    from sigma_core import SigmaPipeline
    from sigma_core.runtime import make_tiny_checkpoint

    pipes = {
        wtau: SigmaPipeline.from_pretrained(
            make_tiny_checkpoint(folder / f"wtau{int(wtau)}", seed=0, attribute_embed=wtau),
            device=device,
            dtype=torch.float32,
        )
        for wtau in (False, True)
    }
    out = {}
    for i, (name, (wtau, prompt, settings)) in enumerate(CASES.items()):
        comp = composition(prompt, settings)
        result = pipes[wtau](comp, latents=noise(i), output_type="latent", batch_cfg=batch_cfg)
        out[name] = result.latents.float().contiguous()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN_FILE.name}")
    args = parser.parse_args()
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        latents = run_cases(Path(tmp))
    if args.write:
        GOLDEN_FILE.parent.mkdir(exist_ok=True)
        save_file(latents, str(GOLDEN_FILE), metadata={"regenerate": REGENERATE})
        print(f"wrote {GOLDEN_FILE} ({GOLDEN_FILE.stat().st_size} bytes)")
        return
    stored = load_file(str(GOLDEN_FILE))
    for name, value in latents.items():
        diff = (value - stored[name]).abs().max().item()
        print(f"{name:24s} max |diff| {diff:.2e}  (|x| max {value.abs().max().item():.2f})")


if __name__ == "__main__":
    main()
