"""Removing text: `finetune.forget` with unlikelihood against gradient ascent, and `update.remove`'s gate,
on the built-in corpus with the histories as the text to forget.

    .venv/bin/python bench/forget.py --out /tmp/forget-bench [--forget history|poem|...|made_up] [--base RUN_DIR]
        [--base-steps 600] [--steps 100] [--lr 1e-3] [--weight 1.0]

1. The base: `llm train model=gpt-nano` on the whole built-in corpus (the genre to forget included), unless
   --base names a finished run. With --forget made_up, the text to forget is 12 documents of an invented
   language (30 made-up words in random order, written to <out>/made_up/), mixed into the base's corpus
   at weight 20 (`+data.mix.made_up=...`), and the whole built-in corpus is kept.
2. `llm finetune base=<it> 'data.genres=[comedy,tragedy,poem]' 'finetune.forget={source:shakespeare,
   genres:[history],name:history}' finetune.forget_method=unlikelihood|ascent` (--forget names the genre;
   the other three are kept), the same steps, learning rate and weight for both; each run's run.json gives
   the losses before and after of the kept genres (held out), the base's own val split (all genres) and
   the forgotten genre (held out).
3. `llm update update.remove=<the forgotten genre's prepared folder>` (unlikelihood) from a registry whose
   v1 is the base, scored on the kept genres (update.old_data): the gate's one line.
Prints a Markdown table and the gate's line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

LLM = [sys.executable, "-m", "lightning_llm.cli"]
GENRES = ("comedy", "history", "tragedy", "poem")


def write_made_up(folder: Path) -> Path:
    """12 documents of 60 sentences of 10 words drawn from 30 invented ones (tests/test_forget.py's text)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("bdfgklmnprstvz")) + rng.choice(list("aeiou")) for _ in range(3))
             for _ in range(30)]
    for i in range(12):
        lines = [" ".join(rng.choice(words, 10)).capitalize() + "." for _ in range(60)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


def run(args: list[str], out: Path) -> str:
    env = {**os.environ, "LLM_OUTPUT_ROOT": str(out), "WANDB_MODE": "disabled"}
    print("$ llm " + " ".join(args), flush=True)
    return subprocess.run(LLM + args, check=True, env=env, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--forget", choices=(*GENRES, "made_up"), default="history",
                        help="the genre to forget, or made_up: an invented language mixed into the base's corpus")
    parser.add_argument("--base", type=Path, help="a finished `llm train` run on the whole built-in corpus")
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight", type=float, default=1.0, help="finetune.forget_weight")
    args = parser.parse_args()
    out = args.out.resolve()
    if args.forget == "made_up":
        docs = write_made_up(out / "made_up")
        base = args.base or out / "base_made_up"
        base_data = [f"+data.mix.made_up={{source:text_files,paths:['{docs}'],weight:20}}", "data.name=with_made_up"]
        forget = f"{{source:text_files,paths:['{docs}'],name:made_up}}"
        kept, keep = "the built-in corpus", ["data=shakespeare", "data.name=plays_only"]
    else:
        base, base_data = args.base or out / "base", []
        forget = f"{{source:shakespeare,genres:[{args.forget}],name:{args.forget}}}"
        genres = [g for g in GENRES if g != args.forget]
        kept = ", ".join(genres)
        keep = ["data=shakespeare", f"data.genres=[{','.join(genres)}]", f"data.name=not_{args.forget}"]
    if not (base / "run.json").exists():
        run(["train", "model=gpt-nano", "batch_size=16", f"trainer.max_steps={args.base_steps}",
             "trainer.val_check_interval=200", "val_windows=64", "optim.optimizer.lr=1e-2",
             "callbacks.samples.max_new_tokens=40", *base_data, f"hydra.run.dir={base}"], out)
    common = [*keep, f"trainer.max_steps={args.steps}", "trainer.val_check_interval=50", "~callbacks.early_stopping",
              "val_windows=64", "finetune.eval_windows=128", "callbacks.samples.max_new_tokens=40",
              f"optim.optimizer.lr={args.lr}", "optim.scheduler.warmup_steps=10"]
    results = {}
    for method in ("unlikelihood", "ascent"):
        run_dir = out / f"forget_{args.forget}_{method}"
        run(["finetune", f"base={base}", f"finetune.forget={forget}", f"finetune.forget_method={method}",
             f"finetune.forget_weight={args.weight}", *common, f"hydra.run.dir={run_dir}"], out)
        results[method] = json.loads((run_dir / "run.json").read_text())["finetune"]

    first = results["unlikelihood"]
    cache = out / "data"
    registry = f"without_{args.forget}"
    run(["registry", "promote", f"name={registry}", f"source={base / 'model'}"], out)
    gate_line = run(["update", f"name={registry}", f"update.remove={cache / first['forget']['data']}",
                     f"update.old_data=[{cache / first['losses'][0]['data'].split()[0]}]", "update.replay=0",
                     f"finetune.forget_weight={args.weight}", *common, f"hydra.run.dir={out / f'update_{args.forget}'}"],
                    out).strip().splitlines()[-1]

    print(f"\nbase {base}; {args.steps} steps, lr {args.lr}, forget weight {args.weight}, batch 16; losses on 128 "
          "held-out windows per row (nats per character)\n")
    print(f"| method | {args.forget} (forget, held out) before -> after | {kept} (data=, held out) before -> after "
          "| base's val split before -> after | run's s/step |")
    print("|---|---|---|---|---|")
    for method, ft in results.items():
        rows = {r["domain"]: r for r in ft["losses"]}
        cells = [f"{rows[d]['before']:.3f} -> {rows[d]['after']:.3f} ({rows[d]['change']:+.3f})"
                 for d in ("forget", "new", "base")]
        print(f"| {method} (cap {ft['forget']['cap']:.2f}) | " if method == "ascent" else f"| {method} | ",
              end="")
        print(" | ".join(cells) + f" | {ft['seconds_per_step']} |")
    print(f"\nllm update update.remove=...: {gate_line}")


if __name__ == "__main__":
    main()
