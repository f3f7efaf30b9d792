"""Which model shape learns most in a fixed wall-clock budget? A bare PyTorch loop over the
prepared default corpus, the same model, schedule and optimizer as `llm train`.

    .venv/bin/python bench/train_budget.py --budget 90 \
        --shape 4,128,64,16,6e-3 --shape 4,192,64,16,3e-3 --shape 4,128,64,16,6e-3,rope

Each --shape is n_layer,n_embd,block_size,batch_size,lr[,position]. Prints, per shape, the
steps run, tokens/s, GFLOP/s, and the val loss on the default val split's fixed windows.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bare_loop import make_optimizer, train_steps
from hydra import compose, initialize_config_dir

from lightning_llm.config import CONF_DIR
from lightning_llm.model import GPT, GPTConfig, flops_per_token
from lightning_llm.stages.prepare import prepared_data
from lightning_llm.training.datamodule import FixedWindows, RandomWindows


def run(data, n_layer, n_embd, block, batch, lr, position, budget, warmup=50):
    torch.manual_seed(0)
    vocab = data.meta["vocab_size"]
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=4, n_embd=n_embd,
                          position=position))
    stream = iter(RandomWindows(data.tokens("train"), block, batch, seed=0))
    # A timing probe at lr 0 sizes the schedule to the budget; then the real run.
    probe = train_steps(model, make_optimizer(model, 0.0), stream, 5, warmup)
    total = int(budget / (probe / 5))
    seconds = train_steps(model, make_optimizer(model, lr), stream, total, warmup)

    model.eval()
    val = FixedWindows(data.tokens("val"), block, 256)
    losses = []
    with torch.no_grad():
        for i in range(0, len(val), 64):
            xs, ys = zip(*(val[j] for j in range(i, min(i + 64, len(val)))))
            losses.append(model(torch.stack(xs), torch.stack(ys))[1].item())
    tokens_per_s = total * batch * block / seconds
    print(f"L{n_layer} E{n_embd} T{block} B{batch} lr {lr:g} {position:8s} {total:5d} steps in {seconds:4.0f} s "
          f"{tokens_per_s:7.0f} tok/s {flops_per_token(model) * tokens_per_s / 1e9:5.1f} GFLOP/s "
          f"val loss {np.mean(losses):.3f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90, help="seconds of training per shape")
    parser.add_argument("--shape", action="append", required=True)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="bench"):
        data = prepared_data(compose(config_name="prepare"))
    for shape in args.shape:
        parts = shape.split(",")
        run(data, int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), float(parts[4]),
            parts[5] if len(parts) > 5 else "learned", args.budget)
