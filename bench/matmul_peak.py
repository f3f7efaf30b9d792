"""This machine's matmul peak in fp32 and bf16 (GFLOP/s), the denominator of MFU: the best of
several sizes up to 4096, each timed for at least a second, in nn.Linear's layout, exactly as
the training progress bar's MFU takes it (lightning_llm/measured.py::matmul_peak, which caches
it per machine and dtype; this script always measures afresh).

    .venv/bin/python bench/matmul_peak.py [--sizes 512 1024 2048 4096] [--seconds 1]
"""

import argparse
import os

import torch

from lightning_llm.measured import machine, matmul_peak, native_bf16

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--seconds", type=float, default=1.0, help="at least this long per size")
    args = parser.parse_args()
    print(f"{machine('cpu')}, cpu capability {torch.backends.cpu.get_cpu_capability()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| dtype | " + " | ".join(f"{n}^2 GFLOP/s" for n in args.sizes) + " | peak |")
    print("| --- | " + " | ".join("---" for _ in args.sizes) + " | --- |")
    for dtype in (torch.float32, torch.bfloat16):
        if dtype == torch.bfloat16 and not native_bf16("cpu"):
            print("| torch.bfloat16 | emulated here (no AVX-512 BF16 / AMX): skipped, minutes per size |")
            continue
        peak = matmul_peak("cpu", dtype, sizes=args.sizes, seconds=args.seconds, use_cache=False)
        cells = " | ".join(f"{peak['by_size'][str(n)] / 1e9:.1f}" for n in args.sizes)
        print(f"| {dtype} | {cells} | **{peak['flops'] / 1e9:.1f}** at {peak['size']}^2 |")
