"""Serving throughput and latency: `llm serve` under 1, 8 and 32 concurrent streaming clients,
with batching on and off, against in-process generation; and the response cache.

    .venv/bin/python bench/serve.py [--ckpt MODEL | --shape nanogpt] [--dtype bfloat16] [--requests-per-client 4]
        [--max-tokens 56]

A bounded load generator: every client sends --requests-per-client streamed completions one
after another (prompt "ROMEO:", temperature 0.8, top_k 50, no seed: never from the cache),
against a server it starts itself on 127.0.0.1 (a free port) and stops; a phase also ends
after --phase-timeout seconds. Reported per phase: aggregate generated tokens/s (all tokens
over the phase's wall clock, counted by the server's `usage`), time to first token and
request latency p50/p95/p99, errors. Baseline: the in-process path of `llm generate`
(model.generate, batch 1, the same sampling) against one streamed request to the server as
shipped (`serve.stream_interval` 0.02 s: tokens that come within it share an SSE chunk) and to
a second server that sends every token as its own chunk (`serve.stream_interval=0`), run in
turn --repeats times (the machine is shared: ratios of medians from interleaved runs). Besides
tokens/s, each run's CPU time per generated token: the in-process thread's, and the whole
server process's (engine and HTTP, from /proc/<pid>/task/*/schedstat), which other users of the cores
change far less than they change wall-clock time. Cache: one deterministic request, then
--cache-hits more of it; latency p50/p95/p99 of the hits.

Without --ckpt the model is the default shape (conf/model/gpt-micro.yaml; `--shape nanogpt`: its
options at 6 x 384, context 256) with random weights
and the default tokenizer (`llm prepare`'s, reused from outputs/data): speed does not depend
on the weights. Its <|endoftext|> is made unreachable (a logit 50 below the rest), so that
every completion runs its full --max-tokens as a trained model's do; the token counts are the
server's own in any case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

HOST = "127.0.0.1"  # the only address this load generator ever targets
PROMPT = "ROMEO:"


NANOGPT = dict(n_layer=6, n_head=6, n_embd=384, block_size=256)  # nanoGPT's Shakespeare-char shape


def default_model(folder: Path, shape_name: str = "gpt-micro") -> Path:
    """gpt-micro (or, with shape_name "nanogpt", its options at nanoGPT's 6 x 384 size) with random
    weights and the default experiment's tokenizer."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lightning_llm.config import CONF_DIR
    from lightning_llm.data.tokenizer import EOT
    from lightning_llm.model.gpt import GPT, GPTConfig
    from lightning_llm.model.io import new_manifest, save_artifact
    from lightning_llm.stages.prepare import prepared_data

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="bench"):
        cfg = compose(config_name="train")
    tokenizer_json = prepared_data(cfg).tokenizer_path.read_text()
    from tokenizers import Tokenizer

    shape = {**OmegaConf.to_container(cfg.model, resolve=True), **(NANOGPT if shape_name == "nanogpt" else {})}
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), **shape))
    with torch.no_grad():  # <|endoftext|> out of reach, so every completion runs its full length
        model.norm_f.weight[0], model.norm_f.bias[0] = 0.0, 1.0  # the final features' first component: 1
        model.lm_head.weight[:, 0] = 0.0  # (tied to the embedding)
        model.lm_head.weight[tokenizer.token_to_id(EOT), 0] = -50.0
    return save_artifact(model, tokenizer_json, folder / f"{shape_name}-random",
                         manifest=new_manifest(produced_by="bench/serve.py (random weights)",
                                               tokenizer_json=tokenizer_json))


