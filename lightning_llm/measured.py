"""Figures measured once per machine and kept: the matmul peak (the denominator of MFU) and
which precision runs a given model faster. Plain PyTorch, so the core may use it too.

The cache is one JSON file, `$LLM_CACHE_DIR/measured.json` (default
`~/.cache/lightning-llm/measured.json`), keyed by what the figure depends on: the machine
(CPU model and its bf16 flags, or the GPU's name), the torch version and thread count, and
the shape or dtype measured. A figure measured on one machine is never used on another;
delete the file to measure again. A corrupt file is ignored (and rewritten).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_llm.artifacts import write_json

PEAK_SIZES = (512, 1024, 2048, 4096)  # square matmuls; the peak is the best of them


def cache_file() -> Path:
    root = os.environ.get("LLM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "lightning-llm"
    return Path(root) / "measured.json"


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls run in hardware here: a CUDA GPU that supports bf16, or a CPU with
    AVX-512 BF16 or AMX (elsewhere torch emulates bf16, far slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def machine(device: torch.device | str = "cpu") -> str:
    """What a measured figure depends on, besides the shape: the chip, torch, the thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    else:
        chip = f"{cpu_model()} ({'native bf16' if native_bf16('cpu') else 'no native bf16'}, " \
               f"{torch.get_num_threads()} threads)"
    return f"{chip}, torch {torch.__version__}"


def _read() -> dict:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def lookup(kind: str, key: str):
    return _read().get(kind, {}).get(key)


def store(kind: str, key: str, value) -> None:
    """Add one figure (read, update, write whole: a concurrent writer may drop another's entry,
    which is then measured again; never a half-written file)."""
    data = _read()
    data.setdefault(kind, {})[key] = value
    try:
        write_json(cache_file(), data)
    except OSError:  # a read-only home: the figure is used now and measured again next time
        pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_best(fns: dict[str, Callable[[], object]], *, device: torch.device, rounds: int = 3,
                     warmup: int = 1) -> dict[str, float]:
    """Best seconds of one call of each function, timed in turns (A B A B ...) so that a shared
    machine's load hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int, seconds: float) -> float:
    """Best FLOP/s of a (size x size) matmul in nn.Linear's layout (the one the model runs),
    taking single calls for at least `seconds` in all."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    F.linear(a, b)  # warm-up: kernel choice, page faults
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        synchronize(device)
        start = time.perf_counter()
        F.linear(a, b)
        synchronize(device)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2 * size**3 / best


def matmul_peak(device: torch.device | str, dtype: torch.dtype, *, sizes=PEAK_SIZES, seconds: float = 1.0,
                use_cache: bool = True) -> dict:
    """This machine's matmul peak in `dtype`: the best of several sizes up to 4096, each timed for
    at least `seconds`, cached per machine and dtype. Returns {"flops", "size", "by_size"}."""
    device = torch.device(device)
    key = f"{machine(device)}, {dtype}, sizes {list(sizes)}, {seconds:g} s"
    if use_cache and (found := lookup("matmul_peak", key)):
        return found
    by_size = {str(n): matmul_flops(device, dtype, n, seconds) for n in sizes}
    size = max(by_size, key=by_size.get)
    result = {"flops": by_size[size], "size": int(size), "by_size": by_size, "measured": time.strftime("%Y-%m-%d")}
    if use_cache:
        store("matmul_peak", key, result)
    return result
