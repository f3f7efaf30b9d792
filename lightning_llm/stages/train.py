"""llm train: prepare data (cached), build the model and trainer from config, fit, record the run."""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lightning_llm.artifacts import write_json, write_text
from lightning_llm.config import check_targets, to_dataclass
from lightning_llm.data import PreparedData
from lightning_llm.errors import NothingToDo, UserError
from lightning_llm.measured import native_bf16
from lightning_llm.model import GPT, GPTConfig, flops_per_token
from lightning_llm.model.io import checkpoint_mismatch, load_artifact, new_manifest, read_checkpoint, save_artifact
from lightning_llm.stages.common import log, stage
from lightning_llm.stages.prepare import prepared_data
from lightning_llm.training.callbacks import wandb_names
from lightning_llm.training.datamodule import TokenDataModule
from lightning_llm.training.module import LanguageModel
from lightning_llm.training.precision import choose_precision, log_choice


def resolve_precision(precision: str, accelerator: str, *, model_config: GPTConfig | None = None,
                      batch_size: int | None = None, devices=1) -> str:
    """`auto` picks the faster of 32-true and bf16-mixed for this model on this chip, measured by
    timing a few training steps of each on first use (cached per machine and shape:
    lightning_llm/training/precision.py), where bf16 is native; 32-true where bf16 is emulated
    (an AVX2-only CPU), 16-mixed on a GPU without bf16. Without a model to time, or when several
    processes train (each would measure alone and might choose differently), a chip with native
    bf16 gets bf16-mixed."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu and not torch.cuda.is_bf16_supported():
        return "16-mixed"
    if not native_bf16(device):
        return "32-true"
    if model_config is None or batch_size is None or str(devices) != "1":
        log.info("precision=auto: bf16-mixed (native bf16; not measured: %s)",
                 "several processes" if model_config is not None else "no model shape given")
        return "bf16-mixed"
    choice, figures = choose_precision(model_config, batch_size, device)
    log_choice(choice, figures)
    return choice


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def find_resume_checkpoint(cfg: DictConfig, *, model_config: dict, tokenizer_json: str) -> Path | None:
    """The checkpoint this run continues, verified: ckpt_path= as given, or for resume=auto the
    newest intact checkpoint that fits this model config and tokenizer, looking first in the run
    dir this run writes to (hydra.run.dir=X), then in the experiment's other run dirs. Each
    checkpoint passed over is named with the reason; none is ever unpickled."""
    if cfg.resume not in (None, False, "auto"):
        raise UserError(f"resume must be auto or null, got {cfg.resume!r}")
    if cfg.resume == "auto" and cfg.ckpt_path:
        raise UserError("give either resume=auto or ckpt_path=..., not both")
    if cfg.ckpt_path:
        checkpoint = read_checkpoint(cfg.ckpt_path, what="ckpt_path")
        reason = checkpoint_mismatch(checkpoint, model_config=model_config, tokenizer_json=tokenizer_json)
        if reason:
            raise UserError(f"ckpt_path={cfg.ckpt_path} cannot be resumed: {reason}")
        check_not_finished(checkpoint, cfg, Path(cfg.ckpt_path))
        return Path(cfg.ckpt_path)
    if cfg.resume != "auto":
        return None
    this_run = Path(cfg.paths.run_dir).resolve()
    experiment_dir = Path(cfg.paths.output_root) / "train" / cfg.experiment_name
    names = ("last.ckpt", "periodic.ckpt", "best.ckpt")
    own = [this_run / "checkpoints" / name for name in names if (this_run / "checkpoints" / name).is_file()]
    others = sorted((p for name in names for p in experiment_dir.glob(f"*/checkpoints/{name}")
                     if p.parents[1].resolve() != this_run), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in sorted(own, key=lambda p: p.stat().st_mtime, reverse=True) + others:
        try:
            checkpoint = read_checkpoint(candidate)
        except UserError as err:
            log.warning("resume=auto: skipped %s: unreadable (%s)", candidate, str(err).split(" (", 1)[-1].rstrip(")"))
            continue
        reason = checkpoint_mismatch(checkpoint, model_config=model_config, tokenizer_json=tokenizer_json)
        if reason:
            log.warning("resume=auto: skipped %s: %s", candidate, reason)
            continue
        check_not_finished(checkpoint, cfg, candidate)
        log.info("resume=auto: resuming from %s (step %d)", candidate, checkpoint.get("global_step", 0))
        return candidate
    log.info("resume=auto: no checkpoint to continue under %s or %s, starting fresh", this_run, experiment_dir)
    return None


def check_not_finished(checkpoint: dict, cfg: DictConfig, path: Path) -> None:
    step = int(checkpoint.get("global_step", 0))
    if step >= cfg.trainer.max_steps:
        raise NothingToDo(f"{path} already reached step {step} of trainer.max_steps={cfg.trainer.max_steps}; "
                          "raise trainer.max_steps to train it further")


def continue_wandb_run(cfg: DictConfig, ckpt_path: Path | None) -> None:
    """A resumed run logs into the W&B run it continues, found beside the checkpoint's run."""
    if "wandb" not in cfg.logger or ckpt_path is None:
        return
    previous = ckpt_path.resolve().parents[1] / "wandb_run_id"
    if previous.is_file():
        with open_dict(cfg):
            cfg.logger.wandb.id = previous.read_text().strip()
            cfg.logger.wandb.resume = "allow"


