"""The engine on a CUDA GPU: the stored numbers, batched CFG, and no host sync in the loop.

Skipped (and reported as skipped) without CUDA. Tiny checkpoints in fp32 with TF32 off, so the
numbers are comparable with the CPU's.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sigma_core import SigmaPipeline, build_plan
from sigma_core.runtime import Denoiser, Guidance, euler_step, prefill_contexts, timesteps
from tests.golden_cases import GOLDEN_FILE, composition, run_cases

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _exact_fp32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.mark.parametrize("batch_cfg", [False, True], ids=["sequential", "batched"])
def test_seeded_runs_match_the_stored_latents_on_cuda(tmp_path, batch_cfg: bool) -> None:
    stored = load_file(str(GOLDEN_FILE))
    for name, value in run_cases(tmp_path, batch_cfg=batch_cfg, device="cuda").items():
        torch.testing.assert_close(value.cpu(), stored[name], atol=1e-3, rtol=0, msg=name)


@pytest.mark.parametrize("batched", [False, True])
def test_denoising_loop_never_syncs_with_the_host(tiny_checkpoint, batched: bool) -> None:
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cuda", dtype=torch.float32)
    comp = composition("Put [1] on a beach next to [2] at sunset", {"cfg_interval": (0.4, 1.0)})
    images = comp.load_images()
    plan = build_plan(comp, pipe.tokenizer, {s: im.size for s, im in images.items()})
    g = Guidance.from_settings(comp.settings)
    ts = timesteps(6, 3.0, pipe.device)  # cfg_interval (0.4, 1]: the row set changes mid-run
    branches = g.steps(ts)
    x = torch.randn(plan.noise.grid[0] * plan.noise.grid[1], 64, device="cuda")
    with torch.no_grad():
        ctx = prefill_contexts(pipe.model, plan, pipe.encode_references(plan, images))
        denoise = Denoiser(pipe.model, ctx, plan.noise.grid, g, batched=batched, steps=branches)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i, (want_text, want_img) in enumerate(branches):
                x = euler_step(x, denoise(x, ts[i], want_text, want_img).guided, ts[i], ts[i + 1])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("mode", ["bf16", "fp16", "int8", "nf4", "fp8"])
def test_every_precision_generates_on_cuda(tiny_checkpoint, mode: str) -> None:
    if mode == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cuda", precision=mode)
    comp = composition("Put [1] on a beach next to [2] at sunset", {})
    out = pipe(comp, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)
    assert torch.isfinite(out.latents).all()


@pytest.mark.parametrize(
    ("mode", "offload"), [("bf16", "model"), ("nf4", "model"), ("bf16", "sequential")]
)
def test_offload_runs_on_cuda(tiny_checkpoint, mode: str, offload: str) -> None:
    pipe = SigmaPipeline.from_pretrained(
        tiny_checkpoint, device="cuda", precision=mode, offload=offload
    )
    comp = composition("Put [1] on a beach next to [2] at sunset", {})
    out = pipe(comp, output_type="np")
    assert torch.isfinite(out.latents).all()
    if offload == "model":  # the VAE decoded last: the LLM waits in CPU RAM
        assert pipe.model.vae2llm.weight.device.type == "cpu"


@pytest.mark.parametrize("mode", ["bf16", "nf4"])
def test_the_memory_prediction_holds_on_cuda(tiny_checkpoint, mode: str) -> None:
    from sigma_core.runtime import MemoryMeter

    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cuda", precision=mode)
    comp = composition("Put [1] on a beach next to [2] at sunset", {})
    pipe(comp, output_type="latent")  # warm-up: cuBLAS handles and library buffers
    with MemoryMeter("cuda") as meter:
        pipe(comp, output_type="np")
    predicted = pipe.estimate_memory(comp).peak
    assert abs(predicted - meter.peak) <= 0.15 * meter.peak, (predicted, meter.peak)


def test_packed_training_forward_with_flex_mask_matches_dense_on_cuda(tiny_checkpoint) -> None:
    """flex_attention's compiled block mask, forward and backward, against the dense mask."""
    from sigma_core.training.packing import pack
    from tests.test_train_forward import ENDS_WITH_TEXT, _example

    pipe = SigmaPipeline.from_pretrained(tiny_checkpoint, device="cuda", dtype=torch.float32)
    model = pipe.model
    examples = [_example(pipe, ENDS_WITH_TEXT, mask=True, seed=s) for s in (0, 1)]
    t = torch.tensor([0.3, 0.7])
    noise = [torch.randn_like(ex.target) for ex in examples]
    grads = {}
    for flex in (False, True):
        batch = pack(examples, t, noise, max_latent_size=model.max_latent_size,
                     attributes=False, flex=flex, device="cuda")  # fmt: skip
        weight = model.llm2vae.weight
        weight.requires_grad_(True)
        with torch.enable_grad():
            v = model.packed_velocity(batch.sequence)
            (grads[flex],) = torch.autograd.grad((v - batch.target).pow(2).mean(), weight)
        weight.requires_grad_(False)
        grads[(flex, "v")] = v.detach()
    torch.testing.assert_close(grads[(True, "v")], grads[(False, "v")], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[True], grads[False], atol=1e-4, rtol=1e-4)


def test_training_runs_in_bf16_on_cuda(tiny_checkpoint, tmp_path) -> None:
    """A short bf16 mixed-precision run with flex_attention and checkpointing on the GPU."""
    from sigma_core.training.synthetic import write_parquet
    from tests.test_train import _config, _trainer

    write_parquet(tmp_path / "d.parquet", 32, size=64, seed=0)
    cfg = _config(tiny_checkpoint, tmp_path / "d.parquet", tmp_path / "run", steps=4,
                  mixed_precision="bf16", gradient_checkpointing=True)  # fmt: skip
    trainer = _trainer(cfg)
    assert trainer.accelerator.device.type == "cuda"
    history = trainer.run()
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in history)
