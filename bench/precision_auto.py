"""Does `trainer.precision=auto` pick the faster precision? Checked across the presets.

    .venv/bin/python bench/precision_auto.py [--presets gpt-micro gpt-nano llama-small] [--batch 32] [--rounds 5]
    .venv/bin/python bench/precision_auto.py --presets gpt2-124m --batch 2 --rounds 3   # the largest, slowly

For each preset (conf/model/<name>.yaml, vocabulary --vocab): first the choice, as a run makes
it (lightning_llm.training.precision.choose_precision, measured afresh: its few short steps),
then the check: full-batch training steps (forward, loss, backward, AdamW) in 32-true and
bf16-mixed, interleaved, --rounds rounds of --steps steps, the median of each. The choice is
right when it is the faster precision in the check, or when bf16 is faster by less than the
choice's margin (5%: within it fp32, exact and cast-free, is kept by design).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lightning_llm.measured import machine
from lightning_llm.model import GPT, GPTConfig
from lightning_llm.training.precision import BF16_MARGIN, CHOICES, choose_precision

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


def check(config: GPTConfig, batch: int, *, rounds: int, steps: int) -> dict[str, float]:
    """Median training tokens/s per precision at the full batch, the precisions interleaved."""
    torch.manual_seed(0)
    model = GPT(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randint(0, config.vocab_size, (2, batch, config.block_size))

    def step(dtype):
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for dtype in CHOICES.values():  # warm-up
        step(dtype)
    times = {name: [] for name in CHOICES}
    for _ in range(rounds):
        for name, dtype in CHOICES.items():
            start = time.perf_counter()
            for _ in range(steps):
                step(dtype)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: batch * config.block_size / statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["gpt-micro", "gpt-nano", "llama-small"])
    parser.add_argument("--batch", type=int, default=32, help="rows per step (conf/train.yaml's batch_size)")
    parser.add_argument("--vocab", type=int, default=65, help="the built-in corpus's character vocabulary")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    print(f"{machine('cpu')}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| preset | batch x block | auto chose | auto's figures (tokens/s) | check: 32-true | check: bf16-mixed | "
          "bf16 / fp32 | right |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    wrong = 0
    for preset in args.presets:
        config = GPTConfig(**{**OmegaConf.to_container(OmegaConf.load(CONF / f"{preset}.yaml")),
                              "vocab_size": args.vocab})
        choice, figures = choose_precision(config, args.batch, use_cache=False)
        rates = check(config, args.batch, rounds=args.rounds, steps=args.steps)
        ratio = rates["bf16-mixed"] / rates["32-true"]
        faster = "bf16-mixed" if ratio >= 1 else "32-true"
        right = choice == faster or (choice == "32-true" and ratio < BF16_MARGIN)
        wrong += not right
        auto = ", ".join(f"{k} {v:,.0f}" for k, v in figures.get("tokens_per_s", {}).items()) or figures["reason"]
        print(f"| {preset} | {args.batch} x {config.block_size} | {choice} | {auto} | {rates['32-true']:,.0f} | "
              f"{rates['bf16-mixed']:,.0f} | {ratio:.2f} | {'yes' if right else '**no**'} |", flush=True)
    print(f"\n{len(args.presets) - wrong} of {len(args.presets)} choices right")


if __name__ == "__main__":
    main()
