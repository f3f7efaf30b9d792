"""Lightning training loop against a bare PyTorch loop: same model, data, batch, precision,
optimizer and schedule; runs interleaved A B A B and reports medians of tokens/s.

    .venv/bin/python bench/harness_overhead.py [--steps 200] [--repeats 3] [config overrides...]
    .venv/bin/python bench/harness_overhead.py --steps 12 model.n_layer=6 model.n_head=6 \
        model.n_embd=384 model.block_size=256 batch_size=16      # nanoGPT's Shakespeare shape

The Lightning side is our LanguageModel and TokenDataModule with the default
experiment's logging (CSV logger, train loss every step, LR monitor) and no progress bar
or validation, so what is measured is the cost of the loop itself.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
from bare_loop import make_optimizer, train_steps
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from lightning_llm.config import CONF_DIR, to_dataclass
from lightning_llm.model import GPT, GPTConfig
from lightning_llm.stages.prepare import prepared_data
from lightning_llm.training.datamodule import RandomWindows, TokenDataModule
from lightning_llm.training.module import LanguageModel
from lightning_llm.training.optim import warmup_cosine

LR, WARMUP = 6e-3, 100


def bare(data, config: GPTConfig, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = GPT(config)
    stream = iter(RandomWindows(data.tokens("train"), config.block_size, batch, seed=0))
    seconds = train_steps(model, make_optimizer(model, LR), stream, steps, WARMUP)
    return steps * batch * config.block_size / seconds


class StepClock(pl.Callback):
    """Times the training loop only, from the first batch to the last."""

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 0 and not hasattr(self, "start"):
            self.start = time.perf_counter()

    def on_train_end(self, trainer, *args):
        self.seconds = time.perf_counter() - self.start


def lightning(data, config: GPTConfig, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    optimizer = functools.partial(torch.optim.AdamW, lr=LR, betas=(0.9, 0.99), weight_decay=0.1)
    module = LanguageModel(config.to_dict(), data.tokenizer_path.read_text(), optimizer=optimizer,
                           scheduler=functools.partial(warmup_cosine, total_steps=steps, warmup_steps=WARMUP))
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps,
                             limit_val_batches=0, log_every_n_steps=10, gradient_clip_val=1.0,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                             logger=CSVLogger(run_dir, name="", version=""),
                             callbacks=[clock, LearningRateMonitor(logging_interval="step")])
        trainer.fit(module, datamodule=TokenDataModule(data, block_size=config.block_size, batch_size=batch, seed=0))
    return steps * batch * config.block_size / clock.seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. model.n_layer=6")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="bench"):
        cfg = compose(config_name="train", overrides=args.overrides)
    data = prepared_data(cfg)
    config = to_dataclass(GPTConfig, cfg.model, "model", vocab_size=data.meta["vocab_size"])
    results = {"bare PyTorch": [], "Lightning": []}
    for _ in range(args.repeats):
        results["bare PyTorch"].append(bare(data, config, cfg.batch_size, args.steps))
        results["Lightning"].append(lightning(data, config, cfg.batch_size, args.steps))
    medians = {name: statistics.median(v) for name, v in results.items()}
    print(f"model {config.n_layer}x{config.n_embd}, block {config.block_size}, batch {cfg.batch_size}, "
          f"fp32, {args.steps} steps x {args.repeats} interleaved runs, torch {torch.__version__}")
    for name, value in medians.items():
        runs = ", ".join(f"{v:,.0f}" for v in results[name])
        print(f"{name:14s} median {value:8,.0f} tokens/s   (runs: {runs})")
    print(f"Lightning / bare: {medians['Lightning'] / medians['bare PyTorch']:.3f}")
