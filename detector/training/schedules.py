"""Learning-rate schedules, as multipliers of the base rate: fine-tuning by iteration (warm-up,
then steps or cosine) and pre-training by fractional epoch (warm-up, then the GoogLeNet paper's
4% every 8 epochs, cosine or one-cycle)."""
from __future__ import annotations

import math

from detector.config import PretrainConfig, TrainConfig


def finetune_lr_factor(train: TrainConfig, iteration: int) -> float:
    """Multiplier of the base learning rate at `iteration`: linear warm-up, then step or cosine."""
    if iteration < train.warmup_iterations:
        return (iteration + 1) / train.warmup_iterations
    if train.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * iteration / max(1, train.iterations)))
    return train.lr_gamma ** sum(iteration >= step for step in train.lr_steps)


def pretrain_lr_factor(config: PretrainConfig, epoch: float) -> float:
    """Multiplier of the peak learning rate at (fractional) `epoch`."""
    warmup = config.warmup_epochs
    if epoch < warmup:
        return 1 / 25 + (1 - 1 / 25) * epoch / warmup
    if config.schedule == "step":
        return config.step_gamma ** math.floor(epoch / config.step_epochs)
    progress = min(1.0, (epoch - warmup) / max(1e-9, config.epochs - warmup))
    floor = 1e-4 if config.schedule == "onecycle" else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
