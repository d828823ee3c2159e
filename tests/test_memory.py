"""Memory prediction (runtime.memory): the predictor against what MemoryMeter measures on tiny
runs, its full-size BAGEL numbers, and its arguments. The VAE's table: tests/test_vae_memory.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sigma_core import SigmaInputError, SigmaPipeline
from sigma_core.model.config import BAGEL_7B_MOT
from sigma_core.model.vae import FluxVAE, flux_vae_config, write_random_flux_ae
from sigma_core.runtime import MemoryEstimate, MemoryMeter, estimate_memory, make_tiny_checkpoint
from sigma_core.runtime.contexts import prefill_contexts
from sigma_core.runtime.memory import (
    GIB,
    EngineShape,
    estimate_for_plan,
    module_bytes,
    plan_cfg_rows,
)
from tests.golden_cases import composition

TOLERANCE = 0.15
GB = 10**9
BAGEL = BAGEL_7B_MOT
PROMPTS = {0: "a red fox in the snow", 2: "Put [1] on a beach next to [2] at sunset"}


def _comp(refs: int, size: tuple[int, int], **settings):
    """A golden-case composition with ``refs`` references (512x512 and 640x512) at ``size``."""
    comp = composition(PROMPTS[refs], {})
    return replace(comp, settings=comp.settings.replace(size=size, num_timesteps=3, **settings))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # 8 layers of hidden 64: the generator's own tensors (weights, KV cache, activations) are
    # then a few MB, comparable with the tiny VAE's weights.
    return make_tiny_checkpoint(tmp_path_factory.mktemp("memory_ckpt"), layers=8)


@pytest.fixture(scope="module")
def pipes(checkpoint):
    """One CPU pipeline per precision, loaded on first use."""
    loaded: dict[str, SigmaPipeline] = {}

    def get(precision: str) -> SigmaPipeline:
        if precision not in loaded:
            loaded[precision] = SigmaPipeline.from_pretrained(
                checkpoint, precision=precision, device="cpu"
            )
        return loaded[precision]

    return get


def _within(predicted: int, measured: int) -> bool:
    return abs(predicted - measured) <= TOLERANCE * measured


# --- against measured runs (tiny model, CPU) -----------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "nf4"])
def test_weights_are_what_the_loader_keeps(pipes, precision):
    pipe = pipes(precision)
    est = pipe.estimate_memory(_comp(0, (64, 64)))
    assert _within(est.weights, module_bytes([pipe.model])), (est.weights, precision)
    assert est.vae_weights == module_bytes([pipe.vae])


# The whole run, VAE included. The tiny VAE keeps 32 channels up to full resolution, so its maps
# dwarf a hidden-64 LLM wherever the images are large: at 256^2 the decode is ~42 of ~47 MB, and
# with the two references (resized to 512 px) their encode is ~172 of ~177 MB. At 64^2 without
# references the weights dominate. The generator's own parts are checked apart below.
@pytest.mark.parametrize(
    ("precision", "refs", "size"),
    [
        ("fp32", 0, (64, 64)),
        ("fp32", 0, (256, 256)),
        ("fp32", 2, (64, 64)),
        ("bf16", 0, (64, 64)),
        ("int8", 0, (128, 128)),
        ("nf4", 0, (64, 64)),
    ],
)
def test_peak_of_a_run_is_predicted(pipes, precision, refs, size):
    pipe = pipes(precision)
    comp = _comp(refs, size)
    predicted = pipe.estimate_memory(comp).peak
    pipe.encode_references.clear()
    with MemoryMeter("cpu", [pipe.model, pipe.vae]) as meter:
        pipe(comp)
    assert _within(predicted, meter.peak), (predicted, meter.peak)


# The generator phase alone: references encoded beforehand (the encoder caches their latents)
# and no decode, so the weights, the KV cache and one forward's activations make the peak. With
# two references in fp32 the KV cache and activations are ~19 of ~24 MB.
@pytest.mark.parametrize(
    ("precision", "refs", "size", "batch_cfg"),
    [
        ("fp32", 0, (128, 128), False),
        ("fp32", 2, (64, 64), False),
        ("fp32", 2, (128, 128), True),
        ("bf16", 2, (64, 64), False),
        ("int8", 2, (64, 64), False),
        ("nf4", 2, (64, 64), False),
    ],
)
def test_generator_phase_is_predicted(pipes, precision, refs, size, batch_cfg):
    pipe = pipes(precision)
    comp = _comp(refs, size)
    est = pipe.estimate_memory(comp, batch_cfg=batch_cfg)
    predicted = est.weights + est.vae_weights + est.kv_cache + est.activations
    pipe(comp, output_type="latent")  # encodes the references into the encoder's cache
    with MemoryMeter("cpu", [pipe.model, pipe.vae]) as meter:
        pipe(comp, output_type="latent", batch_cfg=batch_cfg)
    assert _within(predicted, meter.peak), (predicted, meter.peak)
    assert est.kv_cache + est.activations > 0.5 * meter.new_peak


@pytest.mark.parametrize(
    ("refs", "settings", "rows"),
    [
        (2, {}, 3),  # ends with text and has images: gen, cfg_text, cfg_img
        (0, {}, 2),  # no image: cfg_img is gen
        (2, {"cfg_text_scale": 1.0}, 1),  # no CFG at all
        (2, {"cfg_img_scale": 1.0}, 2),
    ],
)
def test_kv_cache_is_the_one_prefill_builds(pipes, refs, settings, rows):
    pipe = pipes("fp32")
    comp = _comp(refs, (64, 64), **settings)
    plan = pipe.plan(comp)
    assert plan_cfg_rows(plan, comp.settings) == rows
    latents = pipe.encode_references(plan, comp.load_images())
    cache = prefill_contexts(pipe.model, plan, latents).cache
    built = sum(t.nbytes for t in (*cache.keys, *cache.values))
    est = pipe.estimate_memory(comp)
    # prefill_contexts always builds the rows the settings could need; the run needs `rows`.
    assert est.kv_cache == built * rows // cache.batch


def test_an_unknown_vae_gets_the_conservative_fallback(tmp_path):
    # FLUX's layout (2 res blocks, channel ratios 1:2:4:4, shortcuts, mid attention) at a quarter
    # of its channels: a config the table does not hold. Its weights are still exact (counted on
    # the module); its activations come from the widest measured bytes per pixel per channel,
    # with a margin: never below the measured peak, and not far above it.
    config = {"block_out_channels": [32, 64, 128, 128], "layers_per_block": 2}
    vae = FluxVAE.from_file(write_random_flux_ae(tmp_path / "ae.safetensors", config))
    size = (128, 96)
    for vae_dtype in ("fp32", "bf16"):
        vae = vae.to(torch.float32 if vae_dtype == "fp32" else torch.bfloat16)
        est = estimate_memory(
            BAGEL, "bf16", size, reference_sizes=[size], vae_config={**flux_vae_config(), **config},
            vae_dtype=vae_dtype,
        )  # fmt: skip
        assert est.vae_weights == module_bytes([vae])
        with MemoryMeter("cpu") as decode:
            vae.decode(torch.randn(1, 16, size[1] // 8, size[0] // 8))
        with MemoryMeter("cpu") as encode:
            vae.encode(torch.rand(1, 3, size[1], size[0]))
        measured = max(decode.peak, encode.peak)
        assert measured <= est.vae_activations <= 1.6 * measured, (vae_dtype, measured)


def test_weights_are_counted_on_the_modules():
    # BAGEL-7B-MoT: 13.6B parameters without lm_head and the ViT (bf16: 2 bytes each, rope's
    # 64 fp32 frequencies apart), as the hand formula this count replaced had them to the
    # parameter; the VAE's 83.8M in fp32.
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        flux = AutoencoderKL.from_config(flux_vae_config())
    est = _bagel("bf16")
    assert est.weights == 2 * 13_625_167_424 + 4 * 64
    assert est.vae_weights == 4 * sum(p.numel() for p in flux.parameters()) == 335_278_732
    w_tau = _bagel("bf16", attribute_embed=True).weights - est.weights
    assert w_tau == 2 * 15 * BAGEL.hidden_size  # one row per attribute token


def test_engine_shape_estimates_a_plan_as_the_pipeline_does(pipes):
    pipe = pipes("fp32")
    comp = _comp(2, (128, 128))
    shape = EngineShape.of(pipe.model, pipe.vae, pipe.precision, "none", pipe.device)
    assert shape.layer_devices == ("cpu",) * 8 and shape.device_map() is None
    assert (shape.vae_dtype, shape.attribute_embed) == ("fp32", False)
    assert hash(shape) == hash(replace(shape)) and shape == replace(shape)  # a cache key
    plan = pipe.plan(comp)
    est = estimate_for_plan(shape, plan, comp.settings, batch_cfg=True)
    assert est == pipe.estimate_memory(comp, batch_cfg=True)
    other = estimate_for_plan(shape, plan, comp.settings, precision="bf16", offload="model")
    assert other.offload == "model" and other.weights < est.weights
    split = replace(shape, layer_devices=("cuda:0",) * 4 + ("cuda:1",) * 4, device="cuda:0")
    assert set(split.device_map().values()) == {"cuda:0", "cuda:1"}
    assert set(estimate_for_plan(split, plan, comp.settings).per_device) == {"cuda:0", "cuda:1"}


def test_the_estimate_does_not_import_the_pipeline():
    # The pipeline imports the estimate; the estimate works on plain data (EngineShape), so
    # it names the pipeline nowhere, not even for type checking, and loads without it.
    import sigma_core.runtime.memory as memory

    tree = ast.parse(Path(memory.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "sigma_core.runtime.pipeline" not in imported
    code = (
        "import sys, sigma_core.runtime.memory; print('sigma_core.runtime.pipeline' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


# --- the meter -----------------------------------------------------------------------------------


def test_meter_counts_live_storages_and_their_peak():
    linear = torch.nn.Linear(100, 10)  # 1010 fp32 parameters
    with MemoryMeter("cpu", [linear, linear]) as meter:
        a = torch.zeros(1000)  # 4000 bytes
        b = a + 1  # 8000 alive
        view = b[10:]  # a view is not new memory
        del a, b, view
        c = torch.zeros(500)  # 2000 alive: the freed ones are gone
    assert meter.resident == 4040
    assert meter.new_peak == 8000
    assert meter.peak == 4040 + 8000
    assert c.numel() == 500


# --- full size (BAGEL-7B-MoT, FLUX VAE in fp32) ------------------------------------------------


def _bagel(precision: str, offload: str = "none", **options) -> MemoryEstimate:
    return estimate_memory(BAGEL, precision, (1024, 1024), 3, offload, **options)


def test_full_size_bagel_predictions():
    # 1024^2 output, three 512^2 references, 64 text tokens, three CFG rows; in GiB:
    #   bf16: weights 25.4 (13.6B parameters: both experts, embeddings; no lm_head, no ViT),
    #         KV cache 1.2 (28 layers x 2 x [3, 4, 7240, 128]), activations 0.6 (the MLP's
    #         3 x [4098, 18944] of a pass), VAE 0.3 + 3.0 (the fp32 decode's top level):
    #         peak 28.7 GiB = 30.8 GB. The decode, not the denoiser, sets it.
    #   The official code peaks at ~30 GB with lm_head and the ViT (~1.8 GB) loaded.
    #   int8: weights 13.2 -> 16.5 GiB (17.8 GB); nf4: weights 7.3 -> 10.7 GiB (11.4 GB);
    #   fp8 as int8. A bf16 VAE halves the decode (27.3 GiB for bf16).
    bf16, int8, nf4 = _bagel("bf16"), _bagel("int8"), _bagel("nf4")
    assert 24 * GIB < bf16.peak < 30 * GIB
    assert 24 * GIB < bf16.weights < 26 * GIB
    assert 1.1 * GIB < bf16.kv_cache < 1.3 * GIB
    assert 2.8 * GIB < bf16.vae_activations < 3.2 * GIB
    assert int8.peak < 18 * GB
    assert nf4.peak < 12 * GB
    assert _bagel("fp8").weights == int8.weights
    assert _bagel("bf16", vae_dtype="bf16").peak < bf16.peak - GIB


def test_offload_and_precision_order_the_peaks():
    none, model, sequential = _bagel("bf16"), _bagel("bf16", "model"), _bagel("bf16", "sequential")
    assert sequential.peak < model.peak < none.peak
    assert sequential.peak < none.peak / 5
    assert _bagel("nf4", "model").peak < _bagel("nf4").peak
    weights = {p: _bagel(p).weights for p in ("fp32", "bf16", "int8", "nf4")}
    assert weights["nf4"] < weights["int8"] < weights["bf16"] < weights["fp32"]
    assert 0.45 < weights["int8"] / weights["bf16"] < 0.55
    assert 0.25 < weights["nf4"] / weights["bf16"] < 0.32
    assert _bagel("bf16", batch_cfg=True).activations > 2 * none.activations


def test_device_map_splits_the_model():
    half = {f"language_model.model.layers.{i}": f"cuda:{i // 14}" for i in range(28)}
    split = _bagel("bf16", device_map=half)
    assert set(split.per_device) == {"cuda:0", "cuda:1"}
    assert split.peak == max(split.per_device.values())
    # the first device also holds the embeddings and the VAE
    assert split.per_device["cuda:0"] > split.per_device["cuda:1"]
    assert split.peak < _bagel("bf16").peak * 0.7


def test_int8_and_nf4_compute_in_fp32_on_the_cpu():
    on_gpu = estimate_memory(BAGEL, "nf4", (512, 512), device_type="cuda:1")
    on_cpu = estimate_memory(BAGEL, "nf4", (512, 512), device_type="cpu")
    assert on_cpu.kv_cache == 2 * on_gpu.kv_cache
    assert set(on_gpu.per_device) == {"cuda:1"}


def test_fits_and_describe():
    est = _bagel("bf16")
    assert est.fits(est.peak) and not est.fits(est.peak - 1)
    text = est.describe()
    assert text.startswith("about 28.7 GiB: weights 25.4, KV cache 1.2")
    assert text.endswith("VAE 0.3 + 3.0 GiB")
    assert "offload model" in _bagel("bf16", "model").describe()
    half = {f"language_model.model.layers.{i}": f"cuda:{i // 14}" for i in range(28)}
    assert "per device: cuda:0" in _bagel("bf16", device_map=half).describe()


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("bf17", (512, 512)), {}, "precision"),
        (("bf16", (512, 512), 0, "disk"), {}, "offload"),
        (("nf4", (512, 512), 0, "sequential"), {}, "offload"),  # the engine refuses it too
        (("int8", (512, 512), 0, "model"), {}, "offload"),
        (("bf16", (0, 512)), {}, "size"),
        (("bf16", (-16, 512)), {}, "size"),
        (("bf16", (512,)), {}, "size"),
        (("bf16", (512, 512), -1), {}, "n_references"),
        (("bf16", (512, 512)), {"reference_sizes": [(512, 0)]}, "reference 1"),
        (("bf16", (512, 512)), {"cfg_rows": 4}, "cfg_rows"),
        (("bf16", (512, 512)), {"text_tokens": -1}, "text_tokens"),
        (("bf16", (512, 512)), {"vae_dtype": "fp8"}, "vae_dtype"),
        (("bf16", (512, 512), 0, "model", {"": "cuda:0"}), {}, "device_map"),
        (("bf16", (512, 512), 0, "none", {"": "gpu0"}), {}, "device_map"),
    ],
)
def test_bad_arguments_are_refused(args, options, message):
    with pytest.raises(SigmaInputError, match=message):
        estimate_memory(BAGEL, *args, **options)