class InProcess:
    """`llm generate`'s path in this process: model.generate at batch 1, the same sampling."""

    def __init__(self, model_dir: Path, dtype: str):
        from lightning_llm.data.tokenizer import encode_prompt
        from lightning_llm.model.generation import DTYPES, prepare_for_inference
        from lightning_llm.model.io import load_artifact

        self.artifact = load_artifact(model_dir)
        prepare_for_inference(self.artifact.model, DTYPES[dtype])  # as `llm generate` and the server run it
        self.idx = torch.tensor([encode_prompt(self.artifact.tokenizer, PROMPT)])
        self.runs = 0

    def run(self, max_tokens: int) -> tuple[float, float, int, float]:
        """(tokens/s, CPU seconds per token of this thread (torch's own threads are not counted,
        so compare with --threads 1), tokens)."""
        self.runs += 1
        generator = torch.Generator().manual_seed(self.runs)
        start, cpu = time.perf_counter(), time.thread_time()
        self.artifact.model.generate(self.idx, max_tokens, 0.8, 50, generator=generator)
        return max_tokens / (time.perf_counter() - start), (time.thread_time() - cpu) / max_tokens, max_tokens, 0.0


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds a process has run: (all its threads, its main thread), from the scheduler's
    nanosecond counters (/proc/<pid>/task/*/schedstat; Linux only, NaN elsewhere). The
    server's main thread runs the event loop: the HTTP side."""
    def seconds(tid: str) -> float:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9

    try:
        total = 0.0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                total += seconds(tid)
            except OSError:  # a thread that just ended
                pass
        return total, seconds(str(pid))
    except OSError:
        return float("nan"), float("nan")


def start_server(model_dir: Path, log: Path, *overrides: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "lightning_llm.cli", "serve", f"ckpt={model_dir}",
                             f"serve.host={HOST}", "serve.port=0", *overrides],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = re.search(r"serving \S+ at (http://127\.0\.0\.1:\d+)/v1", log.read_text())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"llm serve exited:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"llm serve did not start:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def one_request(client: httpx.AsyncClient, url: str, max_tokens: int) -> dict:
    """One streamed completion. The client shares the machine's cores with the server, so it
    parses only what it measures: the first event (time to first token), errors, the usage."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "top_k": 50, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as answer:
        if answer.status_code != 200:
            await answer.aread()
            return {"error": answer.status_code}
        async for line in answer.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if first is None:
                first = time.perf_counter() - start
            if line.startswith('data: {"error"'):
                return {"error": json.loads(line[6:])["error"]["code"]}
            if '"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return {"ttft": first, "latency": time.perf_counter() - start, "tokens": tokens}


async def phase(url: str, *, clients: int, requests_per_client: int, max_tokens: int, timeout: float) -> dict:
    """`clients` concurrent clients, each sending its requests one after another."""
    results: list[dict] = []

    async def client_loop(client: httpx.AsyncClient):
        for _ in range(requests_per_client):
            try:
                results.append(await one_request(client, url, max_tokens))
            except httpx.HTTPError as err:
                results.append({"error": type(err).__name__})

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client_loop(client) for _ in range(clients))), timeout)
        except asyncio.TimeoutError:
            pass
        wall = time.perf_counter() - start
    done = [r for r in results if "error" not in r]
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(done),
            "tokens": sum(r["tokens"] for r in done), "wall": wall,
            "tokens_per_s": sum(r["tokens"] for r in done) / wall,
            "ttft": percentiles([r["ttft"] for r in done if r["ttft"] is not None]),
            "latency": percentiles([r["latency"] for r in done])}


async def single_stream(client: httpx.AsyncClient, server: tuple[subprocess.Popen, str],
                        max_tokens: int) -> tuple[float, float, int, float]:
    """(tokens/s, server CPU seconds per token, tokens, the HTTP side's CPU seconds per token) of
    one streamed request, from sending it to its last byte."""
    proc, url = server
    cpu = process_cpu(proc.pid)
    result = await one_request(client, url, max_tokens)
    if "error" in result:
        raise SystemExit(f"the server answered {result['error']}")
    tokens, after = result["tokens"], process_cpu(proc.pid)
    return (tokens / result["latency"], (after[0] - cpu[0]) / max(1, tokens), tokens,
            (after[1] - cpu[1]) / max(1, tokens))


async def interleaved(local: InProcess, servers: list[tuple[subprocess.Popen, str]], max_tokens: int,
                      repeats: int) -> list[list[tuple[float, float]]]:
    """Per run: (tokens/s, CPU s per token) in process, then of one streaming client of each
    server, in turn: the machine is shared."""
    async with httpx.AsyncClient(timeout=120) as client:
        for server in servers:
            await single_stream(client, server, max_tokens)  # the connection is open and warm
        runs = []
        for _ in range(repeats):
            runs.append([local.run(max_tokens)] + [await single_stream(client, server, max_tokens)
                                                   for server in servers])
        return runs


async def cache_hits(url: str, n: int) -> dict:
    body = {"prompt": PROMPT, "max_tokens": 32, "temperature": 0}
    async with httpx.AsyncClient() as client:
        first = await client.post(url + "/v1/completions", json=body)
        assert first.headers["x-cache"] == "miss", first.headers
        times = []
        for _ in range(n):
            start = time.perf_counter()
            answer = await client.post(url + "/v1/completions", json=body)
            times.append(time.perf_counter() - start)
            assert answer.headers["x-cache"] == "hit"
    return percentiles(times)


def percentiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"p50": values[0] if values else float("nan"), "p95": float("nan"), "p99": float("nan")}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p95": cuts[94], "p99": cuts[98]}


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="a model folder or run dir (default: gpt-micro, random weights)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=56, help="per request (the default model's context is 64)")
    parser.add_argument("--phase-timeout", type=float, default=300.0, help="seconds; a phase stops by itself then")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved in-process and single-stream runs")
    parser.add_argument("--cache-hits", type=int, default=200)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch threads here and in the server (default: torch's)")
    parser.add_argument("--shape", choices=["gpt-micro", "nanogpt"], default="gpt-micro",
                        help="without --ckpt: the random model's size (nanogpt: 6 x 384, context 256)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the weights here and in the servers: one dtype, so the ratios compare paths, not dtypes")
    args = parser.parse_args()
    threads = []
    if args.threads:
        torch.set_num_threads(args.threads)
        threads = [f"serve.threads={args.threads}"]

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.ckpt or default_model(tmp, args.shape)
        local = InProcess(model_dir, args.dtype)
        local.run(args.max_tokens)  # warm-up
        rows, hits, runs = [], None, []
        for batching in (True, False):
            common = (f"serve.max_batch_size={args.max_batch_size}", "serve.max_queue=256",
                      f"serve.max_tokens={args.max_tokens}", f"serve.dtype={args.dtype}", *threads)
            server = start_server(model_dir, tmp / "serve.log", f"serve.batching={str(batching).lower()}", *common)
            proc, url = server
            every = None
            try:
                asyncio.run(phase(url, clients=1, requests_per_client=2, max_tokens=args.max_tokens,
                                  timeout=args.phase_timeout))  # warm the HTTP path
                if batching:  # for the single-stream comparison only: the same server sending every token at once
                    every = start_server(model_dir, tmp / "every.log", "serve.stream_interval=0", *common)
                    runs = asyncio.run(interleaved(local, [server, every], args.max_tokens, args.repeats))
                    stop_server(every[0])
                    every = None
                for clients in args.concurrency:
                    result = asyncio.run(phase(url, clients=clients, requests_per_client=args.requests_per_client,
                                               max_tokens=args.max_tokens, timeout=args.phase_timeout))
                    rows.append({"batching": batching, **result})
                if batching:
                    hits = asyncio.run(cache_hits(url, args.cache_hits))
            finally:
                stop_server(proc)
                if every is not None:
                    stop_server(every[0])

    print(f"\nmodel: {args.ckpt or args.shape + ', random weights'}, {args.dtype}; {args.max_tokens} new tokens per request, "
          f"prompt {PROMPT!r}, temperature 0.8, top_k 50; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print(f"One request of {args.max_tokens} tokens, {args.repeats} interleaved runs, medians (CPU: the "
          "in-process thread's; the whole server process's, per generated token):\n")
    print("| path | tokens/s | vs in-process | CPU ms per token | of which HTTP (event loop) | tokens per request "
          "| per-run ratio to in-process |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    names = ["in process (`llm generate`'s model.generate, batch 1)",
             "one streaming client, `serve.stream_interval` 0.02 s (default)",
             "one streaming client, `serve.stream_interval=0` (a chunk per token)"]
    baseline = statistics.median(run[0][0] for run in runs)
    for i, name in enumerate(names):
        speed = statistics.median(run[i][0] for run in runs)
        cpu = statistics.median(run[i][1] for run in runs)
        http = f"{1000 * statistics.median(run[i][3] for run in runs):.2f}" if i else ""
        per_run = ", ".join(f"{run[i][0] / run[0][0]:.2f}" for run in runs)
        tokens = statistics.mean(run[i][2] for run in runs)
        print(f"| {name} | {speed:.0f} | {speed / baseline:.2f} | {1000 * cpu:.2f} | {http} | {tokens:.1f} "
              f"| {per_run if i else ''} |")
    print()
    print("| batching | clients | requests | errors | tokens/s | vs 1 client | TTFT p50 / p95 / p99 ms "
          "| latency p50 / p95 / p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        single = next(r for r in rows if r["batching"] == row["batching"] and r["clients"] == args.concurrency[0])
        t, lat = row["ttft"], row["latency"]
        print(f"| {'on' if row['batching'] else 'off'} | {row['clients']} | {row['requests']} | {row['errors']} "
              f"| {row['tokens_per_s']:.0f} | {row['tokens_per_s'] / single['tokens_per_s']:.2f}x "
              f"| {ms(t['p50'])} / {ms(t['p95'])} / {ms(t['p99'])} "
              f"| {ms(lat['p50'])} / {ms(lat['p95'])} / {ms(lat['p99'])} |")
    if hits:
        print(f"cache hits ({args.cache_hits}, non-streamed): p50 {ms(hits['p50'])} ms, p95 {ms(hits['p95'])} ms, "
              f"p99 {ms(hits['p99'])} ms")


if __name__ == "__main__":
    main()
