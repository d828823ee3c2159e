"""Tests for sigma_core.model.vae: the official ae.safetensors layout, loading, scaling, errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sigma_core.errors import CheckpointError
from sigma_core.model.vae import (
    AE_CONFIG_FILE,
    SCALE_FACTOR,
    SHIFT_FACTOR,
    TINY_VAE_CONFIG,
    FluxVAE,
    flux_vae_config,
    official_key_shapes,
    write_random_flux_ae,
)

# Channels change between levels, so nin_shortcut keys exist and a reversed decoder index would
# show up as a shape error.
MIXED_VAE_CONFIG = {**TINY_VAE_CONFIG, "block_out_channels": [32, 64, 64, 64]}


def resnet(prefix: str, c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        f"{prefix}.norm1.weight": (c_in,),
        f"{prefix}.norm1.bias": (c_in,),
        f"{prefix}.conv1.weight": (c_out, c_in, 3, 3),
        f"{prefix}.conv1.bias": (c_out,),
        f"{prefix}.norm2.weight": (c_out,),
        f"{prefix}.norm2.bias": (c_out,),
        f"{prefix}.conv2.weight": (c_out, c_out, 3, 3),
        f"{prefix}.conv2.bias": (c_out,),
    }
    if c_in != c_out:
        shapes[f"{prefix}.nin_shortcut.weight"] = (c_out, c_in, 1, 1)
        shapes[f"{prefix}.nin_shortcut.bias"] = (c_out,)
    return shapes


def conv(prefix: str, c_out: int, c_in: int, k: int = 3) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c_out, c_in, k, k), f"{prefix}.bias": (c_out,)}


def norm(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def mid(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    attn = f"{prefix}.attn_1"
    return {
        **resnet(f"{prefix}.block_1", c, c),
        **norm(f"{attn}.norm", c),
        **{
            k: v
            for p in ("q", "k", "v", "proj_out")
            for k, v in conv(f"{attn}.{p}", c, c, 1).items()
        },
        **resnet(f"{prefix}.block_2", c, c),
    }


def official_flux_layout() -> dict[str, tuple[int, ...]]:
    """The 244 tensors of BAGEL's ae.safetensors, transcribed from the official AutoEncoder."""
    enc = {**conv("encoder.conv_in", 128, 3)}
    for i, (c_in, c_out) in enumerate([(128, 128), (128, 256), (256, 512), (512, 512)]):
        enc |= resnet(f"encoder.down.{i}.block.0", c_in, c_out)
        enc |= resnet(f"encoder.down.{i}.block.1", c_out, c_out)
        if i < 3:
            enc |= conv(f"encoder.down.{i}.downsample.conv", c_out, c_out)
    enc |= mid("encoder.mid", 512) | norm("encoder.norm_out", 512)
    enc |= conv("encoder.conv_out", 32, 512)
    dec = conv("decoder.conv_in", 512, 16) | mid("decoder.mid", 512)
    for i, (c_in, c_out) in enumerate([(256, 128), (512, 256), (512, 512), (512, 512)]):
        dec |= resnet(f"decoder.up.{i}.block.0", c_in, c_out)
        dec |= resnet(f"decoder.up.{i}.block.1", c_out, c_out)
        dec |= resnet(f"decoder.up.{i}.block.2", c_out, c_out)
        if i > 0:
            dec |= conv(f"decoder.up.{i}.upsample.conv", c_out, c_out)
    dec |= norm("decoder.norm_out", 128) | conv("decoder.conv_out", 3, 128)
    return enc | dec


def file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(path, framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_flux_ae(
        tmp_path_factory.mktemp("tiny_vae") / "ae.safetensors", TINY_VAE_CONFIG
    )


@pytest.fixture(scope="module")
def mixed_ae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mixed_vae") / "ae.safetensors"
    return write_random_flux_ae(path, MIXED_VAE_CONFIG, seed=3)


@pytest.fixture(scope="module")
def tiny_vae(tiny_ae: Path) -> FluxVAE:
    return FluxVAE.from_file(tiny_ae)


def images(seed: int = 0, size: int = 128) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=generator) * 2 - 1


