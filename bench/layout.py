"""Weight layouts for decoding, timed: what lightning_llm/model/layout.py's rule stands on.

    .venv/bin/python bench/layout.py [--batches 1 8] [--threads 1 2] [--dtypes float32 bfloat16]

For every distinct linear-layer shape of the presets (6 x 384 nanoGPT, gpt2-124m with its
50,304-token head), the product of `batch` rows with the weight in each candidate layout:
nn.Linear's own, (in, out) contiguous, one slice of output features per thread computed as
one `bmm`, each slice stored (out, in) or (in, out), and oneDNN's packed weight (PackedLinear).
Each timing cycles through enough distinct copies (64 MiB at least) that the weights stream from
memory rather than cache; the candidates run in turns, best of 5. The table marks what lay_out
runs (the rule) against nn.Linear's layout and the fastest.
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn as nn

from lightning_llm.measured import interleaved_best, machine
from lightning_llm.model.layout import LAYOUTS, LaidOutLinear, PackedLinear, can_pack, lay_out

SHAPES = [(1152, 384), (384, 384), (1536, 384), (384, 1536), (2304, 768), (768, 768), (3072, 768), (768, 3072),
          (50304, 768)]
TIMED_BYTES = 64 * 2**20
PACKED = (0, "oneDNN packed")


def rule(out_features: int, in_features: int, *, dtype, batch: int) -> tuple[int, str]:
    """What lay_out runs for this product at torch's thread count, asked of lay_out itself on one
    layer of this shape: (groups, layout) of a LaidOutLinear, PACKED, or (1, "rows") for nn.Linear."""
    holder = nn.Module()
    holder.layer = nn.Linear(in_features, out_features, bias=False, dtype=dtype)
    layer = lay_out(holder).get("layer")
    if isinstance(layer, PackedLinear):
        layer = layer.single if batch == 1 else None  # single rows go to its LaidOutLinear, if it has one
        if layer is None:
            return PACKED
    return (layer.groups, layer.layout) if isinstance(layer, LaidOutLinear) else (1, "rows")


def time_shape(out_features: int, in_features: int, *, dtype, batch: int, threads: int) -> dict:
    copies = max(1, math.ceil(TIMED_BYTES / (out_features * in_features * torch.finfo(dtype).bits // 8)))
    x = torch.randn(batch, in_features).to(dtype)
    groups = [1] + ([threads] if threads > 1 and out_features % threads == 0 else [])
    layers = {(g, layout): [LaidOutLinear(torch.randn(out_features, in_features).to(dtype), None, groups=g,
                                          layout=layout) for _ in range(copies)]
              for g in groups for layout in LAYOUTS}
    if can_pack(dtype):
        layers[PACKED] = [PackedLinear(torch.randn(out_features, in_features).to(dtype), None) for _ in range(copies)]

    def run(modules):
        for module in modules:
            module(x)

    best = interleaved_best({key: (lambda m=m: run(m)) for key, m in layers.items()}, device=torch.device("cpu"),
                            rounds=5)
    return {key: seconds / copies for key, seconds in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    args = parser.parse_args()
    print(f"{machine('cpu')}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| dtype | threads | batch | weight (out, in) | nn.Linear us | (in, out) us | slices x (out, in) us | "
          "slices x (in, out) us | oneDNN packed us | rule | rule vs nn.Linear | rule vs fastest |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for threads in sorted(set(args.threads)):
            torch.set_num_threads(threads)
            for batch in args.batches:
                for out_features, in_features in SHAPES:
                    us = {k: v * 1e6 for k, v in time_shape(out_features, in_features, dtype=dtype, batch=batch,
                                                             threads=threads).items()}
                    chosen = rule(out_features, in_features, dtype=dtype, batch=batch)
                    cells = [f"{us[key]:.0f}" if key in us else "-"
                             for key in [(1, "rows"), (1, "columns"), (threads, "rows"), (threads, "columns"), PACKED]]
                    if threads == 1:
                        cells[2:4] = ["-", "-"]
                    name = chosen[1] if chosen == PACKED else f"{chosen[0]} x {chosen[1]}"
                    print(f"| {dtype_name} | {threads} | {batch} | ({out_features}, {in_features}) | "
                          + " | ".join(cells) + f" | {name} | {us[(1, 'rows')] / us[chosen]:.2f}x | "
                          f"{min(us.values()) / us[chosen]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
