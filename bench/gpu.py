"""The gpt2-124m shape on one CUDA GPU in bf16: training tokens/s and MFU with and without
torch.compile, and KV-cache generation tokens/s. Written to finish well under ten minutes
on an H100 or H200 (torch.compile's first step takes about a minute of it).

    PYTHONPATH=. python bench/gpu.py            # on the GPU machine: needs only torch
    .venv/bin/python bench/gpu.py --smoke       # a tiny shape on this CPU: checks the code path

Training: 12 layers x 768, 12 heads, context 1024, vocabulary 50,304 (GPT-2's 50,257
padded to a multiple of 64, as nanoGPT does), batch 16, bf16 autocast, fused AdamW, random
tokens. MFU is achieved FLOP/s (6N + attention per token) over the bf16 matmul peak
measured at the start of the run, and over the datasheet's dense bf16 figure when the GPU
is one this script knows.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from lightning_llm.model import GPT, GPTConfig, flops_per_token
from lightning_llm.training.optim import param_groups

GPT2_124M = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
SMOKE = dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64)
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4}  # dense, no sparsity


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """TFLOP/s of the best of `repeats` (size x size) matmuls."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def train_step_seconds(model, optimizer, x, y, autocast, device, warmup: int, steps: int) -> list[float]:
    """Seconds per training step (forward, backward, clipping, AdamW), after `warmup` steps."""
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        with autocast():
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def generation_seconds(model: GPT, batch: int, prompt_len: int, tokens: int, vocab: int, device) -> float:
    prompt = torch.randint(0, vocab, (batch, prompt_len), device=device)
    model.generate(prompt, 8, temperature=0)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    out = model.generate(prompt, tokens, temperature=0)
    synchronize(device)
    assert out.shape == (batch, prompt_len + tokens)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per generation")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, CPU, fp32: a check of the code path")
    args = parser.parse_args()
    if args.smoke:
        device, dtype, shape, peak_size = torch.device("cpu"), torch.float32, SMOKE, 512
        args.batch, args.steps, args.tokens = 4, 2, 32
    elif torch.cuda.is_available():
        device, dtype, shape, peak_size = torch.device("cuda"), torch.bfloat16, GPT2_124M, 8192
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        raise SystemExit("error: no CUDA GPU here; run with --smoke to check the script on a CPU")

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype == torch.bfloat16 else contextlib.nullcontext()

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = matmul_peak(device, dtype, peak_size)
    datasheet = next((tflops for key, tflops in DATASHEET_BF16_TFLOPS.items() if key in name), None)
    print(f"{name}, torch {torch.__version__}, {dtype} matmul peak {peak:.1f} TFLOP/s "
          f"(best of 10 at {peak_size}^2), datasheet {datasheet or 'unknown'} TFLOP/s")

    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).to(device)
    optimizer = torch.optim.AdamW(param_groups(model), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    x, y = torch.randint(0, shape["vocab_size"], (2, args.batch, shape["block_size"]), device=device)
    tokens_per_step, flops = args.batch * shape["block_size"], flops_per_token(model)
    print(f"\n{shape['n_layer']} layers x {shape['n_embd']}, context {shape['block_size']}, vocab "
          f"{shape['vocab_size']}, {model.num_params() / 1e6:.1f} M parameters, batch {args.batch}, "
          f"{flops / 1e6:.0f} MFLOP per token\n")
    print("| training | median step ms | tokens/s | TFLOP/s | MFU (measured peak) | MFU (datasheet) | "
          "first step s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    variants = {"eager": model} if args.no_compile else {"eager": model, "torch.compile": torch.compile(model)}
    for variant, runnable in variants.items():
        start = time.perf_counter()
        train_step_seconds(runnable, optimizer, x, y, autocast, device, warmup=1, steps=0)
        first = time.perf_counter() - start  # for compile: the compilation
        median = statistics.median(train_step_seconds(runnable, optimizer, x, y, autocast, device, 2, args.steps))
        tflops = flops * tokens_per_step / median / 1e12
        mfu_datasheet = f"{tflops / datasheet:.0%}" if datasheet else "-"
        print(f"| {variant} | {1000 * median:.1f} | {tokens_per_step / median:,.0f} | {tflops:.1f} | "
              f"{tflops / peak:.0%} | {mfu_datasheet} | {first:.1f} |", flush=True)
    if device.type == "cuda":
        print(f"\npeak memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

    generator = model.to(dtype).eval()  # inference in the training precision's dtype, eager, KV cache
    print(f"\n| generation, KV cache, greedy, {dtype} weights | tokens/s | ms per step |")
    print("| --- | --- | --- |")
    for batch in (1, 8):
        seconds = generation_seconds(generator, batch, 12, args.tokens, shape["vocab_size"], device)
        print(f"| batch {batch}, {args.tokens} new tokens | {batch * args.tokens / seconds:,.0f} | "
              f"{1000 * seconds / args.tokens:.2f} |", flush=True)


if __name__ == "__main__":
    main()
