"""Callbacks that write the run dir's human-readable artifacts (rank zero only)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer

from lightning_llm.data.tokenizer import EOT


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
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        series: dict[str, tuple[list, list]] = {"train/loss": ([], []), "val/loss": ([], [])}
        with open(self.metrics) as f:
            for row in csv.DictReader(f):
                for name, (steps, values) in series.items():
                    if row.get(name):
                        steps.append(int(row["step"]))
                        values.append(float(row[name]))
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, (steps, values) in series.items():
            if steps:
                ax.plot(steps, values, label=name, marker="o" if name.startswith("val") else None,
                        linewidth=1 if name.startswith("train") else 2)
        ax.set(xlabel="step", ylabel="loss (nats per token)", title="loss")
        ax.grid(alpha=0.3)
        ax.legend()
        self.png.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.png.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, self.png)


class Samples(pl.Callback):
    """Writes samples.md at the end of training: a few continuations of fixed prompts."""

    def __init__(self, run_dir: str, prompts: list[str], max_new_tokens: int = 300, temperature: float = 0.8,
                 top_k: int | None = 50, seed: int = 0):
        self.path = Path(run_dir) / "samples.md"
        self.prompts, self.max_new_tokens = prompts, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed

    @rank_zero_only
    def on_train_end(self, trainer, pl_module):
        tokenizer = Tokenizer.from_str(pl_module.tokenizer_json)
        model = pl_module.model
        was_training = model.training
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        lines = [f"# Samples at step {trainer.global_step}", "",
                 f"temperature {self.temperature}, top-k {self.top_k}, {self.max_new_tokens} new tokens, seed {self.seed}", ""]
        for prompt in self.prompts:
            ids = tokenizer.encode(prompt).ids if prompt else [tokenizer.token_to_id(EOT)]
            idx = torch.tensor([ids], device=pl_module.device)
            out = model.generate(idx, self.max_new_tokens, self.temperature, self.top_k, generator=generator)
            text = tokenizer.decode(out[0].tolist(), skip_special_tokens=False).replace(EOT, "\n\n")
            lines += [f"## Prompt: {prompt!r}", "", "```text", text.strip("\n"), "```", ""]
        model.train(was_training)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, self.path)
