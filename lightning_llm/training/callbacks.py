"""Callbacks that write the run dir's human-readable artifacts (rank zero only)."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.image
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer

from lightning_llm.artifacts import pyplot, save_figure, write_text
from lightning_llm.data.tokenizer import decode_text, prompt_ids
from lightning_llm.measured import cache_file, matmul_peak
from lightning_llm.model import flops_per_token

log = logging.getLogger(__name__)


def measure_matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of this device's best square matmul, the denominator of MFU where no datasheet figure
    is known: the best of sizes 512 to 4096, each timed for at least a second, in nn.Linear's
    layout (the one the model runs), measured once per machine and dtype and cached
    (lightning_llm/measured.py). A single small matmul timed briefly (the earlier way) caught
    the machine at a random moment: MFU swung from 0.18 to 0.87 between two runs."""
    return matmul_peak(device, dtype)["flops"]


def model_flops_utilization(achieved_flops: float, peak_flops: float) -> tuple[float, float]:
    """(MFU, the peak it used): achieved over peak, never above 1. A measured peak below what the
    model achieved was measured at a bad moment: the achieved figure is then the better estimate
    of the peak, and takes its place."""
    if achieved_flops > peak_flops:
        log.warning("MFU: the model ran at %.3g FLOP/s, above the peak of %.3g: the peak is raised to it "
                    "(delete %s to measure it again)", achieved_flops, peak_flops, cache_file())
        peak_flops = achieved_flops
    return achieved_flops / peak_flops, peak_flops


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
                mfu, self.peak_flops = model_flops_utilization(per_device * self.flops_per_token, self.peak_flops)
                pl_module.log_dict({"perf/tokens_per_s": per_device * trainer.world_size, "perf/mfu": mfu},
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


class ValidateAtEnd(pl.Callback):
    """Every fit ends with a validation: when the last step is not a multiple of
    trainer.val_check_interval (a short run, trainer.max_steps=20 with validations every 500),
    Lightning would stop without one, and the run would have no val metric, no best checkpoint
    and no plot. Asking the trainer to stop at max_steps makes Lightning validate then, once:
    a step that validates anyway is not validated twice."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


def read_series(metrics_csv: Path, prefixes: tuple[str, ...] = ("train/loss", "val/loss", "lr-")) -> dict:
    """{column: (steps, values)} for the metrics.csv columns named or starting with `prefixes`."""
    series: dict[str, tuple[list, list]] = {}
    if not metrics_csv.exists():
        return series
    with open(metrics_csv) as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or () if c == "step" or c.startswith(prefixes)]
        for row in reader:
            for name in columns:
                if name != "step" and row.get(name) and row.get("step"):
                    steps, values = series.setdefault(name, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(row[name]))
    return series


def draw_loss(metrics_csv: Path, png: Path, *, title: str) -> None:
    """plots/loss.png: train and val loss against the step on top, the learning rate below."""
    series = read_series(metrics_csv)
    if not any(name in series for name in ("train/loss", "val/loss")):
        return
    rates: dict[str, tuple[list, list]] = {}
    for name, data in series.items():  # param groups on one schedule draw as one line
        if name.startswith("lr-") and data not in rates.values():
            rates[name] = data
    fig, axes = pyplot().subplots(2 if rates else 1, 1, figsize=(7, 5.5 if rates else 4), sharex=True,
                                  squeeze=False, gridspec_kw={"height_ratios": [3, 1.2]} if rates else None)
    ax = axes[0][0]
    for name in ("train/loss", "val/loss"):
        if name in series:
            steps, values = series[name]
            ax.plot(steps, values, label=name, marker="o" if name.startswith("val") else None,
                    linewidth=1 if name.startswith("train") else 2)
    ax.set(ylabel="loss (nats per token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    if rates:
        lr_ax = axes[1][0]
        for name, (steps, values) in rates.items():
            lr_ax.plot(steps, values, label=name.removeprefix("lr-"), linewidth=1)
        lr_ax.set(ylabel="learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        lr_ax.grid(alpha=0.3)
        if len(rates) > 1:
            lr_ax.legend()
    axes[-1][0].set_xlabel("step")
    save_figure(fig, png, dpi=110, bbox_inches="tight")


def run_name(run_dir: Path) -> str:
    """`<experiment>/<run dir name>`: the two folders under outputs/train/ that name a run."""
    run_dir = Path(run_dir).resolve()
    return f"{run_dir.parent.name}/{run_dir.name}"


def wandb_names(run_dir: Path, experiment: str) -> tuple[str, str]:
    """(name, group) of a run's W&B run: unique names from the run dir (its time and pid), and
    one group per multirun (Hydra's -m puts every job under one multirun_<time> folder)."""
    run_dir = Path(run_dir).resolve()
    if run_dir.parent.name.startswith("multirun_"):
        multirun = run_dir.parent.name
        return f"{experiment}-{multirun.removeprefix('multirun_')}-{run_dir.name}", f"{experiment}-{multirun}"
    return f"{experiment}-{run_dir.name}", experiment


class LossPlot(pl.Callback):
    """Redraws plots/loss.png from metrics.csv after every validation, so it survives a resume:
    the loss curves, the learning rate on a second panel, the run's name in the title."""

    def __init__(self, run_dir: str):
        self.metrics = Path(run_dir) / "metrics.csv"
        self.png = Path(run_dir) / "plots" / "loss.png"
        self.title = f"loss: {run_name(Path(run_dir))}"

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        for logger in trainer.loggers:
            logger.save()
        self.draw()
        if self.png.exists():
            log_image(trainer, "plots/loss", self.png)

    def draw(self):
        draw_loss(self.metrics, self.png, title=self.title)


def log_image(trainer, key: str, png: Path) -> None:
    """A PNG the run dir holds, also as a W&B image and a TensorBoard image, at this step."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(png)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            image = matplotlib.image.imread(png)  # H x W x 4 floats in [0, 1]
            logger.experiment.add_image(key, image[..., :3], trainer.global_step, dataformats="HWC")


def log_samples(trainer, rows: list[tuple[str, str]], markdown: str) -> None:
    """The samples as a W&B table (step, prompt, text) and as TensorBoard text (the Markdown of samples.md)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_text(key="samples", columns=["step", "prompt", "text"],
                            data=[[trainer.global_step, prompt, text] for prompt, text in rows],
                            step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("samples", markdown, trainer.global_step)


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
        rows = []
        try:
            for prompt in self.prompts:
                idx = torch.tensor([prompt_ids(tokenizer, prompt)], device=pl_module.device)
                out = model.generate(idx, self.max_new_tokens, self.temperature, self.top_k, generator=generator)
                text = decode_text(tokenizer, out[0].tolist())
                lines += [f"## Prompt: {prompt!r}", "", "```text", text.strip("\n"), "```", ""]
                rows.append((prompt, text))
        finally:
            model.train(was_training)
        self.written_at = step
        if trainer.is_global_zero:
            write_text(self.path, "\n".join(lines))
            log_samples(trainer, rows, "\n".join(lines))
