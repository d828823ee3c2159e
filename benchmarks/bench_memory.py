"""The VAE's activation peaks, measured on the CPU: the table the memory estimate reads.

    python -m benchmarks.bench_memory           # measure, compare with the table (~50 s, 2 cores)
    python -m benchmarks.bench_memory --write   # and rewrite sigma_core/runtime/memory_table.json

For FLUX's VAE and the tiny preview VAE (random weights: the memory does not depend on their
values), in each measured dtype, it encodes one image and decodes one output at a few sizes under
MemoryMeter, as the engine does (FluxVAE: the input made in fp32, the latent scaling included),
and fits bytes = per_pixel * pixels + constant per phase: a convolutional VAE's maps scale with
the pixels. Printed: each line, its worst residual and its distance from the shipped table.
Written: the table sigma_core.runtime.vae_memory reads, with the machine it came from. Rewrite it
when torch or diffusers change the VAE's peaks (tests/test_vae_memory.py measures and tells).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL

from sigma_core.errors import SigmaError
from sigma_core.model.precision import DTYPES
from sigma_core.model.vae import TINY_VAE_CONFIG, FluxVAE, flux_vae_config
from sigma_core.runtime.meter import MemoryMeter
from sigma_core.runtime.vae_memory import (
    MEASURED_DTYPES,
    TABLE_FORMAT,
    TABLE_PATH,
    parse_table,
    shaping_config,
    shipped_table,
    vae_fingerprint,
)

SIZES = ((64, 64), (128, 96), (192, 128), (256, 256))  # (width, height); FLUX 256^2 takes ~3 s


def vaes() -> dict[str, dict[str, Any]]:
    """The measured VAEs by name: FLUX's config and the tiny preview VAE's."""
    return {"flux": flux_vae_config(), "tiny": {**flux_vae_config(), **TINY_VAE_CONFIG}}


def random_vae(config: dict[str, Any], dtype: torch.dtype) -> FluxVAE:
    """A FluxVAE of ``config`` with diffusers' default init, in ``dtype``."""
    return FluxVAE(AutoencoderKL.from_config(config).requires_grad_(False)).to(dtype).eval()


def measure(vae: FluxVAE, size: tuple[int, int]) -> dict[str, int]:
    """Peak bytes beyond the weights of encoding one (width, height) image made inside the
    block (fp32 pixels, as the engine's to_pixels makes them) and of decoding to that size."""
    w, h = size
    with MemoryMeter("cpu") as encode:
        vae.encode(torch.rand(1, 3, h, w))
    with MemoryMeter("cpu") as decode:
        vae.decode(torch.randn(1, vae.z_channels, h // vae.downsample, w // vae.downsample))
    return {"encode": encode.new_peak, "decode": decode.new_peak}


def fit_line(points: Sequence[tuple[int, int]]) -> tuple[dict[str, float], float]:
    """Least squares bytes = per_pixel * pixels + constant over (pixels, bytes); a negative
    constant is dropped (the line then over-predicts by at most that much). Returns the line
    and its worst relative residual at the measured sizes."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    constant = max(0.0, mean_y - slope * mean_x)
    worst = max(abs(slope * x + constant - y) / y for x, y in points)
    return {"per_pixel": slope, "constant": constant}, worst


def machine() -> dict[str, str]:
    """Where the table was measured: the CPU, threads, library versions and the date."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {
        "device": "cpu", "cpu": cpu, "threads": str(torch.get_num_threads()),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(), "date": datetime.date.today().isoformat(),
    }  # fmt: skip


def build_table(sizes: Sequence[tuple[int, int]] = SIZES, verbose: bool = True) -> dict[str, Any]:
    """Measure every VAE in every measured dtype at ``sizes``; the table as JSON data."""
    torch.manual_seed(0)
    entries: dict[str, Any] = {}
    for name, config in vaes().items():
        lines: dict[str, Any] = {}
        for dtype in MEASURED_DTYPES:
            vae = random_vae(config, DTYPES[dtype])
            measured = [(w * h, measure(vae, (w, h))) for w, h in sizes]
            lines[dtype] = {}
            for phase in ("encode", "decode"):
                line, worst = fit_line([(px, m[phase]) for px, m in measured])
                lines[dtype][phase] = line
                if verbose:
                    print(f"{name:5} {dtype} {phase}: {line['per_pixel']:8.1f} B/px + "
                          f"{line['constant']:7.0f} B (worst residual {worst:.2%})")  # fmt: skip
        shape = vae.autoencoder.config
        entries[vae_fingerprint(shape)] = {
            "name": name, "config": shaping_config(shape), "bytes": lines,
        }  # fmt: skip
    return {
        "format": TABLE_FORMAT,
        "written_by": "python -m benchmarks.bench_memory --write",
        "machine": machine(),
        "sizes": [list(s) for s in sizes],
        "vae": entries,
    }


def compare(table: dict[str, Any]) -> None:
    """Print how far each measured line is from the shipped table's."""
    try:
        shipped = shipped_table()
    except SigmaError as e:
        print(f"no usable shipped table: {e}")
        return
    for fingerprint, entry in table["vae"].items():
        known = shipped.vae.get(fingerprint)
        for dtype, phases in entry["bytes"].items():
            for phase, line in phases.items():
                if known is None:
                    print(f"{entry['name']} {dtype} {phase}: not in the shipped table")
                    continue
                old = known.fits[dtype][phase].per_pixel
                print(f"{entry['name']:5} {dtype} {phase}: {line['per_pixel'] / old - 1:+.2%} "
                      "per pixel against the shipped table")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write", nargs="?", type=Path, const=True, default=None, metavar="PATH",
        help="write the table (default: sigma_core/runtime/memory_table.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    table = build_table()
    parse_table(table)  # what is written must read back
    compare(table)
    print(f"({time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} threads)")
    if args.write is not None:
        path = TABLE_PATH if args.write is True else args.write
        path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