def test_tiny_file_uses_official_key_names(tiny_ae: Path) -> None:
    shapes = file_shapes(tiny_ae)
    assert shapes["encoder.down.0.block.0.norm1.weight"] == (32,)
    assert shapes["encoder.down.2.downsample.conv.weight"] == (32, 32, 3, 3)
    assert shapes["encoder.mid.attn_1.q.weight"] == (32, 32, 1, 1)
    assert shapes["decoder.mid.attn_1.proj_out.weight"] == (32, 32, 1, 1)
    assert shapes["decoder.up.3.upsample.conv.weight"] == (32, 32, 3, 3)
    assert shapes["decoder.up.0.block.1.conv2.weight"] == (32, 32, 3, 3)
    assert shapes["encoder.conv_out.weight"] == (32, 32, 3, 3)  # 2 * 16 latent channels
    assert "encoder.down.3.downsample.conv.weight" not in shapes
    assert "decoder.up.0.upsample.conv.weight" not in shapes
    diffusers_names = re.compile(r"down_blocks|up_blocks|mid_block|resnets|to_q|conv_norm_out")
    assert not [k for k in shapes if diffusers_names.search(k)]
    written = json.loads((tiny_ae.parent / AE_CONFIG_FILE).read_text())
    assert written == {**flux_vae_config(), **TINY_VAE_CONFIG}


def test_flux_layout_is_the_official_one() -> None:
    # official_flux_layout() is transcribed from the official key list (244 tensors).
    shapes = official_key_shapes()
    assert shapes == official_flux_layout()
    assert len(shapes) == 244
    assert sum(math.prod(s) for s in shapes.values()) == 83_819_683


@pytest.mark.parametrize("config", [TINY_VAE_CONFIG, MIXED_VAE_CONFIG], ids=["tiny", "mixed"])
def test_round_trip_keeps_every_weight(config: dict, tmp_path: Path) -> None:
    path = write_random_flux_ae(tmp_path / "ae.safetensors", config, seed=7)
    written = load_file(path)
    vae = FluxVAE.from_file(path)
    loaded = vae.autoencoder.state_dict()
    assert len(loaded) == len(written)
    # diffusers' own single-file loader, fed the same config folder, must agree exactly.
    (tmp_path / "cfg" / "vae").mkdir(parents=True)
    (tmp_path / "cfg" / "vae" / "config.json").write_text(
        json.dumps({**flux_vae_config(), **config})
    )
    reference = AutoencoderKL.from_single_file(
        str(path), config=str(tmp_path / "cfg"), subfolder="vae", local_files_only=True
    ).state_dict()
    assert loaded.keys() == reference.keys()
    for key, tensor in loaded.items():
        assert tensor.device.type == "cpu" and tensor.dtype == torch.float32, key
        assert torch.equal(tensor, reference[key]), key
    # The file's attention projections are 1x1 convs; diffusers keeps them as Linear weights.
    q = written["encoder.mid.attn_1.q.weight"]
    assert torch.equal(loaded["encoder.mid_block.attentions.0.to_q.weight"], q[:, :, 0, 0])
    # The official decoder's up.0 is diffusers' last up block (highest resolution).
    n = len(config["block_out_channels"]) - 1
    up = loaded[f"decoder.up_blocks.{n}.resnets.0.conv1.weight"]
    assert torch.equal(up, written["decoder.up.0.block.0.conv1.weight"])


def test_encode_decode_shapes_and_scaling(tiny_vae: FluxVAE) -> None:
    x = images()
    z = tiny_vae.encode(x)
    assert (tiny_vae.downsample, tiny_vae.z_channels) == (8, 16)
    assert z.shape == (1, 16, 16, 16)
    assert torch.equal(z, tiny_vae.encode(x))
    ae = tiny_vae.autoencoder
    with torch.no_grad():
        mean = ae.encode(x).latent_dist.mean
        raw = ae.decode(z / SCALE_FACTOR + SHIFT_FACTOR).sample
    torch.testing.assert_close(z, (mean - SHIFT_FACTOR) * SCALE_FACTOR, rtol=0, atol=0)
    y = tiny_vae.decode(z)
    assert y.shape == (1, 3, 128, 128)
    torch.testing.assert_close(y, raw, rtol=0, atol=0)
    assert torch.isfinite(y).all() and y.std() > 0.05
    assert not any(p.requires_grad for p in tiny_vae.parameters())


