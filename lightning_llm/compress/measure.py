"""What a compressed model is worth against its original, measured side by side on this machine:
parameters, bytes on disk, generation tokens/s at several batch sizes, bits per byte on val and
test. Speeds are timed interleaved (every model once per round, best of the rounds), so a
machine shared with other work slows every model alike."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from lightning_llm.data.prepared import PreparedData
from lightning_llm.evaluation.lm import lm_metrics, score_tokens, utf8_bytes
from lightning_llm.measured import interleaved_best
from lightning_llm.model import GPT, flops_per_token
from lightning_llm.model.io import WEIGHTS
from lightning_llm.model.layout import lay_out


def parameters(model: GPT) -> int:
    """Every weight once (a tied LM head is the embedding), in logical elements: an int8 weight counts its entries."""
    return sum(p.numel() for p in model.parameters())


def weight_bytes(model: GPT) -> int:
    """Bytes the weights take in memory: for torchao tensors, their int data and scales."""
    total = 0
    for p in model.parameters():
        names = getattr(p, "tensor_data_names", None)
        if names:
            total += sum(t.numel() * t.element_size() for t in (getattr(p, n) for n in names) if t is not None)
        else:
            total += p.numel() * p.element_size()
    return total


def file_bytes(folder: Path) -> int:
    return (Path(folder) / WEIGHTS).stat().st_size


@torch.inference_mode()
def _generate(model: GPT, batch_size: int, new_tokens: int, prompt: list[int]) -> None:
    idx = torch.tensor([prompt] * batch_size, device=next(model.parameters()).device)
    model.generate(idx, new_tokens, temperature=0.0)


def as_served(model: GPT) -> GPT:
    """A copy with its linear layers laid out as `llm generate` and `llm serve` lay them out at
    load (model/layout.py), in the model's own dtype; quantized layers stay as they are."""
    served = copy.deepcopy(model)
    lay_out(served)
    return served


def generation_speed(models: dict[str, GPT], *, batch_sizes: tuple[int, ...] = (1, 8), new_tokens: int = 32,
                     repeats: int = 3, prompt: list[int] | None = None) -> dict[str, dict[int, float]]:
    """Greedy generation tokens/s (new tokens of every row / seconds) per model and batch size, each
    model laid out as it is served (as_served): one warm-up, then `repeats` interleaved rounds, best of them."""
    prompt = prompt or [0] * 8
    models = {name: as_served(model) for name, model in models.items()}
    for model in models.values():
        _generate(model, 1, 2, prompt)  # first-call costs (allocation, kernels) out of the timing
    device = next(next(iter(models.values())).parameters()).device
    speed: dict[str, dict[int, float]] = {name: {} for name in models}
    for b in batch_sizes:
        best = interleaved_best({name: (lambda m=model: _generate(m, b, new_tokens, prompt))
                                 for name, model in models.items()}, device=device, rounds=repeats, warmup=0)
        for name, seconds in best.items():
            speed[name][b] = b * new_tokens / seconds
    return speed


def bits_per_byte(model: GPT, tokenizer: Tokenizer, data: PreparedData, split: str, *,
                  max_tokens: int | None = None, batch_size: int = 64, device: str = "cpu") -> dict:
    """Loss and bits per byte on the first max_tokens of a split, as `llm eval`'s lm task scores it."""
    tokens = np.asarray(data.tokens(split)[:max_tokens], dtype=np.int64)
    with torch.inference_mode():
        nats, correct = score_tokens(model, tokens, None, batch_size, device, desc=f"{split} bpb")
    return lm_metrics(nats, utf8_bytes(tokenizer, tokens[1:]), correct)


def measure(models: dict[str, GPT], *, tokenizer: Tokenizer, data: PreparedData | None,
            folders: dict[str, Path] | None = None, splits: tuple[str, ...] = ("val", "test"),
            max_tokens: int | None = 100_000, batch_sizes: tuple[int, ...] = (1, 8), new_tokens: int = 32,
            repeats: int = 3, device: str = "cpu") -> dict[str, dict]:
    """Every column of the comparison table for every model, keyed by the models' names."""
    prompt = None
    if data is not None:
        prompt = [int(t) for t in data.tokens("val")[:8]]
    speed = generation_speed(models, batch_sizes=batch_sizes, new_tokens=new_tokens, repeats=repeats, prompt=prompt)
    out = {}
    for name, model in models.items():
        row = {"parameters": parameters(model), "weight_bytes": weight_bytes(model),
               "flops_per_token": flops_per_token(model),
               **{f"tokens_per_s_b{b}": round(speed[name][b], 1) for b in batch_sizes}}
        if folders and name in folders and folders[name] is not None:
            row["file_bytes"] = file_bytes(folders[name])
        if data is not None:
            for split in splits:
                metrics = bits_per_byte(model, tokenizer, data, split, max_tokens=max_tokens, device=device)
                row[f"{split}_bpb"], row[f"{split}_loss"] = metrics["bpb"], metrics["loss"]
                row[f"{split}_tokens"] = metrics["tokens"]
        out[name] = row
    return out
