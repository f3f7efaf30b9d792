"""`llm serve registry=<name>` switching versions under load: how long a promotion takes to reach
the server, what the clients' latency does meanwhile, whether any request fails, and whether the
server's memory stays flat over repeated switches (a replaced version must be freed).

    .venv/bin/python bench/serve_registry.py [--clients 4] [--switches 6] [--n-layer 8 --n-embd 512]

Two random models of the given shape (speed does not depend on the weights; the default is about
25M parameters, 100 MB in fp32) and the char tokenizer of the built-in corpus's text go into a
registry under a temporary output root as v1 and v2; a server follows it (serve.registry_poll 2 s).
--clients threads send completions (streamed and not, alternately; 16 tokens, sampled: never from
the cache) while the live version is switched --switches times with `llm registry promote
version=...`. Reported: per switch, seconds from registry.json's change to /health naming the new
version, and the server's RSS once the old version drained; request latency p50/p95/max within a
second of a switch and away from switches; failed requests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from tokenizers import Tokenizer

from lightning_llm.data.tokenizer import TokenizerConfig, train_tokenizer
from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import new_manifest, save_artifact

LLM = [sys.executable, "-m", "lightning_llm.cli"]
PROMPTS = ["ROMEO:", "JULIET: O Romeo", "HAMLET: To be", "KING LEAR: Blow", "OTHELLO: Soft you", "PORTIA: The"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--n-layer", type=int, default=8)
    parser.add_argument("--n-embd", type=int, default=512)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds between switches")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-serve-registry-"))
    env = {**os.environ, "LLM_OUTPUT_ROOT": str(root), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    tokenizer = train_tokenizer(TokenizerConfig(kind="char", vocab_size=0), ["".join(PROMPTS) + " abc"]).to_str()
    config = GPTConfig(vocab_size=Tokenizer.from_str(tokenizer).get_vocab_size(), block_size=256,
                       n_layer=args.n_layer, n_head=8, n_embd=args.n_embd)

    def llm(*words: str) -> None:
        subprocess.run(LLM + list(words), env=env, check=True, capture_output=True)

    for seed in (1, 2):
        torch.manual_seed(seed)
        save_artifact(GPT(config), tokenizer, root / f"m{seed}", manifest=new_manifest(produced_by="bench",
                                                                                     tokenizer_json=tokenizer))
        llm("registry", "promote", "name=bench", f"source={root / f'm{seed}'}", "reason=bench")
    llm("registry", "promote", "name=bench", "version=v1", "reason=bench")
    log_path = root / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(LLM + ["serve", "registry=bench", "serve.port=0", "serve.cache_size=0", "device=cpu"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not (found := re.search(r"serving \S+ at (http://[\d.]+:\d+)/v1", log_path.read_text())):
            if proc.poll() is not None:
                raise SystemExit(log_path.read_text())
            time.sleep(0.1)
        url = found.group(1)
        done: list[tuple[float, float]] = []  # (finished at, latency)
        failures: list[str] = []
        stop = threading.Event()

        def client(worker: int) -> None:
            with httpx.Client(timeout=120) as session:
                i = 0
                while not stop.is_set():
                    i += 1
                    body = {"model": "bench", "prompt": PROMPTS[(worker + i) % len(PROMPTS)], "max_tokens": 16,
                            "stream": i % 2 == 0}
                    start = time.perf_counter()
                    try:
                        answer = session.post(url + "/v1/completions", json=body)
                        assert answer.status_code == 200 and (not body["stream"] or "[DONE]" in answer.text), \
                            answer.text[:200]
                        done.append((time.time(), time.perf_counter() - start))
                    except Exception as err:  # noqa: BLE001 - counted and shown
                        failures.append(f"{type(err).__name__}: {err}")

        def rss_mib() -> int:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(status.split("VmRSS:")[1].split()[0]) // 1024

        threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(args.settle)
        rows, switches, live = [], [], "v1"
        print(f"server RSS before the switches: {rss_mib()} MiB", flush=True)
        for k in range(args.switches):
            live = "v2" if live == "v1" else "v1"
            llm("registry", "promote", "name=bench", f"version={live}", f"reason=switch{k}")
            changed = (root / "registry" / "bench" / "registry.json").stat().st_mtime
            while httpx.get(url + "/health").json()["version"] != live:
                time.sleep(0.02)
            seconds = time.time() - changed
            switches.append((changed, seconds))
            time.sleep(args.settle)
            rows.append((k + 1, live, seconds, rss_mib()))
        print("\n".join(ln for ln in log_path.read_text().splitlines() if "registry bench:" in ln), flush=True)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(root, ignore_errors=True)
    near = [lat for at, lat in done if any(s <= at <= s + d + 1 for s, d in switches)]
    away = [lat for at, lat in done if all(not s - 1 <= at <= s + d + 2 for s, d in switches)]
    print("| switch | to | seconds from registry.json to /health | server RSS after (MiB) |\n|---|---|---|---|")
    for k, version, seconds, rss in rows:
        print(f"| {k} | {version} | {seconds:.2f} | {rss} |")
    print(f"\n{len(done)} requests, {len(failures)} failed {failures[:3]}")
    print("| requests | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for name, values in (("away from switches", away), ("within 1 s of a switch", near)):
        if values:
            print(f"| {name} | {len(values)} | {1000 * percentile(values, 0.5):.0f} | "
                  f"{1000 * percentile(values, 0.95):.0f} | {1000 * max(values):.0f} |")


if __name__ == "__main__":
    main()
