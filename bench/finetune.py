"""Fine-tuning, full vs LoRA, on the built-in corpus with one genre held back as the new domain.

    .venv/bin/python bench/finetune.py --out /tmp/ft-bench [--base RUN_DIR] [--base-steps 600] [--steps 150]

1. The base: `llm train experiment=shakespeare_char 'data.genres=[comedy,tragedy,poem]'` (the histories
   never seen), unless --base names a finished run.
2. `llm finetune base=<it> 'data.genres=[history]' finetune.method=full|lora`, the same steps for both;
   each run's run.json gives the trainable parameters and the new and base domain's loss before and
   after (forgetting.md in its run dir).
3. Step time side by side: in one process, optimizer steps of the full model and of the LoRA model on
   the same batches (bf16 autocast where the CPU has it, as the Trainer's precision=auto), interleaved
   round by round; the median of the rounds.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

LLM = [sys.executable, "-m", "lightning_llm.cli"]
OLD = "data.genres=[comedy,tragedy,poem]"
NEW = "data.genres=[history]"


def run(args: list[str], out: Path) -> None:
    env = {**os.environ, "LLM_OUTPUT_ROOT": str(out), "WANDB_MODE": "disabled"}
    print("$ llm " + " ".join(args), flush=True)
    subprocess.run(LLM + args, check=True, env=env, stdout=subprocess.DEVNULL)


def step_times(base: Path, data_dir: Path, lr: dict, rounds: int, steps: int) -> dict[str, float]:
    from lightning_llm.data import PreparedData
    from lightning_llm.finetune.config import LoraSettings
    from lightning_llm.finetune.lora import add_lora
    from lightning_llm.model.io import load_artifact
    from lightning_llm.stages.train import resolve_precision
    from lightning_llm.training.optim import param_groups

    artifact = load_artifact(base)
    models = {"full": copy.deepcopy(artifact.model).train(), "lora": copy.deepcopy(artifact.model).train()}
    add_lora(models["lora"], LoraSettings(dropout=0.0))
    optimizers = {name: torch.optim.AdamW(param_groups(m), lr=lr[name]) for name, m in models.items()}
    tokens = PreparedData(data_dir).tokens("train")
    block, batch = artifact.config.block_size, 16
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps):
        starts = rng.integers(0, len(tokens) - block - 1, batch)
        window = torch.from_numpy(np.stack([tokens[s:s + block + 1] for s in starts]).astype(np.int64))
        batches.append((window[:, :-1], window[:, 1:]))
    bf16 = resolve_precision("auto", "cpu") == "bf16-mixed"
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds + 1):
        for name in (list(models) if r % 2 else list(reversed(models))):
            model, optimizer = models[name], optimizers[name]
            started = time.perf_counter()
            for x, y in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    _, loss = model(x, y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if r:  # round 0 warms up
                times[name].append((time.perf_counter() - started) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, help="a finished `llm train` run on the old domain")
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--model", default="model.n_layer=2 model.n_embd=64",
                        help="overrides of the base's shape (the default: a small gpt-micro, to fit a shared CPU)")
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--lr-lora", type=float, default=5e-3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    out = args.out.resolve()
    base = args.base or out / "base"
    if not (base / "run.json").exists():
        run(["train", "experiment=shakespeare_char", OLD, "data.name=shakespeare_old", *args.model.split(),
             f"trainer.max_steps={args.base_steps}", "trainer.val_check_interval=200", "val_windows=64",
             f"hydra.run.dir={base}"], out)
    lr = {"full": args.lr_full, "lora": args.lr_lora}
    results = {}
    for method in ("full", "lora"):
        run_dir = out / f"finetune_{method}"
        run(["finetune", f"base={base}", NEW, "data.name=shakespeare_histories", f"finetune.method={method}",
             f"trainer.max_steps={args.steps}", "trainer.val_check_interval=50", "~callbacks.early_stopping",
             "val_windows=64", "finetune.eval_windows=128",
             f"optim.optimizer.lr={lr[method]}", f"hydra.run.dir={run_dir}"], out)
        results[method] = json.loads((run_dir / "run.json").read_text())
    seconds = step_times(base, Path(results["full"]["data"]["dir"]), lr, args.rounds, steps=20)
    print(f"\nbase {base}, {args.steps} fine-tuning steps; step time: median of {args.rounds} interleaved rounds "
          "of 20 optimizer steps (batch 16)\n")
    print("| method | lr | trainable parameters | step time (ms) | new domain loss before -> after | "
          "base domain loss before -> after | run's s/step |")
    print("|---|---|---|---|---|---|---|")
    for method, r in results.items():
        ft = r["finetune"]
        new, old = ft["losses"]
        print(f"| {method} | {lr[method]:g} | {ft['trainable_parameters']:,} ({ft['trainable_parameters'] / ft['parameters']:.1%})"
              f" | {seconds[method] * 1e3:.1f} | {new['before']:.3f} -> {new['after']:.3f} ({new['change']:+.3f}) "
              f"| {old['before']:.3f} -> {old['after']:.3f} ({old['change']:+.3f}) | {ft['seconds_per_step']} |")
    print(f"\nLoRA / full step time: {seconds['lora'] / seconds['full']:.2f}")


if __name__ == "__main__":
    main()
