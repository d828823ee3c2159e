"""Where the model lives: offload modes and device maps on CPU (structurally, and with the same
numbers as a plain run where the devices allow), plus compile and a host-sync-free loop."""

from __future__ import annotations

import pytest
import torch

from sigma_core import SigmaPipeline, build_plan
from sigma_core.model.cache import KVCache
from sigma_core.model.precision import Precision
from sigma_core.planning import load_tokenizer
from sigma_core.runtime import Denoiser, Guidance, euler_step, prefill_contexts, timesteps
from sigma_core.runtime.loader import load_generator
from sigma_core.runtime.placement import (
    PACKING_MODULES,
    auto_device_map,
    module_device,
    spread_layers,
)
from tests.golden_cases import composition

FP32 = Precision("fp32", torch.float32)


@pytest.fixture(scope="module")
def comp():
    return composition("Put [1] on a beach next to [2] at sunset", {})


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def plain(tiny_checkpoint, comp, noise) -> torch.Tensor:
    return SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu")(
        comp, latents=noise, output_type="latent"
    ).latents


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_gives_the_same_numbers(tiny_checkpoint, comp, noise, plain, mode) -> None:
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu", offload=mode)
    assert pipe.offload.mode == mode and pipe.device == torch.device("cpu")
    out = pipe(comp, latents=noise, output_type="latent")
    torch.testing.assert_close(out.latents, plain, rtol=0, atol=0)


def test_sequential_offload_keeps_the_weights_off_the_device(tiny_checkpoint) -> None:
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu", offload="sequential")
    # accelerate's hooks hold the weights in a CPU map and bring each module in for its forward.
    assert {p.device.type for p in pipe.model.parameters()} == {"meta"}
    assert {p.device.type for p in pipe.vae.parameters()} == {"meta"}
    assert pipe.model.device == torch.device("cpu")
    assert pipe.model.layer_devices() == [torch.device("cpu")] * len(pipe.model.llm.layers)
    assert hasattr(pipe.model.vae2llm, "_hf_hook")


