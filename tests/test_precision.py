"""Precision modes on the tiny checkpoint: each loads and generates on CPU, quantizes only the
decoder's linear layers (both experts), stays within its documented drift from fp32, and loads
tensor by tensor. fp8 is refused off an Ada/Hopper GPU (and runs in tests/test_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sigma_core import SigmaInputError, SigmaPipeline
from sigma_core.frontend import PRECISIONS
from sigma_core.model.precision import Precision, resolve_precision
from sigma_core.runtime import loader as loader_module
from tests.golden_cases import composition

# Relative L2 drift of the final latent from fp32 (same seed and noise, 4 Euler steps, tiny random
# weights), measured 0.021 / 0.003 / 0.034 / 0.168; the README's Performance section quotes these.
DRIFT_BOUNDS = {"bf16": 0.05, "fp16": 0.01, "int8": 0.08, "nf4": 0.35}
CPU_MODES = ("fp32", "bf16", "fp16", "int8", "nf4")


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def comp():
    return composition("Put [1] on a beach next to [2] at sunset", {})


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, comp, noise) -> dict:
    out = {}
    for mode in CPU_MODES:
        pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, precision=mode, device="cpu")
        out[mode] = (pipe, pipe(comp, latents=noise, output_type="np"))
    return out


def test_every_mode_but_fp8_runs_on_cpu(runs) -> None:
    assert set(CPU_MODES) | {"fp8"} == set(PRECISIONS)
    for mode, (pipe, out) in runs.items():
        assert pipe.precision.name == mode
        assert out.images.shape == (1, 64, 64, 3)
        assert np.isfinite(out.images).all() and torch.isfinite(out.latents).all()


@pytest.mark.parametrize("mode", sorted(DRIFT_BOUNDS))
def test_drift_from_fp32_stays_within_its_bound(runs, mode: str) -> None:
    base = runs["fp32"][1].latents
    drift = ((runs[mode][1].latents - base).norm() / base.norm()).item()
    assert 0 < drift < DRIFT_BOUNDS[mode], drift


def test_quantized_modes_drift_in_the_expected_order(runs) -> None:
    base = runs["fp32"][1].latents

    def drift(m: str) -> float:
        return ((runs[m][1].latents - base).norm() / base.norm()).item()

    assert drift("fp16") < drift("bf16") < drift("nf4")
    assert drift("int8") < drift("nf4")


@pytest.mark.parametrize(("mode", "layer_type"), [("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_only_the_decoder_linears_are_quantized(runs, mode: str, layer_type: str) -> None:
    model = runs[mode][0].model
    for layer in model.llm.layers:
        linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == 14  # q, k, v, o, gate, up, down: both experts
        assert {type(m).__name__ for m in linears} == {layer_type}
    # Embeddings, norms, connectors, the time embedder: the compute dtype (fp32 on CPU).
    for name in ("vae2llm", "llm2vae", "time_embedder.mlp.0", "language_model.model.embed_tokens"):
        sub = model.get_submodule(name)
        assert type(sub) in (nn.Linear, nn.Embedding) and sub.weight.dtype == torch.float32
    assert model.llm.norm.weight.dtype == torch.float32
    assert model.llm.layers[0].input_layernorm_moe_gen.weight.dtype == torch.float32


def test_quantized_weights_are_smaller(runs) -> None:
    def layer_bytes(m: str) -> int:
        layers = runs[m][0].model.llm.layers
        return sum(p.numel() * p.element_size() for p in layers.parameters())

    assert layer_bytes("nf4") < layer_bytes("int8") < layer_bytes("bf16") < layer_bytes("fp32")
    assert layer_bytes("bf16") * 2 == layer_bytes("fp32")


def test_the_vae_stays_fp32_unless_asked(runs, tiny_checkpoint, comp, noise) -> None:
    assert runs["bf16"][0].vae.dtype == torch.float32
    half = SigmaPipeline.from_pretrained(tiny_checkpoint, precision="bf16", vae_dtype="bf16")
    assert half.vae.dtype == torch.bfloat16
    out = half(comp, latents=noise, output_type="np")
    assert np.isfinite(out.images).all()


def test_fp8_is_refused_off_a_float8_gpu() -> None:
    fp8_gpus = r"fp8 runs on NVIDIA GPUs of compute capability 8\.9"
    with pytest.raises(SigmaInputError, match=fp8_gpus):
        resolve_precision("fp8", torch.device("cpu"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "int4"}, "precision: 'int4' is not one of fp32, bf16"),
        ({"vae_dtype": "int8"}, "vae_dtype: 'int8' is not one of fp32, bf16, fp16"),
        ({"offload": "disk"}, "offload: 'disk' is not one of none, model, sequential"),
        ({"precision": "nf4", "offload": "sequential"}, "sequential streams full-precision"),
        ({"precision": "int8", "offload": "model"}, "int8 layers cannot move"),
        ({"offload": "model", "device_map": "auto"}, "device_map and offload exclude"),
        ({"precision": "bf16", "dtype": torch.float16}, "disagree"),
        ({"compile": "yes"}, "compile: 'yes' must be True or False"),
    ],
)
def test_bad_options_are_refused_before_loading(tiny_checkpoint, monkeypatch, kwargs, message):
    def never(*args, **kw):
        raise AssertionError("loaded before checking the options")

    monkeypatch.setattr("sigma_core.runtime.loader.load_generator", never)
    with pytest.raises(SigmaInputError, match=message):
        SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu", **kwargs)


@pytest.mark.parametrize("mode", ["fp32", "nf4"])
def test_loading_reads_one_tensor_at_a_time(tiny_checkpoint, monkeypatch, mode: str) -> None:
    """The model is built on meta and each tensor is read only when it is placed, so no second
    full-precision copy of the model exists while loading."""
    seen: list[tuple[str, int]] = []
    real = loader_module.place_tensor

    def spy(model, key, value, device, precision):
        loaded = sum(p.device.type != "meta" for p in model.parameters())
        seen.append((key, loaded))
        real(model, key, value, device, precision)

    monkeypatch.setattr(loader_module, "place_tensor", spy)
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, precision=mode, device="cpu")
    assert [n for _, n in seen] == list(range(len(seen)))  # one placed tensor per read
    assert all(p.device.type == "cpu" for p in pipe.model.parameters())
    layers = [int(k.split(".")[3]) for k, _ in seen if k.startswith("language_model.model.layers.")]
    assert layers == sorted(layers)  # layer by layer, so fp8 can finish each one as it goes


def test_precision_sizes_a_linear() -> None:
    n = 3584 * 18944
    assert Precision("bf16", torch.bfloat16).linear_weight_bytes(18944, 3584) == 2 * n
    assert Precision("int8", torch.bfloat16).linear_weight_bytes(18944, 3584) == n + 4 * 18944
    nf4 = Precision("nf4", torch.bfloat16).linear_weight_bytes(18944, 3584)
    assert n // 2 < nf4 < n * 0.54


def test_the_cli_takes_a_precision(tmp_path, capsys) -> None:
    from sigma_core.cli import main

    preset = tmp_path / "p.json"
    comp = composition("a red fox in the snow", {})
    from sigma_core import save_preset

    save_preset(comp, preset)
    out = tmp_path / "out.png"
    assert (
        main(["generate", str(preset), "--precision", "nf4", "--steps", "2", "--out", str(out)])
        == 0
    )
    assert out.is_file()
    assert (
        main(["generate", str(preset), "--precision", "fp8", "--out", str(tmp_path / "x.png")]) == 2
    )
    assert "fp8 runs on NVIDIA GPUs" in capsys.readouterr().err
