"""Compression against the original, side by side in one run: parameters, file size, generation
tokens/s at batch 1 and 8, training step time, val and test bits per byte.

    .venv/bin/python bench/compress.py default --run <a trained run of the default experiment>
    .venv/bin/python bench/compress.py gpt2 [--layers 12]       # the gpt2-124m shape, random weights
    .venv/bin/python bench/compress.py distill --run <the same run> --steps 300

`default`: the run's model (gpt-micro on the built-in corpus) quantized with every scheme this
CPU runs, pruned (30% of MLP channels and 1 of 4 heads per layer, each recovered with a short
fine-tune; 30% magnitude), each saved as a model folder (file size) and loaded back, then
timed interleaved (greedy generation, best of --repeats) and scored on the first --max-tokens
of val and test. Also what `quantize.goal=speed` and `goal=size` pick here.
`gpt2`: the gpt2-124m preset with the char vocabulary (85M parameters), random weights, so
only size and speed mean anything; also what `goal=speed` picks (speed alone: no data).
`distill`: a student with half the layers distilled from the run's model against the same
student trained from scratch for the same steps (two `llm` runs, one after the other), best val
bits per byte of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from lightning_llm.compress import importance, magnitude, measure, pick_scheme, quantize, removed_count, structured
from lightning_llm.compress.prune import sample_batches
from lightning_llm.compress.quantize import manifest_entry, unsupported
from lightning_llm.compress.report import comparison_table
from lightning_llm.config import CONF_DIR
from lightning_llm.data.prepared import PreparedData
from lightning_llm.model import GPT, GPTConfig
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact
from lightning_llm.stages.compress import recover

SCHEMES = [s for s in ("bf16", "fp16", "int8_weight_only", "int8_dynamic", "int4_weight_only")
           if unsupported(s, "cpu") is None]


def train_step_ms(models: dict[str, GPT], *, batch: int, block: int, repeats: int) -> dict[str, float]:
    """Forward + backward of one batch (fp32), interleaved, best of repeats, in ms."""
    x = torch.randint(0, next(iter(models.values())).config.vocab_size, (batch, block + 1))
    best = {n: float("inf") for n in models}
    for _ in range(repeats + 1):  # the first round warms up
        for name, model in models.items():
            model.train()
            started = time.perf_counter()
            model(x[:, :-1], x[:, 1:])[1].backward()
            best[name] = min(best[name], (time.perf_counter() - started) * 1e3)
            model.zero_grad(set_to_none=True)
            model.eval()
    return best


def saved(models: dict[str, GPT], tokenizer_json: str, root: Path, schemes: dict[str, str]) -> dict[str, Path]:
    """Each model written as a model folder (for its file size) and its path; quantized ones with their manifest."""
    folders = {}
    for name, model in models.items():
        extra = {"quantization": manifest_entry(schemes[name], model)} if name in schemes else {}
        folders[name] = save_artifact(model, tokenizer_json, root / name.replace(" ", "_").replace("%", "pct"),
                                      manifest=new_manifest(produced_by="bench", tokenizer_json=tokenizer_json, **extra))
    return folders


def recovered(model: GPT, data: PreparedData, tokenizer_json: str, steps: int, out: Path) -> GPT:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="compress"):
        cfg = compose("compress", ["method=prune", f"prune.recover_steps={steps}", f"paths.run_dir={out}",
                                   "trainer.precision=32-true"])
    return recover(cfg, model, data, tokenizer_json, hold_zeros=False)[0]


def default(args) -> None:
    artifact = load_artifact(args.run)
    run = json.loads((Path(args.run) / "run.json").read_text())
    data = PreparedData(Path(run["data"]["dir"]))
    base, tokenizer_json = artifact.model, artifact.tokenizer.to_str()
    models: dict[str, GPT] = {"original": base}
    schemes = {}
    for scheme in SCHEMES:
        models[scheme] = quantize(base, scheme)
        schemes[scheme] = scheme
    batches = sample_batches(data.tokens("train"), block_size=base.config.block_size, batch_size=16, count=8, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, amount in (("mlp", 0.3), ("heads", 0.25)):
            pruned, _ = structured(base, kind, importance(base, kind, batches=batches),
                                   removed_count(kind, base.config, amount=amount))
            models[f"{kind} -{int(amount * 100)}%"] = pruned
            models[f"{kind} -{int(amount * 100)}% + {args.recover_steps} steps"] = recovered(
                pruned, data, tokenizer_json, args.recover_steps, Path(tmp) / kind)
        models["magnitude -30%"] = magnitude(base, 0.3)
        folders = saved(models, tokenizer_json, Path(tmp) / "models", schemes)
        loaded = {name: load_artifact(folder).model for name, folder in folders.items()}  # what a user loads
        rows = measure(loaded, tokenizer=artifact.tokenizer, data=data, folders=folders, max_tokens=args.max_tokens,
                       new_tokens=args.new_tokens, repeats=args.repeats)
    steps = train_step_ms({n: m for n, m in loaded.items() if n not in schemes}, batch=16,
                          block=base.config.block_size, repeats=args.repeats)
    print(f"## default model: {args.run}\n")
    print_table(rows, steps)
    for goal in ("speed", "size"):
        chosen, measured = pick_scheme(base, goal, tokenizer=artifact.tokenizer, data=data,
                                       max_tokens=args.max_tokens // 2, new_tokens=args.new_tokens,
                                       repeats=args.repeats)
        print(f"\nquantize.goal={goal} picks {chosen}: " + ", ".join(
            f"{n} {r['tokens_per_s_b1']:.0f} tok/s {r['weight_bytes'] / 1e6:.2f} MB bpb {r.get('val_bpb', 0):.4f}"
            for n, r in measured.items()))


def gpt2(args) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="bench"):
        preset = dict(compose("train", ["model=gpt2-124m"]).model)
    config = GPTConfig(**{**preset, "vocab_size": args.vocab, "n_layer": args.layers})
    torch.manual_seed(0)
    base = GPT(config).eval()
    models: dict[str, GPT] = {"original": base}
    schemes = {}
    for scheme in args.schemes or SCHEMES:
        models[scheme] = quantize(base, scheme)
        schemes[scheme] = scheme
    if not args.speed_only:
        models["mlp -30%"] = structured(base, "mlp", importance(base, "mlp", method="weight_norm"),
                                        removed_count("mlp", config, amount=0.3))[0]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = Tokenizer(WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>"))
        folders = saved(models, tokenizer.to_str(), Path(tmp), schemes)
        loaded = {name: load_artifact(folder).model for name, folder in folders.items()}
        rows = measure(loaded, tokenizer=None, data=None, folders=folders, new_tokens=args.new_tokens,
                       repeats=args.repeats)
    steps = {} if args.speed_only else train_step_ms(
        {"original": loaded["original"], "mlp -30%": loaded["mlp -30%"]}, batch=4, block=128, repeats=args.repeats)
    print(f"## gpt2-124m shape, {args.layers} layers, vocabulary {args.vocab}, random weights\n")
    print_table(rows, steps)
    if args.speed_only:
        return
    chosen, measured = pick_scheme(base, "speed", new_tokens=args.new_tokens, repeats=args.repeats)
    print(f"\nquantize.goal=speed picks {chosen}: " + ", ".join(
        f"{n} {r['tokens_per_s_b1']:.1f} tok/s" for n, r in measured.items()))


def print_table(rows: dict[str, dict], steps: dict[str, float]) -> None:
    for name, ms in steps.items():
        rows[name]["train_step_ms"] = ms
    print(comparison_table(rows))
    print("\ntraining step (forward + backward, fp32), ms: " + ", ".join(f"{n} {ms:.1f}" for n, ms in steps.items()))


def distill(args) -> None:
    llm = [sys.executable, "-m", "lightning_llm.cli"]
    run = json.loads((Path(args.run) / "run.json").read_text())
    common = [f"model.n_layer={run['model']['n_layer'] // 2}", f"trainer.max_steps={args.steps}",
              f"trainer.val_check_interval={args.steps // 2}", "trainer.precision=32-true",
              "~callbacks.early_stopping", f"seed={args.seed}"]
    results = {}
    for name, cmd in (("distilled", llm + ["distill", f"teacher={args.run}", *common, "measure.max_tokens=20000"]),
                      ("scratch", llm + ["train", *common])):
        started = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{name} failed: {out.stderr[-2000:]}")
        run_dir = next(line.split("run dir ")[-1].strip() for line in (out.stdout + out.stderr).splitlines()
                       if "run dir " in line)
        metrics = json.loads((Path(run_dir) / "run.json").read_text())["metrics"]
        results[name] = {"run_dir": run_dir, "val/loss": metrics.get("best_val/loss"),
                         "val/bpb": metrics.get("val/bpb"), "seconds": round(time.time() - started)}
    print(f"| student ({run['model']['n_layer'] // 2} layers, {args.steps} steps) | best val loss | val bpb (last) |"
          f" seconds | run dir |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['val/loss']} | {r['val/bpb']} | {r['seconds']} | {r['run_dir']} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["default", "gpt2", "distill"])
    parser.add_argument("--run", help="a trained run dir of the default experiment (default, distill)")
    parser.add_argument("--max-tokens", type=int, default=100_000, help="bits per byte on this many tokens per split")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recover-steps", type=int, default=200)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=92)
    parser.add_argument("--steps", type=int, default=300, help="distill: training steps of both students")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--schemes", nargs="*", help="gpt2: only these schemes (default: every one this CPU runs)")
    parser.add_argument("--speed-only", action="store_true", help="gpt2: no pruned model, no training step, no goal")
    args = parser.parse_args()
    {"default": default, "gpt2": gpt2, "distill": distill}[args.what](args)


if __name__ == "__main__":
    main()
