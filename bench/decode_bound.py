"""Decoding against the memory-bandwidth bound: tokens/s as a share of what the machine's memory
allows, at batch 1, 8 and 32, ours (fp32 as `llm generate` runs it, fp32 in MKL's layout alone, fp32 in
nn.Linear's layout, bf16) beside transformers' `generate`, in one run.

    .venv/bin/python bench/decode_bound.py [--tokens 200] [--batches 1 8 32] [--repeats 3] [--threads N]
    .venv/bin/python bench/decode_bound.py --shape gpt2-124m --vocab 50304 --tokens 50 --batches 1 8   # largest preset
    .venv/bin/python bench/decode_bound.py --shape smoke --tokens 8 --batches 1 2 --repeats 1   # checks the script

The bound: one decode step must read every weight once (all the linear layers, the norms and
the LM head, which reads the whole token table) plus every row's keys and values so far; at
B rows a step yields B tokens, so the bound is B * bandwidth / bytes per step. Bandwidth is
the best of several large copies (bytes read + written) and read-reductions (`sum`), measured
at the start of the run; bytes per step average the KV cache over the generation's lengths.

Greedy decoding of exactly --tokens new tokens after a 12-token random prompt, random weights,
nanoGPT's 6 x 384 shape by default (train_step.py's SHAPES), context = prompt + tokens. The
paths run interleaved, each timed --repeats times; the table has the best. `same tokens`
compares each path's greedy tokens with ours in fp32. Then one more batch-1 run of ours under
torch.profiler gives the matrix work's self CPU time (linear layers, attention), as a share of
the same run's best wall time without the profiler; the rest is Python-dispatched small ops,
copies, allocation (the per-token overhead).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from train_step import SHAPES as TRAIN_SHAPES
from train_step import ours, transformers_gpt2
from transformers import GenerationConfig

from lightning_llm.measured import machine, native_bf16
from lightning_llm.model import layout
from lightning_llm.model.generation import cache_dtype, prepare_for_inference, stream

PROMPT = 12
# the largest preset, conf/model/gpt2-124m (with --vocab 50304): 124 M parameters, 0.5 GB of fp32 weights
SHAPES = {**TRAIN_SHAPES, "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)}
MATRIX_OPS = ("addmm", "mm", "bmm", "linear", "matmul", "scaled_dot_product", "flash_attention", "mkldnn", "baddbmm")


def bandwidth(megabytes: int = 256, repeats: int = 5) -> dict[str, float]:
    """Bytes/s: the best copy (read + write) and the best read-reduce of a large fp32 buffer."""
    src = torch.randn(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = {"copy": float("inf"), "sum": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best["copy"] = min(best["copy"], time.perf_counter() - start)
        start = time.perf_counter()
        src.sum()
        best["sum"] = min(best["sum"], time.perf_counter() - start)
    nbytes = src.numel() * 4
    return {"copy": 2 * nbytes / best["copy"], "sum": nbytes / best["sum"]}


def bytes_per_step(model, batch: int, tokens: int, dtype: torch.dtype) -> float:
    """Weights (of the unprepared `model`, in `dtype`) read once per step (the position table
    only by one row: left out) plus the KV cache read by attention (in the dtype attention runs
    in: fp32 on a CPU, see generation.cache_dtype), averaged over the steps of one generation."""
    c = model.config
    size = torch.finfo(dtype).bits // 8
    seen, weights = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or name == "pos_emb.weight":
            continue
        seen.add(id(p))
        weights += p.numel() * size
    if not c.tie_embeddings:
        weights -= model.tok_emb.weight.numel() * size  # a lookup of B rows; the head reads its own table
    mean_length = PROMPT + (tokens - 1) / 2
    kv_size = torch.finfo(cache_dtype(torch.empty(0, dtype=dtype))).bits // 8
    kv = 2 * c.n_layer * batch * c.n_kv_head * c.head_dim * mean_length * kv_size
    return weights + kv


def ours_generate(model, prompt, tokens):
    out = [[] for _ in range(len(prompt))]
    for step in stream(model, prompt.tolist(), max_new_tokens=tokens, temperature=0):
        for token in step:
            out[token.row].append(token.id)
    return torch.tensor(out)


def matrix_share(fn, repeats: int = 3) -> tuple[float, float, float, int]:
    """(matrix work's share of the wall time, wall ms, wall ms under the profiler, number of ops)
    of fn: the matrix operators' self CPU time from one call under the profiler, divided by the
    best wall time of `repeats` calls without it. The profiler adds its own cost to every op
    (about 2 us; 700+ ops per token here), so the profiled call's wall time would count the
    profiler as overhead. The rest of the wall time is everything else: small ops, copies,
    allocation and the Python between ops, which no op's self time counts."""
    wall = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        wall = min(wall, time.perf_counter() - start)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        fn()
        profiled = time.perf_counter() - start
    events = profiler.key_averages()
    matrix = sum(e.self_cpu_time_total for e in events if any(op in e.key for op in MATRIX_OPS)) / 1e6
    return min(1.0, matrix / wall), wall * 1000, profiled * 1000, sum(e.count for e in events)


def mkl_layout_only(model):
    """A copy laid out as before oneDNN's packed weights (model/layout.py): every layer a
    LaidOutLinear, whatever the batch."""
    pack, layout.can_pack = layout.can_pack, lambda dtype: False
    try:
        return prepare_for_inference(copy.deepcopy(model), torch.float32)
    finally:
        layout.can_pack = pack


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--shape", choices=SHAPES, default="nanogpt")
    parser.add_argument("--no-transformers", action="store_true", help="ours only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = {**SHAPES[args.shape], "block_size": PROMPT + args.tokens}
    torch.manual_seed(0)
    fp32 = ours(args.vocab, shape).eval()  # as trained: nn.Linear's layout (the byte count reads it)
    models = {"ours fp32": prepare_for_inference(copy.deepcopy(fp32), torch.float32),  # as llm generate runs it
              "ours fp32, MKL layout only": mkl_layout_only(fp32), "ours fp32, nn.Linear layout": fp32}
    bf16 = native_bf16("cpu")
    if bf16:
        models["ours bf16"] = prepare_for_inference(copy.deepcopy(fp32), torch.bfloat16)
    paths = {name: (lambda p, m=m: ours_generate(m, p, args.tokens)) for name, m in models.items()}
    if not args.no_transformers:
        reference = transformers_gpt2(args.vocab, shape).eval()
        settings = GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                    use_cache=True, eos_token_id=None, bos_token_id=None, pad_token_id=None)

        def hf(model):
            def generate(prompt):
                with torch.inference_mode():
                    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=settings)
                return out[:, PROMPT:]
            return generate

        paths["transformers fp32"] = hf(reference)
        if bf16:
            paths["transformers bf16"] = hf(copy.deepcopy(reference).to(torch.bfloat16))
        models["transformers fp32"] = reference

    bw = bandwidth()
    bound_bw = max(bw.values())
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    n_params = sum(p.numel() for p in fp32.parameters())
    print(f"decode_bound: {shape['n_layer']} layers x {shape['n_embd']}, context {shape['block_size']}, vocab "
          f"{args.vocab}, {n_params / 1e6:.2f} M parameters; greedy, prompt {PROMPT} + {args.tokens} new tokens; "
          f"{machine('cpu')}; load average {load}")
    print(f"memory bandwidth: copy {bw['copy'] / 1e9:.1f} GB/s, read-reduce {bw['sum'] / 1e9:.1f} GB/s "
          f"(best of 5, 256 MiB); the bound uses {bound_bw / 1e9:.1f} GB/s\n")
    print("| batch | path | best s | tokens/s | MB per step | bound tokens/s | share of bound | "
          "vs transformers fp32 | same tokens as ours fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    warm = torch.randint(0, args.vocab, (1, PROMPT))
    for fn in paths.values():
        fn(warm)
    for batch in args.batches:
        prompt = torch.randint(0, args.vocab, (batch, PROMPT))
        best, outputs = dict.fromkeys(paths, float("inf")), {}
        for _ in range(args.repeats):
            for name, fn in paths.items():
                start = time.perf_counter()
                outputs[name] = fn(prompt)
                best[name] = min(best[name], time.perf_counter() - start)
                assert outputs[name].shape == (batch, args.tokens), f"{name}: {tuple(outputs[name].shape)}"
        reference_rate = batch * args.tokens / best["transformers fp32"] if "transformers fp32" in best else None
        for name in paths:
            step_bytes = bytes_per_step(fp32, batch, args.tokens, torch.bfloat16 if "bf16" in name else torch.float32)
            rate = batch * args.tokens / best[name]
            bound = batch * bound_bw / step_bytes
            same = "-" if name.startswith("transformers") else \
                f"{(outputs[name] == outputs['ours fp32']).float().mean().item():.0%}"  # transformers: other weights
            print(f"| {batch} | {name} | {best[name]:.2f} | {rate:,.0f} | {step_bytes / 1e6:.1f} | {bound:,.0f} | "
                  f"{rate / bound:.0%} | {f'{rate / reference_rate:.2f}x' if reference_rate else '-'} | {same} |",
                  flush=True)
    print("\nbatch 1, one generation under torch.profiler (self CPU time):")
    prompt = torch.randint(0, args.vocab, (1, PROMPT))
    for name in models:
        if name.startswith("ours"):
            share, total, profiled, ops = matrix_share(lambda n=name: paths[n](prompt))
            print(f"- {name}: matrix work (linear, attention) {share:.0%}, everything else {1 - share:.0%} "
                  f"({total / args.tokens:.2f} ms per token, {profiled / args.tokens:.2f} ms under the profiler; "
                  f"{ops / args.tokens:.0f} ops per token)")


if __name__ == "__main__":
    main()
