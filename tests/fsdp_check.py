"""FSDP2 on CPU (gloo), as accelerate's FSDP plugin shards the model: each decoder layer a
unit, then the root. Run by tests/test_train.py under torchrun with 2 processes:

    torchrun --nproc_per_node 2 tests/fsdp_check.py CHECKPOINT_DIR

accelerate itself only shards on GPUs, so this drives torch's ``fully_shard`` directly: one
training step (the trainer's model preparation, packing, loss, AdamW and EMA) on the sharded
model must give the weights and EMA of the same step on an unsharded copy, and the trainer's
full state-dict gathering must return them whole. Prints "FSDP OK" on rank 0.
"""

from __future__ import annotations

import copy
import random
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from sigma_core import Composition, Reference, SigmaPipeline
from sigma_core.model.mot import MoTDecoderLayer
from sigma_core.planning import build_plan
from sigma_core.training.checkpoints import FULL, ParamEMA
from sigma_core.training.config import TrainConfig
from sigma_core.training.flow import flow_loss
from sigma_core.training.packing import TrainingExample, pack
from sigma_core.training.trainer import prepare_model, trainable_names


def batch(pipe: SigmaPipeline):
    """Two examples, the same on every rank (seeded), as one packed batch."""
    from PIL import Image

    refs = [Reference(1, Image.new("RGB", (64, 64))), Reference(2, Image.new("RGB", (64, 64)))]
    prompt = "Put <subject> the ball <image_1> next to <id> the person <image_2> at dusk"
    comp = Composition(prompt, refs)
    plan = build_plan(comp, pipe.tokenizer, {1: (64, 64), 2: (64, 64)}, resize=lambda w, h: (w, h))
    g = torch.Generator().manual_seed(0)
    examples = [
        TrainingExample(plan, {1: torch.randn(16, 64, generator=g),
                               2: torch.randn(16, 64, generator=g)},
                        torch.randn(plan.noise.length - 2, 64, generator=g), f"s{i}")
        for i in range(2)
    ]  # fmt: skip
    noise = [torch.randn(ex.target.shape, generator=g) for ex in examples]
    return pack(examples, torch.tensor([0.3, 0.6]), noise, max_latent_size=64, attributes=True,
                frozen_und=True)  # fmt: skip


def step(model, names, b, ema) -> None:
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW([params[n] for n in names], lr=1e-3, betas=(0.9, 0.95))
    loss = flow_loss(model(b.sequence), b.target, b.loss_tokens)
    loss.backward()
    opt.step()
    ema.update(model)


def main(checkpoint: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    random.seed(0)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    pipe = SigmaPipeline.from_pretrained(checkpoint, device="cpu", precision="fp32")
    cfg = TrainConfig(base=checkpoint, data=("unused",), gradient_checkpointing=True)
    model = prepare_model(pipe.model, cfg)
    names = trainable_names(model, "gen")
    reference = copy.deepcopy(model)
    b = batch(pipe)

    ref_ema = ParamEMA(reference, names, 0.5)
    step(reference, names, b, ref_ema)

    for layer in model.modules():
        if isinstance(layer, MoTDecoderLayer):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert type(dict(model.named_parameters())[names[0]]).__name__ == "DTensor"
    ema = ParamEMA(model, names, 0.5)
    step(model, names, b, ema)

    full = get_model_state_dict(model, options=FULL)  # whole on rank 0, empty elsewhere
    gathered_ema = ema.full()  # every rank takes part
    if dist.get_rank() == 0:
        want = dict(reference.named_parameters())
        for n in names:
            torch.testing.assert_close(full[n], want[n].detach(), rtol=1e-5, atol=1e-6, msg=n)
        for n, value in ref_ema.full().items():
            torch.testing.assert_close(gathered_ema[n], value, rtol=1e-5, atol=1e-6, msg=n)
        print(f"FSDP OK: {len(names)} trained tensors over {dist.get_world_size()} ranks")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
