"""The bare PyTorch training loop the benchmarks measure against: the same model, param
groups, AdamW, schedule and clipping as `llm train`, with no framework around it."""

from __future__ import annotations

import time

import torch

from lightning_llm.training.optim import param_groups, warmup_cosine


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model), lr=lr, betas=(0.9, 0.99), weight_decay=0.1)


def train_steps(model, optimizer, stream, steps: int, warmup_steps: int = 100) -> float:
    """Run `steps` steps on a warm-up + cosine schedule of that length; return the seconds taken."""
    scheduler = warmup_cosine(optimizer, steps, warmup_steps)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(stream)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start