def accumulation_for(cfg: DictConfig, block_size: int, world_size: int) -> int:
    """tokens_per_step fixes the optimizer's batch in tokens, whatever the devices: accumulate to reach it."""
    if cfg.tokens_per_step is None:
        return cfg.trainer.accumulate_grad_batches
    per_batch = cfg.batch_size * block_size * world_size
    if cfg.tokens_per_step % per_batch:
        raise UserError(f"tokens_per_step={cfg.tokens_per_step} is not a multiple of batch_size x block_size x "
                        f"devices = {per_batch}: choose a multiple, or set trainer.accumulate_grad_batches instead")
    accumulate = cfg.tokens_per_step // per_batch
    interval = cfg.trainer.val_check_interval
    if isinstance(interval, int) and interval % accumulate:
        raise UserError(f"tokens_per_step={cfg.tokens_per_step} means accumulating {accumulate} batches, and "
                        f"trainer.val_check_interval ({interval}) counts batches: make it a multiple of {accumulate}")
    return accumulate


def run_template(cfg: DictConfig):
    """The chat template chosen with template=<name> (conf/template/), the plain one where none is."""
    from lightning_llm.templates import DEFAULT_TEMPLATE, load_template, template_from_node

    node = cfg.get("template")
    return template_from_node(node) if node is not None else load_template(DEFAULT_TEMPLATE)


