"""Generation speed: our KV cache against transformers' `generate` with its cache, and
against our own no-cache path, at batch 1 and 8.

    .venv/bin/python bench/generate.py [--tokens 500] [--batches 1 8] [--repeats 3] [--no-cache-batches 1]

Greedy decoding of exactly --tokens new tokens from a short random prompt, fp32, random
weights, interleaved runs, medians. Both models have the training benchmark's shape
(6 layers x 384, 6 heads, learned positions, tied embeddings) with a context window of
prompt + new tokens (512), so that every path decodes 500 tokens in one window: transformers'
GPT-2 cannot go past its position table, and ours would otherwise restart its cache. The
no-cache path recomputes the whole prefix for each token (quadratic), so by default it runs
once and only at batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_step import SHAPES, ours, top_ops, transformers_gpt2
from transformers import GenerationConfig

PROMPT = 12


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return seconds, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache-batches", type=int, nargs="*", default=[1],
                        help="batch sizes at which to time the no-cache path (once each)")
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--profile", action="store_true", help="then profile one more run of each path at batch 1")
    parser.add_argument("--shape", choices=SHAPES, default="nanogpt", help="layers, heads and width (train_step.py)")
    args = parser.parse_args()
    shape = {**SHAPES[args.shape], "block_size": PROMPT + args.tokens}
    torch.manual_seed(0)
    model, reference = ours(args.vocab, shape).eval(), transformers_gpt2(args.vocab, shape).eval()
    reference.config.use_cache = True
    settings = GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                use_cache=True, eos_token_id=None, bos_token_id=None, pad_token_id=None)

    def transformers_generate(prompt):
        with torch.inference_mode():
            return reference.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=settings)

    paths = {
        "ours, KV cache": lambda prompt: model.generate(prompt, args.tokens, temperature=0),
        "transformers generate, its cache": transformers_generate,
    }
    warm = torch.randint(0, args.vocab, (1, PROMPT))
    model.generate(warm, 8, temperature=0)
    transformers_generate(warm)

    rows = []
    for batch in args.batches:
        prompt = torch.randint(0, args.vocab, (batch, PROMPT))
        times = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, generate in paths.items():
                seconds, out = timed(lambda: generate(prompt))
                assert out.shape == (batch, PROMPT + args.tokens), f"{name} made {out.shape[1] - PROMPT} tokens"
                times[name].append(seconds)
        if batch in args.no_cache_batches:
            seconds, out = timed(lambda: model.generate(prompt, args.tokens, temperature=0, use_cache=False))
            assert torch.equal(out, model.generate(prompt, args.tokens, temperature=0)), "cache changed the tokens"
            times["ours, no cache"] = [seconds]
        for name, seconds in times.items():
            rows.append((batch, name, statistics.median(seconds), seconds))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"generate: {shape['n_layer']} layers x {shape['n_embd']}, {shape['n_head']} heads, context "
          f"{shape['block_size']}, vocab {args.vocab}, {n_params / 1e6:.2f} M parameters, fp32, greedy, "
          f"prompt {PROMPT} + {args.tokens} new tokens, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| batch | path | median s | tokens/s | ms per step | vs transformers | runs (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch, name, median, seconds in rows:
        reference_s = next(m for b, n, m, _ in rows if b == batch and n.startswith("transformers"))
        print(f"| {batch} | {name} | {median:.2f} | {batch * args.tokens / median:,.0f} | "
              f"{1000 * median / args.tokens:.2f} | {reference_s / median:.2f}x | "
              f"{', '.join(f'{s:.2f}' for s in seconds)} |")
    if args.profile:
        print("\nshare of self CPU time, batch 1 (torch.profiler):")
        prompt = torch.randint(0, args.vocab, (1, PROMPT))
        for name, generate in paths.items():
            print(f"- {name}: {top_ops(lambda: generate(prompt))}")


if __name__ == "__main__":
    main()
