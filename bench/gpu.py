"""One CUDA GPU in under five minutes: the gpt2-124m shape in bf16, training tokens/s and MFU with
and without torch.compile, the NaN guard with and without its per-step device sync, generation
at batch 1 and 32, and the serving engine's throughput. Writes its tables to a file as well.

    PYTHONPATH=. python bench/gpu.py [--out gpu.md]     # on the GPU machine (torch only; ~2-3 min on an H100)
    .venv/bin/python bench/gpu.py --smoke               # a tiny shape on this CPU: checks every code path

Training: 12 layers x 768, 12 heads, context 1024, vocabulary 50,304 (GPT-2's 50,257 padded to a
multiple of 64, as nanoGPT does), batch 16, bf16 autocast, fused AdamW, random tokens.
MFU is achieved FLOP/s (6N + attention per token) over the peak: the dense bf16 datasheet
figure where this script knows the GPU, and the best measured bf16 matmul (sizes 1024 to 8192,
a second each: lightning_llm/measured.py); both columns are shown, and neither can exceed 1
(a measured peak below the achieved rate is replaced by the achieved rate, and said so).

The NaN guard: `if not torch.isfinite(loss)` in every step makes the CPU wait for the GPU (a
device sync per step). The device-side guard keeps the guarantee (a step with a non-finite loss
never reaches the weights) without it: fused AdamW takes a `found_inf` tensor (as GradScaler
uses it) and skips the update on the device when it is set; the flag is read on the host only
every --check-every steps. Both are timed here, and the device guard is checked to skip a
poisoned step.

Generation: KV cache, greedy, bf16 weights, eager, 12-token prompts. Server: the continuous-
batching engine (lightning_llm/serving/engine.py, as `llm serve` runs it, without HTTP), 64
concurrent requests of 128 new tokens at max_batch_size 32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lightning_llm.measured import matmul_peak
from lightning_llm.model import GPT, GPTConfig, flops_per_token
from lightning_llm.model.generation import prepare_for_inference, stream
from lightning_llm.training.optim import param_groups

GPT2_124M = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
SMOKE = dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64)
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, no sparsity


class Report:
    """Prints lines and keeps them, to write the file at the end (and on the way, so a run cut
    short still leaves what it measured)."""

    def __init__(self, path: Path):
        self.path, self.lines = path, []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        self.path.write_text("\n".join(self.lines) + "\n")


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steps(model, optimizer, x, y, autocast, device, *, steps: int, guard: str, check_every: int = 50,
                poison: int | None = None) -> list[float]:
    """Seconds per training step (forward, backward, clipping, fused AdamW), one list entry per step.

    guard "sync": `if not torch.isfinite(loss)` per step (a device sync). guard "device": the
    optimizer's found_inf is set from the loss on the device, and read on the host every
    check_every steps. poison: the step whose loss is made NaN (to check the guard)."""
    times, skipped = [], torch.zeros((), device=device)
    for i in range(steps):
        synchronize(device)
        start = time.perf_counter()
        with autocast():
            _, loss = model(x, y)
        if poison == i:
            loss = loss * float("nan")
        optimizer.zero_grad(set_to_none=True)
        if guard == "sync":
            if not torch.isfinite(loss):  # the host waits for the device here
                times.append(time.perf_counter() - start)
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        else:
            bad = (~torch.isfinite(loss.detach())).float()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.found_inf = bad  # fused AdamW skips the update on the device when it is 1
            optimizer.step()
            skipped += bad
            if (i + 1) % check_every == 0 and skipped.item():  # the only host read: every check_every steps
                pass  # a trainer would log or stop here; the weights are intact either way
        synchronize(device)
        times.append(time.perf_counter() - start)
    optimizer.found_inf = None
    return times


def generation_seconds(model: GPT, batch: int, prompt_len: int, tokens: int, vocab: int, device) -> float:
    prompt = torch.randint(0, vocab, (batch, prompt_len)).tolist()
    for _ in stream(model, prompt, max_new_tokens=8, temperature=0):  # warm-up
        pass
    synchronize(device)
    start = time.perf_counter()
    made = 0
    for step in stream(model, prompt, max_new_tokens=tokens, temperature=0):
        made += len(step)
    synchronize(device)
    assert made == batch * tokens, made
    return time.perf_counter() - start


def engine_tokens_per_s(model: GPT, *, requests: int, tokens: int, max_batch: int, vocab: int) -> tuple[float, float]:
    """(tokens/s, mean batch size) of the serving engine with `requests` concurrent requests."""
    from lightning_llm.serving.engine import Engine, SamplingParams

    engine = Engine(model, max_batch_size=max_batch, max_queue=requests, prompt_loss=False)
    sizes = []
    engine.on_step = sizes.append
    engine.start()
    try:
        warm = engine.submit([1] * 12, SamplingParams(max_tokens=4, temperature=0))
        list(warm.events())
        sizes.clear()
        prompts = torch.randint(0, vocab, (requests, 12)).tolist()
        start = time.perf_counter()
        handles = [engine.submit(p, SamplingParams(max_tokens=tokens, temperature=0)) for p in prompts]
        made = sum(sum(e.token_id is not None for e in h.events()) for h in handles)
        seconds = time.perf_counter() - start
    finally:
        engine.shutdown(drain_timeout=1.0)
    assert made == requests * tokens, made
    return made / seconds, statistics.mean(sizes) if sizes else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per generation")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--out", default="gpu_bench.md", help="the tables, also written here")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, CPU: a check of every code path")
    args = parser.parse_args()
    if args.smoke:
        device, shape, peak_sizes, peak_seconds = torch.device("cpu"), SMOKE, (128, 256), 0.05
        args.batch, args.steps, args.tokens = 4, 2, 8
        requests, server_tokens, server_batch = 6, 8, 4
    elif torch.cuda.is_available():
        device, shape, peak_sizes, peak_seconds = torch.device("cuda"), GPT2_124M, (1024, 2048, 4096, 8192), 1.0
        requests, server_tokens, server_batch = 64, 128, 32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        raise SystemExit("error: no CUDA GPU here; run with --smoke to check the script on a CPU")
    dtype = torch.bfloat16
    report = Report(Path(args.out))
    began = time.perf_counter()

    def autocast():
        return torch.autocast(device.type, dtype=dtype)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    peak = matmul_peak(device, dtype, sizes=peak_sizes, seconds=peak_seconds, use_cache=False)
    datasheet = next((tflops for key, tflops in DATASHEET_BF16_TFLOPS.items() if key in name), None)
    report(f"# bench/gpu.py: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    report(f"\nbf16 matmul peak measured {peak['flops'] / 1e12:.1f} TFLOP/s (best at {peak['size']}^2 of "
           f"{', '.join(peak['by_size'])}); datasheet {datasheet or 'unknown'} TFLOP/s")

    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).to(device)
    optimizer = torch.optim.AdamW(param_groups(model), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    x, y = torch.randint(0, shape["vocab_size"], (2, args.batch, shape["block_size"]), device=device)
    tokens_per_step, flops = args.batch * shape["block_size"], flops_per_token(model)
    report(f"\n{shape['n_layer']} layers x {shape['n_embd']}, context {shape['block_size']}, vocab "
           f"{shape['vocab_size']}, {model.num_params() / 1e6:.1f} M parameters, batch {args.batch}, "
           f"{flops / 1e6:.0f} MFLOP per token, bf16 autocast, fused AdamW\n")
    report("| training | NaN guard | median step ms | tokens/s | TFLOP/s | MFU (measured peak) | MFU (datasheet) | "
           "first step s |")
    report("| --- | --- | --- | --- | --- | --- | --- | --- |")
    variants = [("eager", model, "sync"), ("eager", model, "device")]
    if not args.no_compile:
        compiled = torch.compile(model)
        variants += [("torch.compile", compiled, "sync"), ("torch.compile", compiled, "device")]
    first_seen = set()
    for variant, runnable, guard in variants:
        start = time.perf_counter()
        train_steps(runnable, optimizer, x, y, autocast, device, steps=1, guard=guard)
        first = time.perf_counter() - start  # for compile's first variant: the compilation
        median = statistics.median(train_steps(runnable, optimizer, x, y, autocast, device, steps=args.steps + 2,
                                               guard=guard)[2:])
        tflops = flops * tokens_per_step / median / 1e12
        measured_peak = max(peak["flops"] / 1e12, tflops)  # MFU <= 1: a peak below the achieved rate was low
        mfu_datasheet = f"{min(1.0, tflops / datasheet):.1%}" if datasheet else "-"
        report(f"| {variant} | {'per-step sync' if guard == 'sync' else 'on device'} | {1000 * median:.1f} | "
               f"{tokens_per_step / median:,.0f} | {tflops:.1f} | {tflops / measured_peak:.1%} | {mfu_datasheet} | "
               f"{first:.1f}{'' if variant not in first_seen else ' (compiled already)'} |")
        first_seen.add(variant)
    if device.type == "cuda":
        report(f"\npeak memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

    # the device guard keeps NaN out of the weights: poison one step and look
    before = [p.detach().clone() for p in model.parameters()]
    train_steps(model, optimizer, x, y, autocast, device, steps=1, guard="device", poison=0)
    intact = all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    report(f"\nNaN guard on device: a step with a NaN loss left the weights {'unchanged' if intact else 'CHANGED'}")
    if not intact:
        sys.exit(1)

    generator = prepare_for_inference(model.eval(), dtype)  # bf16 weights, eager, KV cache
    report(f"\n| generation, KV cache, greedy, bf16 weights, {args.tokens} new tokens | tokens/s | ms per step |")
    report("| --- | --- | --- |")
    for batch in (1, 32):
        seconds = generation_seconds(generator, batch, 12, args.tokens, shape["vocab_size"], device)
        report(f"| batch {batch} | {batch * args.tokens / seconds:,.0f} | {1000 * seconds / args.tokens:.2f} |")
    rate, mean_batch = engine_tokens_per_s(generator, requests=requests, tokens=server_tokens, max_batch=server_batch,
                                           vocab=shape["vocab_size"])
    report(f"\nserving engine: {requests} concurrent requests x {server_tokens} new tokens, max_batch_size "
           f"{server_batch}: {rate:,.0f} tokens/s (mean batch {mean_batch:.1f})")
    report(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