def check_run_config(cfg: DictConfig) -> None:
    """Refuse impossible settings before any data is prepared."""
    check_targets(cfg, "config", extra=tuple(cfg.get("allow_targets") or ()))
    run_template(cfg)
    to_dataclass(GPTConfig, cfg.model, "model", vocab_size=1)  # the shape; the vocabulary comes from the data
    for key in ("batch_size", "val_windows", "trainer.max_steps", "trainer.accumulate_grad_batches"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{key} must be a whole number of at least 1, got {value!r}")
    interval, accumulate = cfg.trainer.val_check_interval, cfg.trainer.accumulate_grad_batches
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0 \
            or (isinstance(interval, float) and interval > 1):
        raise UserError(f"trainer.val_check_interval must be a whole number of batches (at least 1) or a fraction "
                        f"in (0, 1], got {interval!r}")
    if isinstance(interval, int) and interval % accumulate:
        raise UserError(f"trainer.val_check_interval ({interval}) counts batches: make it a multiple of "
                        f"trainer.accumulate_grad_batches ({accumulate}) so checkpoints fall between steps")
    try:  # the optimizer's own checks (a negative lr, betas outside [0, 1)) before any work
        instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        raise UserError(f"optim.optimizer: {err}") from None


@dataclass
class Run:
    """Everything `fit` needs, built from config."""

    trainer: pl.Trainer
    module: LanguageModel
    datamodule: TokenDataModule
    data: PreparedData | None  # None: record() is given data_record instead (instruction fine-tuning)
    model_config: GPTConfig
    loggers: list
    precision: str


def build(cfg: DictConfig, *, extra_callbacks: tuple[pl.Callback, ...] = ()) -> tuple[Run, Path | None]:
    """Prepare the data (cached), then the model, the trainer and the checkpoint to resume."""
    check_run_config(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = prepared_data(cfg)
    meta = data.meta
    model_config = to_dataclass(GPTConfig, cfg.model, "model", vocab_size=meta["vocab_size"])
    for split in ("train", "val"):
        if meta["splits"][split]["tokens"] <= model_config.block_size + 1:
            raise UserError(f"model.block_size={model_config.block_size} is larger than the {split} split "
                            f"({meta['splits'][split]['tokens']} tokens): lower model.block_size")
    tokenizer_json = data.tokenizer_path.read_text()
    ckpt_path = find_resume_checkpoint(cfg, model_config=model_config.to_dict(), tokenizer_json=tokenizer_json)

    module = LanguageModel(model_config.to_dict(), tokenizer_json,
                           optimizer=instantiate(cfg.optim.optimizer), scheduler=instantiate(cfg.optim.scheduler),
                           bytes_per_token=meta["splits"]["val"]["bytes_per_token"])
    datamodule = TokenDataModule(data, block_size=model_config.block_size, batch_size=cfg.batch_size, seed=cfg.seed,
                                 val_windows=cfg.val_windows)
    trainer, loggers, precision = make_trainer(cfg, block_size=model_config.block_size, ckpt_path=ckpt_path,
                                               extra_callbacks=extra_callbacks, model_config=model_config)
    if cfg.compile:
        module.model.compile()  # in place: parameter names, so checkpoints, stay those of the plain model
    return Run(trainer, module, datamodule, data, model_config, loggers, precision), ckpt_path


def make_trainer(cfg: DictConfig, *, block_size: int, ckpt_path: Path | None = None,
                 extra_callbacks: tuple[pl.Callback, ...] = (),
                 model_config: GPTConfig | None = None) -> tuple[pl.Trainer, list, str]:
    """The Trainer of cfg.trainer with the configured callbacks and loggers (also for `llm finetune`)."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + list(extra_callbacks)
    continue_wandb_run(cfg, ckpt_path)
    if "wandb" in cfg.logger:  # unset name/group: unique per run, one group per multirun
        name, group = wandb_names(Path(cfg.paths.run_dir), cfg.experiment_name)
        with open_dict(cfg):
            cfg.logger.wandb.name = cfg.logger.wandb.name or name
            cfg.logger.wandb.group = cfg.logger.wandb.group or group
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    precision = resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator),
                                  model_config=model_config, batch_size=cfg.batch_size, devices=cfg.trainer.devices)
    trainer: pl.Trainer = instantiate(cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers)
    trainer.accumulate_grad_batches = accumulation_for(cfg, block_size, trainer.world_size)
    run_dir = Path(cfg.paths.run_dir)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            write_text(run_dir / "wandb_run_id", logger.experiment.id)
    return trainer, loggers, precision


def record(cfg: DictConfig, run: Run, *, ckpt_path: Path | None, seconds: float, exported: GPT | None = None,
           manifest_extra: dict | None = None, data_record: dict | None = None, run_extra: dict | None = None) -> dict:
    """Export the best weights as the run's model/ folder and write run.json; return the metrics.
    `llm finetune` passes the model to export (its best weights, merged), its manifest section
    (produced_by, parent, ...), what its data was, and run.json's extra keys."""
    trainer, module = run.trainer, run.module
    metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}
    # Every rank takes part: under FSDP this gathers the shards into one full copy on the CPU.
    weights = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not trainer.is_global_zero:
        return metrics
    run_dir = Path(cfg.paths.run_dir)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    if best and checkpoint.best_model_score is not None:
        metrics["best_val/loss"] = round(float(checkpoint.best_model_score), 6)
        if exported is None:
            exported = load_artifact(best).model
    if exported is None:
        exported = GPT(run.model_config)
        exported.load_state_dict(weights)
    if data_record is None:
        data_record = {"dir": str(run.data.dir), "hash": run.data.dir.name, **run.data.meta}
    template = run_template(cfg)  # the chat template the folder records as its default (model/io.py)
    manifest = new_manifest(**{"produced_by": "train", "tokenizer_json": module.tokenizer_json,
                               "parent": str(ckpt_path) if ckpt_path else None, "data_hash": data_record["hash"],
                               "run_dir": str(run_dir), "checkpoint": best, "template": template.name,
                               "chat_template": template.source, **(manifest_extra or {})})
    save_artifact(exported, module.tokenizer_json, run_dir / "model", manifest=manifest)
    write_json(run_dir / "run.json", {
        "experiment": cfg.experiment_name, "run_dir": str(run_dir), "git_commit": git_commit(),
        "seed": cfg.seed, "data": data_record,
        "model": {**run.model_config.to_dict(), "parameters": exported.num_params(),
                  "flops_per_token": flops_per_token(exported)},
        "precision": run.precision, "resumed_from": str(ckpt_path) if ckpt_path else None,
        "steps": trainer.global_step, "train_seconds": round(seconds, 1),
        "tokens_seen": trainer.global_step * cfg.batch_size * run.model_config.block_size
                       * trainer.accumulate_grad_batches * trainer.world_size,
        "best_checkpoint": best, "metrics": metrics,
        "versions": {p: version(p) for p in ("torch", "lightning", "hydra-core", "tokenizers", "numpy")}
                    | {"python": platform.python_version()},
        "overrides": OmegaConf.to_container(cfg, resolve=True), **(run_extra or {}),
    })
    for logger in run.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # close the run now, so that a resume at once can reopen its id
    log.info("done in %.0f s: val/loss %s, run dir %s", seconds, metrics.get("best_val/loss", metrics.get("val/loss")),
             run_dir)
    return metrics


def train(cfg: DictConfig, extra_callbacks: tuple[pl.Callback, ...] = ()) -> dict:
    """Fit one run: build, fit, record. extra_callbacks come from code, not config (a sweep's pruning callback)."""
    run, ckpt_path = build(cfg, extra_callbacks=extra_callbacks)
    if run.trainer.is_global_zero:
        meta = run.data.meta
        log.info("model: %.2fM parameters, %.1f MFLOPs per token (training), precision %s",
                 run.module.model.num_params() / 1e6, flops_per_token(run.module.model) / 1e6, run.precision)
        log.info("data: %s (%s train tokens, vocabulary %d)", run.data.dir, f"{meta['splits']['train']['tokens']:,}",
                 meta["vocab_size"])
    started = time.time()
    # weights_only=True whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says: an explicit argument wins over it.
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt_path, weights_only=True)
    return record(cfg, run, ckpt_path=ckpt_path, seconds=time.time() - started)


main = stage("train")(train)
