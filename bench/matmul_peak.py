"""This machine's matmul peak in fp32 and bf16 (GFLOP/s), the denominator of CPU MFU.

    .venv/bin/python bench/matmul_peak.py [--size 2048] [--repeats 5]
"""

import argparse
import time

import torch


def peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for dtype in (torch.float32, torch.bfloat16):
        repeats = args.repeats if dtype == torch.float32 else 1  # emulated bf16 can take minutes
        print(f"{str(dtype):16s} {peak(dtype, args.size, repeats):8.1f} GFLOP/s at {args.size}^2")
