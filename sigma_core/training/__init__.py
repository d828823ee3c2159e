"""Post-training SIGMA as the paper describes it: the intra-group mask in the packed forward,
W_tau trained, the generation branch (or LoRA, or everything) updated with BAGEL's flow loss,
on one process or many through accelerate (DDP or FSDP).

Names load on first use: the config needs only PyYAML, the trainer torch, accelerate and peft.
"""

from __future__ import annotations

from sigma_core.lazy import lazy_exports

_EXPORTS = {
    "ParamEMA": "sigma_core.training.checkpoints",
    "export": "sigma_core.training.checkpoints",
    "TrainConfig": "sigma_core.training.config",
    "load_config": "sigma_core.training.config",
    "DataPosition": "sigma_core.training.data",
    "TrainDataset": "sigma_core.training.data",
    "flow_loss": "sigma_core.training.flow",
    "sample_timesteps": "sigma_core.training.flow",
    "ExampleMaker": "sigma_core.training.packing",
    "ImageBounds": "sigma_core.training.packing",
    "PackedBatch": "sigma_core.training.packing",
    "TrainingExample": "sigma_core.training.packing",
    "drop_conditions": "sigma_core.training.packing",
    "pack": "sigma_core.training.packing",
    "SkipCounter": "sigma_core.training.rows",
    "TrainSample": "sigma_core.training.rows",
    "Trainer": "sigma_core.training.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
