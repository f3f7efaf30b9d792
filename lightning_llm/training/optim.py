"""Learning-rate schedules as LambdaLR factories, built from config with `_partial_: true`."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms or other 1-D gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 100,
                  min_lr_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up to the peak rate, then cosine decay to min_lr_ratio of it at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_stable_decay(optimizer: Optimizer, total_steps: int, warmup_steps: int = 100, decay_ratio: float = 0.2,
                        min_lr_ratio: float = 0.0) -> LambdaLR:
    """Warm-up, a long constant plateau, then a linear decay over the last decay_ratio of the run.
    Unlike cosine, the plateau does not depend on the run's length, so a run can be extended
    (or branched into decays of several lengths) from any checkpoint on the plateau."""
    if not 0 < decay_ratio <= 1:
        raise ValueError(f"decay_ratio must be in (0, 1], got {decay_ratio}")
    decay_start = max(warmup_steps, int(total_steps * (1 - decay_ratio)))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return 1 - (1 - min_lr_ratio) * progress

    return LambdaLR(optimizer, factor)
