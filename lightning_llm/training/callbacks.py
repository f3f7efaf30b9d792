"""Callbacks that write the run dir's human-readable artifacts (rank zero only)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer

from lightning_llm.artifacts import pyplot, save_figure, write_text
from lightning_llm.data.tokenizer import decode_text, prompt_ids
from lightning_llm.model import flops_per_token


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a square matmul on this device: the denominator of MFU where no datasheet figure is known.
    Timed in nn.Linear's layout, the one the model runs (a plain bf16 `a @ b` takes a far slower
    kernel on CPUs without native bf16: docs/benchmarks.md)."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    F.linear(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    repeats, start = 0, time.perf_counter()
    while repeats < 1 or time.perf_counter() - start < seconds:
        F.linear(a, b)
        repeats += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * 2 * size**3 / (time.perf_counter() - start)


class Throughput(pl.Callback):
    """Logs tokens/s (all ranks) and MFU over each logging interval, counting training time only:
    the time spent in validation and checkpointing is left out. The peak is peak_tflops when given,
    the datasheet figure Lightning knows for a GPU, or else a matmul measured at the start."""

    def __init__(self, peak_tflops: float | None = None):
        self.peak_tflops = peak_tflops
        self.peak_flops = self.flops_per_token = 0.0
        self.last: float | None = None
        self.elapsed = self.tokens = 0.0

    def on_fit_start(self, trainer, pl_module):
        self.flops_per_token = flops_per_token(pl_module.model)
        precision = str(trainer.precision)
        dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
        device = pl_module.device
        if self.peak_tflops:
            self.peak_flops = self.peak_tflops * 1e12
        else:
            self.peak_flops = (get_available_flops(device, dtype) if device.type == "cuda" else None) \
                or measure_matmul_peak(device, dtype)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.last is None:  # the first batch, or the first after a validation
            self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tokens += batch[0].numel()
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if stepped and trainer.global_step % trainer.log_every_n_steps == 0:
            self.stop_clock(pl_module)  # this callback's only device sync: on logged steps
            self.last = time.perf_counter()
            if self.elapsed > 0:
                per_device = self.tokens / self.elapsed
                pl_module.log_dict({"perf/tokens_per_s": per_device * trainer.world_size,
                                    "perf/mfu": per_device * self.flops_per_token / self.peak_flops},
                                   prog_bar=True, rank_zero_only=True)
            self.elapsed = self.tokens = 0.0

    def on_validation_start(self, trainer, pl_module):
        if self.last is not None:
            self.stop_clock(pl_module)
        self.last = None

    def stop_clock(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.elapsed += time.perf_counter() - self.last


class LossPlot(pl.Callback):
    """Redraws plots/loss.png from metrics.csv after every validation, so it survives a resume."""

    def __init__(self, run_dir: str):
        self.metrics = Path(run_dir) / "metrics.csv"
        self.png = Path(run_dir) / "plots" / "loss.png"

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        for logger in trainer.loggers:
            logger.save()
        self.draw()

    def draw(self):
        if not self.metrics.exists():
            return
        series: dict[str, tuple[list, list]] = {"train/loss": ([], []), "val/loss": ([], [])}
        with open(self.metrics) as f:
            for row in csv.DictReader(f):
                for name, (steps, values) in series.items():
                    if row.get(name):
                        steps.append(int(row["step"]))
                        values.append(float(row[name]))
        fig, ax = pyplot().subplots(figsize=(7, 4))
        for name, (steps, values) in series.items():
            if steps:
                ax.plot(steps, values, label=name, marker="o" if name.startswith("val") else None,
                        linewidth=1 if name.startswith("train") else 2)
        ax.set(xlabel="step", ylabel="loss (nats per token)", title="loss")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, self.png, dpi=110, bbox_inches="tight")


class Samples(pl.Callback):
    """Keeps samples.md current: continuations of fixed prompts after every validation and at
    the end, with the same seed each time, so the file shows what the model has learned since."""

    def __init__(self, run_dir: str, prompts: list[str], max_new_tokens: int = 300, temperature: float = 0.8,
                 top_k: int | None = 50, seed: int = 0):
        self.path = Path(run_dir) / "samples.md"
        self.prompts, self.max_new_tokens = prompts, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.written_at: int | None = None

    def on_fit_start(self, trainer, pl_module):
        tokenizer = Tokenizer.from_str(pl_module.tokenizer_json)
        for prompt in self.prompts:  # a prompt the tokenizer cannot encode fails now, not at the first sample
            prompt_ids(tokenizer, prompt)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.written_at != trainer.global_step:
            self.write(trainer, pl_module)

    def write(self, trainer, pl_module):
        """Every rank generates (a sharded model's forward needs them all); rank zero writes."""
        step = trainer.global_step
        tokenizer = Tokenizer.from_str(pl_module.tokenizer_json)
        model = pl_module.model
        was_training = model.training
        model.eval()  # no dropout while sampling; restored below
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        lines = [f"# Samples at step {step}", "",
                 f"temperature {self.temperature}, top-k {self.top_k}, {self.max_new_tokens} new tokens, seed {self.seed}", ""]
        try:
            for prompt in self.prompts:
                idx = torch.tensor([prompt_ids(tokenizer, prompt)], device=pl_module.device)
                out = model.generate(idx, self.max_new_tokens, self.temperature, self.top_k, generator=generator)
                text = decode_text(tokenizer, out[0].tolist())
                lines += [f"## Prompt: {prompt!r}", "", "```text", text.strip("\n"), "```", ""]
        finally:
            model.train(was_training)
        self.written_at = step
        if trainer.is_global_zero:
            write_text(self.path, "\n".join(lines))
