"""`trainer.precision=auto`: the faster of fp32 and bf16 autocast for this model on this machine,
measured, not assumed.

On first use for a (machine, model shape, batch) the model runs a few training steps
(forward, loss, backward, AdamW) in each precision, interleaved, and the faster one is kept
in the measured-figures cache (lightning_llm/measured.py), so later runs of the same shape
decide at once. At small matrices autocast's casts can cost more than bf16 saves (the
default gpt-micro on a 2-core AVX-512 BF16 CPU: docs/benchmarks.md), so a chip that has bf16
is not reason enough. Where bf16 is emulated (no AVX-512 BF16 / AMX, or a GPU without bf16)
fp32 is chosen without measuring: emulated bf16 is several times slower.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from lightning_llm.measured import interleaved_best, lookup, machine, native_bf16, store
from lightning_llm.model import GPT, GPTConfig

log = logging.getLogger(__name__)

CHOICES = {"32-true": None, "bf16-mixed": torch.bfloat16}


BF16_MARGIN = 1.05  # bf16-mixed is chosen only when at least 5% faster than fp32 in the timed steps
TIMED_TOKENS = 2048  # rows per timed step: the batch, cut to about this many tokens (a short first-use delay)


def tokens_per_s(config: GPTConfig, batch_size: int, device: torch.device, *, rounds: int = 2) -> dict[str, float]:
    """Training tokens/s of the best step of a fresh model of this shape, per precision (the
    batch cut to about TIMED_TOKENS tokens on a CPU: the matrices keep their width); a small
    model's short steps are timed over more rounds, since one step of a few ms is noise."""
    if device.type == "cpu":
        batch_size = max(1, min(batch_size, TIMED_TOKENS // config.block_size))
    torch.manual_seed(0)
    model = GPT(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randint(0, config.vocab_size, (2, batch_size, config.block_size), device=device)

    def step(dtype):
        context = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with context:
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step(None)  # a first fp32 step: how many rounds fit in about half a second (at least `rounds`, at most 10)
    rounds = max(rounds, min(10, int(0.5 / max(time.perf_counter() - start, 1e-3))))
    best = interleaved_best({name: (lambda d=dtype: step(d)) for name, dtype in CHOICES.items()},
                            device=device, rounds=rounds)
    return {name: round(batch_size * config.block_size / seconds, 1) for name, seconds in best.items()}


def choose_precision(config: GPTConfig, batch_size: int, device: torch.device | str = "cpu", *,
                     use_cache: bool = True) -> tuple[str, dict]:
    """("32-true" or "bf16-mixed", the figures it rests on). Cached per machine and shape."""
    device = torch.device(device)
    if not native_bf16(device):
        return "32-true", {"reason": f"bf16 is not native on {machine(device)}"}
    key = f"{machine(device)}, batch {batch_size}, {sorted(config.to_dict().items())}"
    if use_cache and (found := lookup("precision", key)):
        return found["choice"], found
    rates = tokens_per_s(config, batch_size, device)
    # bf16 must win clearly: within timing noise, fp32 (exact, no casts) is kept.
    choice = "bf16-mixed" if rates["bf16-mixed"] >= BF16_MARGIN * rates["32-true"] else "32-true"
    figures = {"choice": choice, "tokens_per_s": rates, "machine": machine(device)}
    if use_cache:
        store("precision", key, figures)
    return choice, figures


def log_choice(choice: str, figures: dict) -> None:
    if "tokens_per_s" in figures:
        rates = ", ".join(f"{name} {rate:,.0f} tokens/s" for name, rate in figures["tokens_per_s"].items())
        log.info("precision=auto: %s (measured training steps of this model here: %s)", choice, rates)
    else:
        log.info("precision=auto: %s (%s)", choice, figures.get("reason", ""))
