"""Training step throughput: our GPT against transformers' GPT2LMHeadModel of the same shape.

    .venv/bin/python bench/train_step.py [--rounds 8] [--steps 1] [--precision fp32|bf16-mixed] [--profile]
    .venv/bin/python bench/train_step.py --shape micro --rounds 8 --steps 20   # the default model's size

One step is forward, loss, backward, gradient clipping and AdamW, on random tokens of a
character-sized vocabulary. The models run interleaved (A B C A B C ...) so that the
machine's drift hits them alike; the table shows the median step of each, tokens/s, and
achieved GFLOP/s (6N + attention FLOPs per token) against the matmul peak measured at the
start of the same run (the best 2048^2 matmul of five at the start and one per round, since
a shared machine's bursts of load would otherwise lower the peak): that fraction is the CPU MFU.

Same for both models: shape, tied embeddings, learned positions, tanh GELU, LayerNorm eps,
dropout 0, SDPA attention, the cross-entropy call, AdamW settings and parameter groups,
thread count. Different by design: transformers stores its linear layers transposed
(Conv1D, addmm), computes GPT-2's tanh GELU (`gelu_new`) as separate element-wise operations
where ours calls the fused F.gelu, and goes through its masking utilities.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_llm.model import GPT, GPTConfig, flops_per_token
from lightning_llm.training.optim import param_groups

SHAPES = {
    "nanogpt": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # nanoGPT's Shakespeare-char model
    "micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),  # the gpt-micro preset, learned positions
    "smoke": dict(n_layer=2, n_head=2, n_embd=64, block_size=32),  # to check the script runs
}
LR, BETAS, WEIGHT_DECAY = 6e-4, (0.9, 0.99), 0.1


def ours(vocab: int, shape: dict) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab, dropout=0.0, bias=True, position="learned", norm="layernorm",
                         mlp="gelu", tie_embeddings=True, **shape))


def transformers_gpt2(vocab: int, shape: dict) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=vocab, n_positions=shape["block_size"], n_layer=shape["n_layer"],
                        n_head=shape["n_head"], n_embd=shape["n_embd"], activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                        bos_token_id=None, eos_token_id=None, use_cache=False, attn_implementation="sdpa")
    model = GPT2LMHeadModel(config)
    assert model.config._attn_implementation == "sdpa"
    return model


def linear_peak(dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` (size x size) matmuls in nn.Linear's layout, the layout
    autocast's bf16 linears take (plain `a @ b` in bf16 hits a far slower kernel on AVX2 CPUs)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    F.linear(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        F.linear(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def top_ops(fn, rows: int = 6) -> str:
    """Where the time goes: the operators with the most self CPU time in one call of fn."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        fn()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return ", ".join(f"{e.key.removeprefix('aten::')} {e.self_cpu_time_total / total:.0%}" for e in events[:rows])


def loss_of(model, x, y):
    if isinstance(model, GPT):
        return model(x, y)[1]
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))


def step_timer(model, fused: bool, autocast):
    optimizer = torch.optim.AdamW(param_groups(model), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=fused)

    def step(x, y) -> float:
        start = time.perf_counter()
        with autocast():
            loss = loss_of(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return time.perf_counter() - start

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per model per round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=65, help="a character vocabulary's size")
    parser.add_argument("--precision", choices=["fp32", "bf16-mixed"], default="fp32")
    parser.add_argument("--profile", action="store_true", help="then profile one more step of each")
    parser.add_argument("--shape", choices=SHAPES, default="nanogpt")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    bf16 = args.precision == "bf16-mixed"
    dtype = torch.bfloat16 if bf16 else torch.float32

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    peak_size = 512 if args.shape == "smoke" else 2048
    peak_gflops = linear_peak(dtype, peak_size)
    torch.manual_seed(0)
    models = {"ours": ours(args.vocab, shape), "transformers GPT2LMHeadModel": transformers_gpt2(args.vocab, shape)}
    n_ours, n_hf = (sum(p.numel() for p in m.parameters()) for m in models.values())
    assert n_ours == n_hf, f"parameter counts differ: {n_ours} vs {n_hf}"
    runs = {"ours, AdamW foreach": step_timer(models["ours"], False, autocast),
            "ours, AdamW fused": step_timer(models["ours"], True, autocast),
            "transformers GPT2LMHeadModel, AdamW foreach": step_timer(models["transformers GPT2LMHeadModel"], False,
                                                                     autocast)}
    if bf16:  # fused AdamW is a fp32 question; bf16 steps are slow here, keep the run short
        del runs["ours, AdamW fused"]
    x, y = torch.randint(0, args.vocab, (2, args.batch, shape["block_size"]))
    for step in runs.values() if not bf16 else ():  # warm-up (a bf16 step here takes a minute: no need)
        step(x, y)
    times = {name: [] for name in runs}
    for done in range(1, args.rounds + 1):
        for name, step in runs.items():
            times[name] += [step(x, y) for _ in range(args.steps)]
        peak_gflops = max(peak_gflops, linear_peak(dtype, peak_size, repeats=1))  # a peak is the best seen
        print(f"round {done}/{args.rounds}: " + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items()),
              file=sys.stderr, flush=True)

    tokens = args.batch * shape["block_size"]
    flops = flops_per_token(models["ours"])
    print(f"train step: {shape['n_layer']} layers x {shape['n_embd']}, {shape['n_head']} heads, block "
          f"{shape['block_size']}, batch {args.batch}, vocab {args.vocab}, {n_ours / 1e6:.2f} M parameters, "
          f"{args.precision}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.rounds} interleaved rounds x {args.steps} steps; {flops / 1e6:.1f} MFLOP per token; {dtype} matmul "
          f"peak {peak_gflops:.1f} GFLOP/s (the best {peak_size}^2 matmul of 5 at the start and 1 per round)\n")
    print("| model | median step s | tokens/s | GFLOP/s | MFU | fastest, slowest step s |")
    print("| --- | --- | --- | --- | --- | --- |")
    medians = {}
    for name, seconds in times.items():
        medians[name] = median = statistics.median(seconds)
        gflops = flops * tokens / median / 1e9
        print(f"| {name} | {median:.3f} | {tokens / median:,.0f} | {gflops:.1f} | {gflops / peak_gflops:.0%} | "
              f"{min(seconds):.3f}, {max(seconds):.3f} |")
    foreach = medians["ours, AdamW foreach"]
    print(f"\nours / transformers, tokens/s, same optimizer: "
          f"{medians['transformers GPT2LMHeadModel, AdamW foreach'] / foreach:.2f}x")
    if not bf16:
        print(f"ours, fused AdamW / foreach AdamW: {foreach / medians['ours, AdamW fused']:.2f}x")
    if args.profile:
        print("\nshare of self CPU time in one step (torch.profiler):")
        for name, step in runs.items():
            print(f"- {name}: {top_ops(lambda: step(x, y))}")


if __name__ == "__main__":
    main()