def test_model_offload_takes_turns(tiny_checkpoint, comp, monkeypatch) -> None:
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu", offload="model")
    moves: list[str] = []
    for name in ("model", "vae"):
        component = getattr(pipe, name)
        real = component.to

        def record(*args, _real=real, _name=name, **kwargs):
            moves.append(f"{_name}->{args[0]}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(component, "to", record)
    pipe(comp, num_inference_steps=2, output_type="np")
    # Pairs of (the other one leaves, this one comes): the VAE to encode, the LLM to prefill
    # and denoise, the VAE to decode. On CPU both moves name cpu.
    vae_turn, llm_turn = ["model->cpu", "vae->cpu"], ["vae->cpu", "model->cpu"]
    assert moves == [*vae_turn, *llm_turn, *vae_turn]


def test_a_device_map_places_each_layer_and_its_kv_cache(tiny_checkpoint) -> None:
    """A fake two-device map over cpu and meta: layer 1 and its cache go to meta, the modules
    that build the packed sequence stay on the first device."""
    tok = load_tokenizer(tiny_checkpoint)
    device_map = {"": "cpu", "language_model.model.layers.1": "meta"}
    model, _ = load_generator(
        tiny_checkpoint, tok, precision=FP32, device=torch.device("cpu"), device_map=device_map
    )
    assert model.layer_devices() == [torch.device("cpu"), torch.device("meta")]
    assert {p.device.type for p in model.llm.layers[1].parameters()} == {"meta"}
    assert {p.device.type for p in model.llm.layers[0].parameters()} == {"cpu"}
    for name in ("vae2llm", "llm2vae", "time_embedder", "latent_pos_embed"):
        assert {p.device.type for p in model.get_submodule(name).parameters()} == {"cpu"}
    cache = KVCache.empty(
        model.config, batch=2, capacity=8, dtype=model.dtype, device=model.layer_devices()
    )
    assert [k.device.type for k in cache.keys] == ["cpu", "meta"]
    assert [v.device.type for v in cache.values] == ["cpu", "meta"]


def test_a_device_map_on_one_device_gives_the_same_numbers(tiny_checkpoint, comp, noise, plain):
    layers = {f"language_model.model.layers.{i}": "cpu" for i in range(2)}
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu", device_map=layers)
    out = pipe(comp, latents=noise, output_type="latent")
    torch.testing.assert_close(out.latents, plain, rtol=0, atol=0)


def test_auto_spreads_the_layers_over_gpus_and_keeps_the_packing_together(tiny_checkpoint):
    tok = load_tokenizer(tiny_checkpoint)
    from sigma_core.model.config import LLMConfig
    from sigma_core.planning import TokenIds
    from sigma_core.runtime.loader import meta_generator

    cfg = LLMConfig.from_file(tiny_checkpoint / "llm_config.json")
    cfg = type(cfg)(**{**cfg.__dict__, "num_hidden_layers": 8})
    ids = TokenIds.from_tokenizer(tok, embedding_rows=cfg.vocab_size)
    model = meta_generator(cfg, attribute_embed=True, ids=ids)
    total = sum(p.numel() * 4 for p in model.parameters())
    found = auto_device_map(model, FP32, max_memory={0: total, 1: total})
    layer_devices = [found[f"language_model.model.layers.{i}"] for i in range(8)]
    assert set(layer_devices) == {"cuda:0", "cuda:1"}  # balanced, not all on the first GPU
    assert layer_devices == sorted(layer_devices)  # contiguous runs of layers per device
    assert {found[name] for name in PACKING_MODULES} == {"cuda:0"}
    for name, _ in model.named_parameters():
        assert module_device(name, torch.device("meta"), found).type == "cuda", name


def test_auto_refuses_a_model_that_does_not_fit(tiny_checkpoint) -> None:
    from sigma_core import SigmaInputError

    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu")
    with pytest.raises(SigmaInputError, match="does not fit on the GPUs"):
        auto_device_map(pipe.model, FP32, max_memory={0: 1000, 1: 1000})


def test_a_device_map_naming_no_module_is_refused(pipe) -> None:
    from sigma_core import SigmaInputError

    with pytest.raises(SigmaInputError, match=r"language_model\.model\.layer\.9: no such module"):
        spread_layers(pipe.model, {"language_model.model.layer.9": "cuda:0"})


def test_compile_gives_the_same_numbers(tiny_checkpoint, comp, noise, plain) -> None:
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu", compile=True)
    out = pipe(comp, latents=noise, output_type="latent")
    torch.testing.assert_close(out.latents, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batched", [False, True], ids=["sequential", "batched"])
def test_the_denoising_loop_never_reads_a_tensor_on_the_host(pipe, monkeypatch, batched):
    """No .item(), .tolist(), bool() or float() of a tensor between steps: on a GPU each would be
    a sync (tests/test_gpu.py checks that with CUDA's sync debug mode)."""
    comp = composition("Put [1] on a beach next to [2] at sunset", {"cfg_interval": (0.4, 1.0)})
    images = comp.load_images()
    plan = build_plan(comp, pipe.tokenizer, {s: im.size for s, im in images.items()})
    g = Guidance.from_settings(comp.settings)
    ts = timesteps(6, 3.0, pipe.device)
    branches = g.steps(ts)
    x = torch.randn(plan.noise.grid[0] * plan.noise.grid[1], 64)
    with torch.no_grad():
        ctx = prefill_contexts(pipe.model, plan, pipe.encode_references(plan, images))
        denoise = Denoiser(pipe.model, ctx, plan.noise.grid, g, batched=batched, steps=branches)

        def host_read(*args, **kwargs):
            raise AssertionError("a tensor was read on the host inside the loop")

        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, host_read)
        for i, (want_text, want_img) in enumerate(branches):
            x = euler_step(x, denoise(x, ts[i], want_text, want_img).guided, ts[i], ts[i + 1])
        monkeypatch.undo()
    assert torch.isfinite(x).all()


def test_a_run_predicted_not_to_fit_is_refused_before_work(pipe, comp, monkeypatch) -> None:
    from sigma_core import SigmaOutOfMemoryError

    monkeypatch.setattr("sigma_core.runtime.memory.available_memory", lambda device: 1000)
    monkeypatch.setattr(
        pipe.model, "velocity", lambda *a: (_ for _ in ()).throw(AssertionError("ran"))
    )
    with pytest.raises(SigmaOutOfMemoryError) as e:
        pipe(comp, num_inference_steps=2)
    text = str(e.value)
    assert "out of memory on cpu while planning the run (predicted peak about" in text
    assert "it would not fit" in text and "int8 or nf4" in text and "offload='model'" in text
    monkeypatch.setattr("sigma_core.runtime.memory.available_memory", lambda device: 2**40)
    monkeypatch.undo()
    assert pipe(comp, num_inference_steps=2, output_type="latent").latents.isfinite().all()