def test_seed_decides_the_weights(tmp_path: Path) -> None:
    a = load_file(write_random_flux_ae(tmp_path / "a" / "ae.safetensors", TINY_VAE_CONFIG))
    b = load_file(write_random_flux_ae(tmp_path / "b" / "ae.safetensors", TINY_VAE_CONFIG))
    c = load_file(write_random_flux_ae(tmp_path / "c" / "ae.safetensors", TINY_VAE_CONFIG, seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decoder.conv_in.weight"], c["decoder.conv_in.weight"])


def test_bfloat16_load(tiny_ae: Path, tiny_vae: FluxVAE) -> None:
    vae = FluxVAE.from_file(tiny_ae, dtype=torch.bfloat16)
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    z = vae.encode(images())
    assert z.dtype == torch.bfloat16
    torch.testing.assert_close(z.float(), tiny_vae.encode(images()), atol=0.05, rtol=0.05)
    assert vae.decode(z).dtype == torch.bfloat16


def test_full_flux_file_in_bfloat16(tmp_path: Path) -> None:
    stale = write_random_flux_ae(tmp_path / "ae.safetensors", TINY_VAE_CONFIG)
    path = write_random_flux_ae(stale, dtype=torch.bfloat16)
    assert not (tmp_path / AE_CONFIG_FILE).exists()
    with safe_open(path, framework="pt") as f:
        assert f.get_tensor("decoder.conv_in.weight").dtype == torch.bfloat16
    vae = FluxVAE.from_file(path)
    assert vae.autoencoder.config.block_out_channels == [128, 256, 512, 512]
    assert vae.encode(images(size=16)).shape == (1, 16, 2, 2)


def test_bad_image_shapes(tiny_vae: FluxVAE) -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_vae.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_vae.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 16, h, w\]"):
        tiny_vae.decode(torch.zeros(1, 4, 2, 2))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as err:
        FluxVAE.from_file(tmp_path / "ae.safetensors")
    assert str(tmp_path / "ae.safetensors") in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x80\x04K\x01."])
def test_not_safetensors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ae.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as err:
        FluxVAE.from_file(path)
    assert str(path) in str(err.value)


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ae.ckpt"
    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"Only \.safetensors"):
        FluxVAE.from_file(path)


def test_keys_that_do_not_fit_the_config(tiny_ae: Path, tmp_path: Path) -> None:
    path = tmp_path / "ae.safetensors"
    path.write_bytes(tiny_ae.read_bytes())  # no ae_config.json: FLUX's config applies
    with pytest.raises(CheckpointError, match="wrong shape: ") as err:
        FluxVAE.from_file(path)
    message = str(err.value)
    assert str(path) in message and AE_CONFIG_FILE in message
    assert "missing tensors: decoder.up.0.block.0.nin_shortcut.bias" in message
    assert (
        "decoder.conv_in.weight: checkpoint shape [32, 16, 3, 3] but the model expects "
        "[512, 16, 3, 3]" in message
    )


def test_extra_and_missing_keys_are_named(tiny_ae: Path, tmp_path: Path) -> None:
    state = load_file(tiny_ae)
    del state["decoder.mid.attn_1.k.bias"]
    state["encoder.down_blocks.0.resnets.0.norm1.weight"] = torch.ones(32)
    path = tmp_path / "ae.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as err:
        FluxVAE.from_file(path, config=TINY_VAE_CONFIG)
    message = str(err.value)
    assert "missing tensors: decoder.mid.attn_1.k.bias" in message
    assert "unexpected tensors: encoder.down_blocks.0.resnets.0.norm1.weight" in message


def test_bad_configs(tiny_ae: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="Unknown AutoencoderKL config keys"):
        FluxVAE.from_file(tiny_ae, config={**TINY_VAE_CONFIG, "latent_chanels": 16})
    path = tmp_path / "ae.safetensors"
    path.write_bytes(tiny_ae.read_bytes())
    (tmp_path / AE_CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="Cannot read the VAE config"):
        FluxVAE.from_file(path)
    (tmp_path / AE_CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        FluxVAE.from_file(path)
