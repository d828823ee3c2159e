"""Post-training SIGMA as the paper describes it: the intra-group mask in the packed forward,
W_tau trained, the generation branch (or LoRA, or everything) updated with BAGEL's flow loss,
on one process or many through accelerate (DDP or FSDP).

Names load on first use: the config needs only PyYAML, the trainer torch, accelerate and peft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sigma_core.lazy import lazy_package

if TYPE_CHECKING:  # the names; they load on first use (sigma_core.lazy)
    from sigma_core.training.checkpoints import (
        ParamEMA as ParamEMA,
        export as export,
    )
    from sigma_core.training.config import (
        TrainConfig as TrainConfig,
        load_config as load_config,
    )
    from sigma_core.training.data import (
        DataPosition as DataPosition,
        TrainDataset as TrainDataset,
    )
    from sigma_core.training.flow import (
        flow_loss as flow_loss,
        sample_timesteps as sample_timesteps,
    )
    from sigma_core.training.packing import (
        Draft as Draft,
        ExampleMaker as ExampleMaker,
        ImageBounds as ImageBounds,
        PackedBatch as PackedBatch,
        TrainingExample as TrainingExample,
        drop_conditions as drop_conditions,
        pack as pack,
    )
    from sigma_core.training.rows import (
        SkipCounter as SkipCounter,
        TrainSample as TrainSample,
    )
    from sigma_core.training.trainer import Trainer as Trainer

if not TYPE_CHECKING:  # type checkers see the imports above; a misspelt name is an error
    __all__, __getattr__, __dir__ = lazy_package(__name__)
